"""The in-memory scan every reader returns and every writer copies its geometry from, plus the file helpers
shared by readers and writers (case names, atomic writes)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Scan:
    """A multichannel scan: ``data`` is (C, X, Y, Z) float32 in the file's voxel order; ``affine`` maps voxels
    to RAS+ millimetres (nibabel's convention) whatever the file format.

    ``reference`` is the image the geometry came from, so writers reproduce it exactly: a nibabel image (NIfTI
    inputs and nibabel images) or a SimpleITK image (NRRD, MHA, DICOM series, SimpleITK images).
    ``dicom`` holds the source DICOM datasets, in the order of the Z axis, when the scan is a DICOM series.
    """

    data: np.ndarray
    affine: np.ndarray
    reference: Any
    sources: list[str] = field(default_factory=list)
    dicom: list = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def name(self) -> str:
        return case_name(self.sources[0]) if self.sources else "scan"

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))


def case_name(path: PathLike) -> str:
    """The file name without its image suffix (``BraTS_001.nii.gz`` -> ``BraTS_001``)."""
    name = Path(path).name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def image_suffix(path: PathLike) -> str:
    """The image suffix of ``path`` ('.nii.gz', '.nrrd', ...), or its last suffix."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), Path(name).suffix)


def atomic_write_all(writers: dict[Path, Callable[[str], Any]]) -> list[Path]:
    """Write several files so that either all of them appear or none: each ``writer(tmp_path)`` writes to a
    temporary file (same folder, same suffix) and only when every one succeeded are they renamed into place."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, write in writers.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=image_suffix(path), dir=path.parent)
            os.close(fd)
            staged.append((tmp, path))
            write(tmp)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    return [path for _, path in staged]


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """``write(tmp_path)`` to a temporary file in the same folder, then rename it to ``path``."""
    return atomic_write_all({Path(path): write})[0]


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors are often multi-line)."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
