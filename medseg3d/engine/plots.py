"""progress.png: the nnU-Net-like plot of a run's log (losses, validation Dice per class/region, lr).
Figures are built with matplotlib's object API and the Agg canvas, so a notebook's backend is never changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.scan import atomic_write


def progress_figure(history: list[dict]):
    """The progress plot of log rows as a matplotlib Figure (three panels: losses, validation Dice, lr)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def col(k):  # log rows hold floats (this run) or strings (read back from log.csv on resume)
        return np.array([float("nan") if r.get(k) in (None, "") else float(r[k]) for r in history], dtype=float)

    ep = col("epoch")
    fig = Figure(figsize=(9, 10))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(ep, col("train_loss"), "b-o", ms=3, label="train loss")
    if np.any(np.isfinite(col("val_loss"))):
        axes[0].plot(ep, col("val_loss"), "r-o", ms=3, label="validation loss")
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right")
    dice_keys = [k for k in history[0] if k.startswith("val_dice_")]
    for k in dice_keys:
        v = col(k)
        if np.any(np.isfinite(v)):
            axes[1].plot(ep, v, "-o", ms=3, lw=2.5 if k == "val_dice_mean" else 1.2, label=k[9:])
    axes[1].set_ylabel("validation Dice\n(preprocessed grid)")
    axes[1].set_ylim(0, 1)
    if axes[1].lines:
        axes[1].legend(loc="lower right", fontsize=8, ncol=2)
    axes[2].plot(ep, col("lr"), "k-o", ms=3)
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_progress_png(history: list[dict], path: Path) -> Path | None:
    """Write the progress plot (temporary file + rename); nothing without log rows."""
    if not history:
        return None
    fig = progress_figure(history)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
