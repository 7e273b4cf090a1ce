"""Checkpoint files: the model contract + weights (+ training state), written atomically and read with
``weights_only=True`` (no pickled code runs when a checkpoint is opened), the weights checked against the
checksum written with them."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import MedsegError
from ..io.scan import atomic_write, first_line
from .contract import FORMAT, ModelContract, contract_from_meta, weights_checksum


def save_checkpoint(contract: ModelContract, path: str | os.PathLike) -> Path:
    """torch.save the contract (weights, checksum and ``contract.extra``) to a temporary file in the same
    folder, then rename it over ``path``."""
    state = contract.to_checkpoint()
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A model file, or a run folder (its best.pt, else last.pt)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise MedsegError(f"{p}: run folder has no best.pt or last.pt checkpoint")
    if not p.is_file():
        raise MedsegError(f"{p}: checkpoint not found")
    return p


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (``torch.jit.save``) rather than a ``torch.save`` checkpoint."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict of a file or run folder, verified: a medseg3d checkpoint whose weights match their
    checksum. A file holding anything but tensors and plain data is refused without running it."""
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise MedsegError(f"{p}: not a readable medseg3d checkpoint: refused, it holds Python objects other than "
                          f"weights and plain data, which could run code when loaded (nothing was run); use a "
                          f"checkpoint written by medseg3d") from None
    except Exception as e:  # truncated or not a torch file at all
        reason = first_line(e).split(" In PyTorch")[0].split(". ")[0].rstrip(".")  # torch adds paragraphs of advice
        raise MedsegError(f"{p}: not a readable medseg3d checkpoint ({type(e).__name__}: {reason}); is the file "
                          f"complete? Copy it again from where training wrote it") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MedsegError(f"{p}: not a medseg3d checkpoint (no '{FORMAT}' marker)")
    for key in ("model", "config", "channels", "labels"):
        if key not in ckpt:
            raise MedsegError(f"{p}: checkpoint lacks '{key}'")
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise MedsegError(f"{p}: checkpoint's 'model' is not a set of weight tensors")
    expected = ckpt.get("weights_sha256")
    if expected is not None and weights_checksum(ckpt["model"]) != expected:
        raise MedsegError(f"{p}: its weights do not match the checksum written with them (the file was altered "
                          f"or damaged); use another copy")
    ckpt["path"] = str(p)
    return ckpt


_CONTRACT_KEYS = ("format", "version", "config", "channels", "labels", "regions", "domains", "mirror_axes",
                  "model", "weights_sha256", "path", "target")


def contract_from_checkpoint(ckpt: dict[str, Any]) -> ModelContract:
    """The model contract of a checkpoint dict (its training state in ``extra``)."""
    extra = {k: v for k, v in ckpt.items() if k not in _CONTRACT_KEYS}
    return contract_from_meta(ckpt, ckpt.get("path", "checkpoint"), weights=ckpt["model"], extra=extra)


def load_model(path: str | os.PathLike) -> ModelContract:
    """The model contract of any model file medseg3d writes: a checkpoint (or a run folder), an exported ONNX
    file, or an exported TorchScript file."""
    p = resolve_checkpoint(path)
    if p.suffix.lower() == ".onnx":
        from .exported import load_onnx

        return load_onnx(p)
    if is_torchscript(p):
        from .exported import load_torchscript

        return load_torchscript(p)
    return contract_from_checkpoint(load_checkpoint(p))
