"""PNG previews: three orthogonal slices through the largest structure with a coloured overlay and a legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from .scan import Scan, atomic_write

_COLORS = [(0.90, 0.10, 0.10), (0.10, 0.75, 0.20), (0.15, 0.35, 0.95), (0.95, 0.80, 0.10), (0.80, 0.20, 0.85),
           (0.10, 0.80, 0.85), (0.95, 0.50, 0.10), (0.55, 0.35, 0.20)]


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return apply_orientation(array, io_orientation(affine))


def preview_figure(scan: Scan, labels: np.ndarray, names: dict[str, int], title: str | None = None):
    """A matplotlib figure: axial, coronal and sagittal slices through the centre of the largest label."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    img = _to_ras(scan.data[-1], scan.affine)
    lab = _to_ras(np.asarray(labels), scan.affine)
    ornt = io_orientation(scan.affine)
    vox = np.sqrt((scan.affine[:3, :3] ** 2).sum(0))
    z = np.empty(3)
    z[ornt[:, 0].astype(int)] = vox  # voxel size along R, A, S
    fg = [(name, v) for name, v in names.items() if v != 0]
    counts = {v: int((lab == v).sum()) for _, v in fg}
    center = np.array(img.shape) // 2
    if counts and max(counts.values()) > 0:
        big = max(counts, key=counts.get)
        center = np.round(np.argwhere(lab == big).mean(0)).astype(int)
    lo, hi = np.percentile(img[img != 0], [1, 99]) if np.any(img) else (0, 1)
    views = [("axial", img[:, :, center[2]], lab[:, :, center[2]], z[1] / z[0]),
             ("coronal", img[:, center[1], :], lab[:, center[1], :], z[2] / z[0]),
             ("sagittal", img[center[0], :, :], lab[center[0], :, :], z[2] / z[1])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (vname, im, lb, aspect) in zip(axes, views):
        ax.imshow(im.T, cmap="gray", origin="lower", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
        rgba = np.zeros(lb.T.shape + (4,))
        for i, (_, v) in enumerate(fg):
            rgba[lb.T == v] = (*_COLORS[i % len(_COLORS)], 0.45)
        ax.imshow(rgba, origin="lower", interpolation="nearest", aspect=aspect)
        ax.set_title(vname)
        ax.axis("off")
    handles = [Patch(color=_COLORS[i % len(_COLORS)], label=f"{n} ({v})") for i, (n, v) in enumerate(fg)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    fig.suptitle(title or scan.name)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


def save_preview(scan: Scan, labels: np.ndarray, names: dict[str, int], path: str | Path,
                 title: str | None = None) -> Path:
    import matplotlib.pyplot as plt

    fig = preview_figure(scan, labels, names, title)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    finally:
        plt.close(fig)
