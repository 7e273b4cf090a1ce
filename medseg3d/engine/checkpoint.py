"""Checkpoints: weights + the resolved config + channel and label names, written atomically and loaded with
``weights_only=True`` (no pickled code runs when a checkpoint is opened)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import MedsegError
from ..io.scan import atomic_write, first_line

FORMAT = "medseg3d-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **state}, tmp))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder (its best.pt, else last.pt)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise MedsegError(f"{p}: run folder has no best.pt or last.pt checkpoint")
    if not p.is_file():
        raise MedsegError(f"{p}: checkpoint not found")
    return p


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise MedsegError(f"{p}: not a readable medseg3d checkpoint ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MedsegError(f"{p}: not a medseg3d checkpoint (no '{FORMAT}' marker)")
    for key in ("model", "config", "channels", "labels"):
        if key not in ckpt:
            raise MedsegError(f"{p}: checkpoint lacks '{key}'")
    ckpt["path"] = str(p)
    return ckpt
