"""What hangs on the training loop, one small unit each: validation, the log (CSV), TensorBoard, checkpoints,
progress.png, the wall-clock budget, progress output, signals and the final validation."""

from __future__ import annotations

import csv
import math
import shutil
import signal
import statistics
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..io.scan import atomic_write
from .loop import Callback, Loop

SIGNAL_STOPS = ("SIGINT", "SIGTERM")


class Budget(Callback):
    """Stops training so that the whole command — preprocessing, training, every validation, the final
    validation and the checkpoints — ends within ``seconds`` of ``started_at`` (on ``loop.clock``).

    It keeps the measured step time and validation time; before a validation has been measured it uses the
    ``prior_validation_s`` / ``prior_final_s`` estimates (from a timed window and the number of windows), and
    afterwards scales the final-validation estimate by how far off the prior was."""

    def __init__(self, seconds: float, started_at: float, prior_validation_s: float = 0.0,
                 prior_final_s: float = 0.0, save_s: float = 0.0):
        self.seconds = seconds
        self.deadline = started_at + seconds
        self.prior_validation_s = prior_validation_s
        self.prior_final_s = prior_final_s
        self.save_s = save_s
        self.steps: list[float] = []
        self.validation_s: Optional[float] = None

    # ---- estimates ------------------------------------------------------------------------------------------
    @property
    def step_s(self) -> float:
        recent = self.steps[-20:]
        return statistics.median(recent) if recent else 0.0

    @property
    def final_s(self) -> float:
        if self.validation_s is not None and self.prior_validation_s > 0:
            return self.prior_final_s * max(self.validation_s / self.prior_validation_s, 0.25)
        return self.prior_final_s

    def remaining(self, now: float) -> float:
        return self.deadline - now

    def allows_validation(self, now: float) -> bool:
        """A validation pass now still leaves time for the final validation and the last checkpoints."""
        val = self.validation_s if self.validation_s is not None else self.prior_validation_s
        return now + val + self.final_s + self.save_s <= self.deadline

    def record_validation(self, seconds: float) -> None:
        self.validation_s = seconds if self.validation_s is None else max(self.validation_s, seconds)

    # ---- hooks ----------------------------------------------------------------------------------------------
    def on_step_end(self, loop: Loop, loss: float) -> None:
        now = loop.clock()
        self.steps.append(loop.step_seconds)  # the step alone: validation and saving are accounted apart
        # another step, then the validation that ends the (cut) epoch if it fits, the final validation and the
        # checkpoints, must all fit
        if now + self.step_s + self.final_s + self.save_s > self.deadline and loop.state.stop is None:
            loop.state.stop = "budget"


class Validation(Callback):
    """Runs ``validate()`` (metrics on the preprocessed grid) every ``every`` epochs and at the last one, when
    the budget leaves room for it; the metrics go into the epoch's log row."""

    def __init__(self, validate: Callable[[], dict[str, float]], every: int):
        self.validate = validate
        self.every = every

    def on_epoch_end(self, loop: Loop, row: dict[str, Any], finished: bool) -> None:
        s = loop.state
        s.last_val = None
        if s.stop in SIGNAL_STOPS or not ((s.epoch + 1) % self.every == 0 or loop.last_epoch()):
            return
        budget = loop.callback(Budget)
        t0 = loop.clock()
        if budget is not None and not budget.allows_validation(t0):
            return
        s.last_val = self.validate()
        if budget is not None:
            budget.record_validation(loop.clock() - t0)
        row.update(s.last_val)


class History(Callback):
    """The per-epoch log: completes each row (lr, epoch_seconds, NaN for what did not run), keeps it in the
    state's history and appends it to ``log.csv`` (rewritten at the start with the rows a resumed run keeps)."""

    def __init__(self, path: Path, fields: list[str], lr: Callable[[], float]):
        self.path, self.fields, self.lr = path, fields, lr

    def on_fit_start(self, loop: Loop) -> None:
        rows = loop.state.history

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({k: _fmt(r.get(k, float("nan"))) for k in self.fields})

        atomic_write(self.path, write)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any], finished: bool) -> None:
        row["lr"] = self.lr()
        row["epoch_seconds"] = loop.state.epoch_seconds
        full = {k: row.get(k, float("nan")) for k in self.fields}
        row.clear()
        row.update(full)
        loop.state.history.append(full)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: _fmt(full[k]) for k in self.fields})


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


class TensorBoard(Callback):
    """Training loss and lr per iteration, validation metrics per epoch, in ``RUN/tensorboard``; a resumed run
    purges the steps after its checkpoint."""

    def __init__(self, folder: Path, purge_step: Optional[int], lr: Callable[[], float]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=purge_step)
        self.lr = lr

    def on_step_end(self, loop: Loop, loss: float) -> None:
        self.writer.add_scalar("train/loss", loss, loop.state.iteration)
        self.writer.add_scalar("train/lr", self.lr(), loop.state.iteration)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any], finished: bool) -> None:
        for k, v in (loop.state.last_val or {}).items():
            self.writer.add_scalar(k.replace("val_", "val/", 1), v, loop.state.iteration)
        self.writer.flush()

    def on_fit_end(self, loop: Loop) -> None:
        self.writer.close()

    on_abort = on_fit_end


class Checkpoints(Callback):
    """``last.pt`` at the end of every epoch (a cut epoch included, with its losses so far) and ``best.pt`` on the
    best mean validation Dice; both written atomically. ``save(path, finished)`` writes one."""

    def __init__(self, run_dir: Path, save: Callable[[Path, bool], Any], write: bool = True):
        self.run_dir, self.save, self.write = run_dir, save, write  # (other ranks take part in save, write nothing)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any], finished: bool) -> None:
        s = loop.state
        if not self.write:
            self.save(self.run_dir / "last.pt", finished)
            return
        mean = (s.last_val or {}).get("val_dice_mean", float("nan"))
        improved = math.isfinite(mean) and mean > s.best_metric
        if improved:
            s.best_metric = mean
        self.save(self.run_dir / "last.pt", finished)
        if improved:
            self._best_from_last()

    def on_fit_end(self, loop: Loop) -> None:
        if self.write and not (self.run_dir / "best.pt").exists() and (self.run_dir / "last.pt").exists():
            self._best_from_last()

    def _best_from_last(self) -> None:
        atomic_write(self.run_dir / "best.pt", lambda tmp: shutil.copyfile(self.run_dir / "last.pt", tmp))


class ProgressPlot(Callback):
    """``progress.png``: losses, validation Dice per class/region and lr over the epochs, rewritten each epoch."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, loop: Loop, row: dict[str, Any], finished: bool) -> None:
        from .plots import write_progress_png

        write_progress_png(loop.state.history, self.path)


class Progress(Callback):
    """What the user sees: a progress bar on a terminal, else a line every ``every_s`` seconds (iteration,
    loss, it/s, ETA — the budget's end when that comes first); and one line per epoch."""

    def __init__(self, every_s: float = 10.0, stream=None, tty: Optional[bool] = None):
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        self._t0 = self._last = 0.0
        self._it0 = 0

    def _eta(self, loop: Loop, now: float) -> tuple[float, float]:
        done = loop.state.iteration - self._it0
        rate = done / max(now - self._t0, 1e-9)
        eta = (loop.total_iterations - loop.state.iteration) / rate if rate > 0 else math.inf
        budget = loop.callback(Budget)
        if budget is not None:
            eta = min(eta, max(budget.remaining(now) - budget.final_s, 0.0))
        return rate, eta

    def on_fit_start(self, loop: Loop) -> None:
        self._t0 = self._last = loop.clock()
        self._it0 = loop.state.iteration
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=loop.total_iterations, initial=loop.state.iteration, desc="training", unit="it",
                            leave=False, dynamic_ncols=True, file=self.stream)

    def on_step_end(self, loop: Loop, loss: float) -> None:
        s = loop.state
        now = loop.clock()
        recent = float(np.mean(s.epoch_losses[-20:]))
        if self.bar is not None:
            rate, eta = self._eta(loop, now)
            if math.isfinite(eta):  # the bar's own ETA would ignore the budget
                self.bar.total = max(s.iteration + int(round(eta * rate)), s.iteration)
            self.bar.update(1)
            self.bar.set_postfix(epoch=f"{s.epoch + 1}/{loop.total_epochs}", loss=f"{recent:.4f}")
        elif now - self._last >= self.every_s:
            self._last = now
            rate, eta = self._eta(loop, now)
            self.write(f"iteration {s.iteration}/{loop.total_iterations} (epoch {s.epoch + 1}/{loop.total_epochs}): "
                       f"loss {recent:.4f}, {rate:.2f} it/s, ETA {_duration(eta)}")

    def on_epoch_end(self, loop: Loop, row: dict[str, Any], finished: bool) -> None:
        s = loop.state
        msg = f"epoch {s.epoch + 1}/{loop.total_epochs}: loss {row['train_loss']:.4f}"
        val = s.last_val
        if val is not None:
            per = ", ".join(f"{k[9:]} {v:.3f}" for k, v in val.items() if k.startswith("val_dice_")
                            and k != "val_dice_mean")
            msg += f"; val Dice {val['val_dice_mean']:.3f} ({per})"
        msg += f"; {s.epoch_seconds:.1f}s"
        if not finished:
            msg += f" (cut at iteration {s.iteration})"
        self.write(msg)
        if s.stop == "budget":
            self.write("stopping: the rest of the wall-clock budget is kept for the final validation")

    def on_fit_end(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_abort = on_fit_end

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Signals(Callback):
    """SIGINT (Ctrl-C) and SIGTERM end the loop after the current step (or the epoch that is ending), so the cut
    epoch is saved and can be resumed; a second Ctrl-C stops at once. The handler only notes the signal
    (``pending``); the stop takes effect at a step's or an epoch's end, on every rank at once under DDP
    (:class:`SyncStop` reads ``pending`` there). Placed just before the final validation, it puts the previous
    handlers back at the end of the loop, so Ctrl-C interrupts the final validation at once."""

    def __init__(self, synced: bool = False):
        self._old: dict[int, Any] = {}
        self.pending: Optional[str] = None
        self.synced = synced  # a SyncStop turns `pending` into the stop

    def on_fit_start(self, loop: Loop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if name == "SIGINT" and self.pending == "SIGINT":
                raise KeyboardInterrupt
            self.pending = name
            print(f"\n{name} received: saving a checkpoint after this step", file=sys.stderr, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, handler)

    def _take(self, loop: Loop) -> None:
        if self.pending and not self.synced and loop.state.stop not in SIGNAL_STOPS:
            loop.state.stop = self.pending

    def on_step_end(self, loop: Loop, loss: float) -> None:
        self._take(loop)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any], finished: bool) -> None:
        self._take(loop)

    def on_fit_end(self, loop: Loop) -> None:
        self.restore()

    def on_abort(self, loop: Loop) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class SyncStop(Callback):
    """Several processes: a stop on any rank (budget, a signal noted by :class:`Signals`) stops every rank
    after the same step, for the same reason (a signal before the budget); at the end, the ranks' weights are
    compared (``check()``) before rank 0 alone runs the final validation."""

    def __init__(self, any_rank: Callable[[bool], bool], gather: Callable[[Any], list], signals: Signals,
                 check: Callable[[], None]):
        self.any_rank, self.gather, self.signals, self.check = any_rank, gather, signals, check

    def _sync(self, loop: Loop) -> None:
        mine = self.signals.pending or loop.state.stop
        if self.any_rank(mine is not None):
            reasons = [r for r in self.gather(mine) if r]
            loop.state.stop = next((r for r in reasons if r in SIGNAL_STOPS), reasons[0])

    def on_step_end(self, loop: Loop, loss: float) -> None:
        self._sync(loop)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any], finished: bool) -> None:
        self._sync(loop)

    def on_fit_end(self, loop: Loop) -> None:
        self.check()


class FinalValidation(Callback):
    """After the loop (not after a signal): ``run()`` scores the validation cases in their own geometry."""

    def __init__(self, run: Callable[[], Any]):
        self.run = run

    def on_fit_end(self, loop: Loop) -> None:
        if loop.state.stop not in SIGNAL_STOPS:
            self.run()
