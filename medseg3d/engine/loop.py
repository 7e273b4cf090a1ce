"""The training loop: a ``train_step`` repeated over epochs, everything else hung on it as callbacks
(validation, checkpoints, CSV and TensorBoard logs, progress.png, the budget stop, progress output, signals,
the final validation; see :mod:`medseg3d.engine.callbacks`). The loop's state is one
:class:`~medseg3d.engine.state.TrainState`.

A callback may set ``loop.state.stop`` (a reason: 'budget', 'SIGINT', 'SIGTERM'); the loop then ends the
current epoch early, still calling ``on_epoch_end`` with ``finished=False`` so the cut epoch is logged and
saved, and ``--resume`` continues it where it stopped.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import MedsegError
from .state import TrainState


class NonFiniteLoss(MedsegError):
    """The training loss became NaN or infinite."""


class Callback:
    """Hooks of the loop; each gets the loop (its state, clock and the other callbacks)."""

    def on_fit_start(self, loop: "Loop") -> None: ...

    def on_step_end(self, loop: "Loop", loss: float) -> None: ...

    def on_epoch_end(self, loop: "Loop", row: dict[str, Any], finished: bool) -> None: ...

    def on_fit_end(self, loop: "Loop") -> None: ...

    def on_abort(self, loop: "Loop") -> None:
        """The loop raised (a crash, a diverged loss): let go of what the callback holds (handlers, files)."""


def train_step(model: torch.nn.Module, batch: dict, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               scheduler: Any, scaler: torch.amp.GradScaler, *, device: torch.device, amp: bool = False,
               grad_clip: Optional[float] = None, domain: Optional[str] = None) -> float:
    """One optimiser step on a batch ``{"image", "label"}``; returns the loss (one device sync per step)."""
    x = batch["image"].to(device, non_blocking=True)
    y = batch["label"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, enabled=amp):
        out = model(x, domain=domain) if domain else model(x)
        loss = loss_fn(out, y, x)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(f"the training loss is {value}")
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return value


class Loop:
    """Runs ``step()`` (one training iteration, returning its loss) until ``total_iterations`` or a stop,
    epoch by epoch, calling the callbacks in order."""

    def __init__(self, step: Callable[[], float], state: TrainState, *, iters_per_epoch: int,
                 total_iterations: int, callbacks: Sequence[Callback], clock: Callable[[], float] = time.monotonic):
        self.step = step
        self.state = state
        self.iters_per_epoch = iters_per_epoch
        self.total_iterations = total_iterations
        self.total_epochs = -(-total_iterations // iters_per_epoch)
        self.callbacks = list(callbacks)
        self.clock = clock
        self.step_seconds = 0.0  # how long the last step took (the callbacks' time not included)

    def callback(self, kind: type) -> Any:
        """The first callback of a type (callbacks consult each other, e.g. validation asks the budget)."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    def epoch_end_iteration(self) -> int:
        return min((self.state.epoch + 1) * self.iters_per_epoch, self.total_iterations)

    def last_epoch(self) -> bool:
        """The epoch under way is the run's last one (finished normally or cut by a stop)."""
        return self.state.epoch + 1 >= self.total_epochs or self.state.stop is not None

    def run(self) -> TrainState:
        try:
            return self._run()
        except BaseException:
            for cb in self.callbacks:
                cb.on_abort(self)
            raise

    def _run(self) -> TrainState:
        s = self.state
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while s.epoch < self.total_epochs and s.stop is None:
            t0 = self.clock()
            end = self.epoch_end_iteration()
            while s.iteration < end and s.stop is None:
                t_step = self.clock()
                loss = self.step()
                self.step_seconds = self.clock() - t_step
                s.epoch_losses.append(loss)
                s.iteration += 1
                for cb in self.callbacks:
                    cb.on_step_end(self, loss)
            finished = s.iteration >= end
            s.epoch_seconds = self.clock() - t0
            row = {"epoch": s.epoch + 1, "iterations": s.iteration,
                   "train_loss": float(np.mean(s.epoch_losses)) if s.epoch_losses else float("nan")}
            for cb in self.callbacks:
                cb.on_epoch_end(self, row, finished)
            if finished:
                s.epoch += 1
                s.epoch_losses = []
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return s
