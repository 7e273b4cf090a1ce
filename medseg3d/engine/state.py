"""The training loop's state as one typed object, and every random state of a run as plain tensors and lists
(so a checkpoint holding them loads with ``weights_only=True`` and a resumed run draws exactly what the
uninterrupted one would have)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch


@dataclass
class TrainState:
    """Where a run is. ``epoch`` counts finished epochs; an epoch cut short (budget, signal) keeps its losses
    so far in ``epoch_losses`` and is continued by ``--resume``."""

    epoch: int = 0
    iteration: int = 0
    best_metric: float = -math.inf
    epoch_losses: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one log row per epoch (this run and the resumed one)
    stop: Optional[str] = None  # why the loop stops early: 'budget', 'SIGINT', 'SIGTERM'
    epoch_seconds: float = 0.0
    last_val: Optional[dict[str, float]] = None  # the validation metrics of the epoch that just ended

    @property
    def best(self) -> Optional[float]:
        return self.best_metric if self.best_metric > -math.inf else None


def capture_rng(sampler: random.Random, transform_states: dict[str, list[np.random.RandomState]]) -> dict[str, Any]:
    """Every random state: torch (CPU and CUDA), numpy, python, the batch sampler and each MONAI transform's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _mt_to_saved(np.random.get_state()),
        "python": _py_to_saved(random.getstate()),
        "sampler": _py_to_saved(sampler.getstate()),
        "transforms": {name: [_mt_to_saved(r.get_state()) for r in states]
                       for name, states in transform_states.items()},
    }


def restore_rng(rng: dict[str, Any], sampler: random.Random,
                transform_states: dict[str, list[np.random.RandomState]]) -> bool:
    """Set every random state back; returns False when the augmentation no longer has the same random
    transforms (the config changed)."""
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(_mt_from_saved(rng["numpy"]))
    random.setstate(_py_from_saved(rng["python"]))
    sampler.setstate(_py_from_saved(rng["sampler"]))
    for name, states in transform_states.items():
        saved = rng["transforms"].get(name, [])
        if len(saved) != len(states):
            return False
        for r, st in zip(states, saved):
            r.set_state(_mt_from_saved(st))
    return True


def random_states(obj: Any, seen: set | None = None, depth: int = 0) -> list[np.random.RandomState]:
    """Every numpy RandomState inside a MONAI transform tree, in a fixed order."""
    from monai.transforms import Randomizable, Transform

    seen = set() if seen is None else seen
    out: list[np.random.RandomState] = []
    if id(obj) in seen or depth > 6:
        return out
    seen.add(id(obj))
    if isinstance(obj, Randomizable) and isinstance(getattr(obj, "R", None), np.random.RandomState):
        if id(obj.R) not in seen:
            seen.add(id(obj.R))
            out.append(obj.R)
    if isinstance(obj, (list, tuple)):
        children = list(obj)
    elif hasattr(obj, "__dict__") and isinstance(obj, (Randomizable, Transform)):
        children = [v for k, v in sorted(vars(obj).items()) if k != "R"]
    else:
        children = []
    for c in children:
        if isinstance(c, (list, tuple, Transform, Randomizable)):
            out += random_states(c, seen, depth + 1)
    return out


def _mt_to_saved(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.as_tensor(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _mt_from_saved(d: dict) -> tuple:
    return ("MT19937", d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _py_to_saved(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_from_saved(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])
