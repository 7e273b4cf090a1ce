"""Where the work runs: the torch device and the number of intra-op threads."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .errors import MedsegError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA, then Apple MPS, then CPU) or an explicit torch device name; asking for a device that this
    machine does not have is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MedsegError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError(f"device '{name}' was asked for but CUDA is not available on this machine; "
                          "use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MedsegError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MedsegError(f"device '{name}' was asked for but Apple MPS is not available on this machine")
    return dev


def free_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loader_workers(device_type: str, cores: int | None = None) -> int:
    """DataLoader worker processes by default: none on a CPU (the training step uses the cores), min(cores - 1,
    12) on a GPU, where augmentation overlaps the step (nnU-Net uses 12)."""
    if device_type == "cpu":
        return 0
    return max(0, min((cores or free_cores()) - 1, 12))


def set_threads(n: int | None) -> int:
    """Set torch's intra-op threads (never more than the free cores); ``None`` keeps the current setting.
    Returns the number in use."""
    if n is not None:
        torch.set_num_threads(max(1, min(int(n), free_cores())))
    return torch.get_num_threads()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where medseg3d caches (preprocessed cases, fingerprints, device timings, engine choices): ``cache_dir``
    (a config's ``data.cache_dir``), else ``$MEDSEG3D_CACHE``, else ``~/.cache/medseg3d``."""
    return Path(cache_dir or os.environ.get("MEDSEG3D_CACHE") or Path.home() / ".cache" / "medseg3d").expanduser()
