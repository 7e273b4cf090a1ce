"""The in-memory scan every reader returns and every writer copies its geometry from, plus the file helpers
shared by readers and writers (case names, atomic writes)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from ..errors import MedsegError

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


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (/proc/self/status), else by
    setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_all(writers: dict[Path, Callable[[str], Any]]) -> list[Path]:
    """Write several files so that either all of them appear or none: each ``writer(tmp_path)`` writes to a
    temporary file (same folder, same suffix) and only when every one succeeded are they renamed into place.
    The files get the permissions of a file created normally (0666 less the umask: 0644 under umask 022), not
    the temporary file's private 0600."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, write in writers.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=image_suffix(path), dir=path.parent)
            os.close(fd)
            staged.append((tmp, path))
            write(tmp)
        mode = 0o666 & ~current_umask()
        for tmp, _ in staged:
            os.chmod(tmp, mode)  # after writing: a writer may have replaced the temporary file
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


# ---- checks every reader applies (geometry from the header, before the voxels; then the voxels) ---------------
MAX_MM = 1e6  # 1 km: an affine entry (spacing or origin) beyond it is a corrupt header, not a scanner's geometry
MAX_CONDITION = 1e6  # ratio of the largest to the smallest voxel axis length: beyond it the axes are degenerate


def check_affine(affine: Any, source: str, fix: str = "fix the header's spacing, origin and direction") -> np.ndarray:
    """The 4x4 voxel -> RAS mm affine as float64, or a MedsegError when it is not a usable geometry: not 4x4,
    NaN/infinite, beyond ``MAX_MM``, not affine (last row), or singular (a zero spacing, collinear axes)."""
    try:
        a = np.array(affine, dtype=np.float64)
    except (TypeError, ValueError):
        raise MedsegError(f"{source}: the affine is not a 4x4 matrix of numbers; {fix}") from None
    if a.shape != (4, 4):
        raise MedsegError(f"{source}: the affine must be 4x4, got shape {a.shape}; {fix}")
    if not np.isfinite(a).all():
        raise MedsegError(f"{source}: the affine (voxel -> world geometry) holds NaN or infinite values; {fix}")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise MedsegError(f"{source}: the affine's last row is {a[3].tolist()}, not [0, 0, 0, 1]; {fix}")
    big = float(np.abs(a[:3]).max())
    if big > MAX_MM:
        raise MedsegError(f"{source}: the affine holds {big:.3g} mm, beyond any scanner's field of view "
                          f"({MAX_MM:.0e} mm); {fix}")
    sv = np.linalg.svd(a[:3, :3], compute_uv=False)
    if sv[-1] <= sv[0] / MAX_CONDITION or sv[-1] == 0:
        spacing = ", ".join(f"{s:.3g}" for s in np.linalg.norm(a[:3, :3], axis=0))
        raise MedsegError(f"{source}: the affine is singular (voxel axes of {spacing} mm: a zero spacing or "
                          f"parallel axes), so voxels have no position in space; {fix}")
    return a


def check_spatial(spatial: tuple[int, ...], shape: tuple[int, ...], source: str, allow_2d: bool = False) -> None:
    """``spatial`` (X, Y, Z) of an image of stored ``shape`` must be a volume: no empty axis, at most one axis of
    one voxel and that only with ``allow_2d``."""
    if any(int(s) < 1 for s in (*spatial, *shape)):
        raise MedsegError(f"{source}: has an empty axis (shape {shape}), so it holds no voxels; export it again")
    flat = sum(int(s) == 1 for s in spatial)
    if flat >= 2:
        raise MedsegError(f"{source}: is not a volume (shape {shape}: one voxel along {flat} axes); give a 3D volume")
    if flat == 1 and not allow_2d:
        raise MedsegError(f"{source}: is 2D (shape {shape}); the model is 3D; give a volume with several slices "
                          "along every axis, or allow single-slice images (allow_2d=True), which `medseg3d infer` "
                          "does with --allow-2d")


def check_finite(data: np.ndarray, source: str) -> None:
    """Every voxel value must be finite (NaN and infinities would poison normalisation and the network)."""
    if np.isfinite(data.sum(dtype=np.float64)):  # one pass, no mask; float64 cannot overflow on float32 values
        return
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    raise MedsegError(f"{source}: {bad} of {data.size} voxel values are NaN or infinite; replace them (e.g. with 0) "
                      "and retry")
