"""How much memory an image needs and how much the machine has, so a reader can refuse an image from its
header, before reading (and long before preprocessing) voxel data that cannot fit."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MedsegError


def estimate_bytes(shape: Sequence[int], channels: int = 1, dtype: np.dtype | type = np.float32) -> int:
    """Bytes of one (channels, *shape) array of ``dtype`` (float32 by default: how every reader holds a scan)."""
    return int(math.prod(int(s) for s in shape)) * int(channels) * np.dtype(dtype).itemsize


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """What a cgroup (a container's memory limit) leaves to this process: limit - usage, or None."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",                 # v1
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit == "max":
                return None
            limit_b, usage_b = int(limit), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_b >= 1 << 60:  # v1 writes a huge number for "no limit"
            return None
        return max(limit_b - usage_b, 0)
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available to this process now: Linux's MemAvailable (capped by a cgroup limit), else the
    free physical pages where the OS reports them; None where nothing tells (then no check is made)."""
    avail = _meminfo_available()
    if avail is None:
        avail = _sysconf_available()
    cgroup = _cgroup_available()
    if cgroup is not None:
        avail = cgroup if avail is None else min(avail, cgroup)
    return avail


def format_bytes(n: float) -> str:
    """``13.8 GB``-style, decimal units."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def check_memory(source: str, shape: Sequence[int], channels: int = 1, factor: float = 1.0,
                 available: int | None = None, what: str = "as float32") -> int:
    """Refuse (MedsegError) when ``factor`` x the float32 array of ``channels`` x ``shape`` exceeds the available
    memory (``available``, default :func:`available_memory`); return the estimate in bytes. ``factor`` lets a
    caller add what its own steps need on top of the array (``what`` says so in the message)."""
    need = int(estimate_bytes(shape, channels) * factor)
    avail = available_memory() if available is None else available
    if avail is not None and need > avail:
        dims = "x".join(str(int(s)) for s in shape)
        raise MedsegError(f"{source}: the image ({dims} voxels, {channels} channel(s)) needs {format_bytes(need)} "
                          f"{what} but only {format_bytes(avail)} of memory is available; crop or downsample it, "
                          "or free memory and retry")
    return need
