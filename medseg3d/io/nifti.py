"""NIfTI reading and writing (nibabel). Geometry is carried by the nibabel image the scan came from, so a
written label map gets the input's exact shape, affine, qform/sform and their codes."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import nibabel as nib
import numpy as np

from ..errors import MedsegError

PathLike = Union[str, os.PathLike]
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Scan:
    """A multichannel scan: ``data`` is (C, X, Y, Z) float32 in the file's voxel order; ``affine`` maps voxels
    to RAS+ millimetres (nibabel's convention); ``reference`` is the image whose geometry outputs copy."""

    data: np.ndarray
    affine: np.ndarray
    reference: nib.Nifti1Image
    sources: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def name(self) -> str:
        return case_name(self.sources[0]) if self.sources else "scan"


def case_name(path: PathLike) -> str:
    """The file name without its image suffix (``BraTS_001.nii.gz`` -> ``BraTS_001``)."""
    name = Path(path).name
    for suf in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def load_nifti(path: PathLike) -> nib.Nifti1Image:
    p = Path(path)
    if not p.exists():
        raise MedsegError(f"{p}: file not found")
    if p.is_dir():
        raise MedsegError(f"{p}: is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(p))
    except Exception as e:  # nibabel raises several types for unreadable files
        raise MedsegError(f"{p}: not a readable NIfTI image ({e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedsegError(f"{p}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _image_channels(img: nib.Nifti1Image, path: PathLike) -> np.ndarray:
    """(C, X, Y, Z) float32 from a 3D image or a 4D image with channels on the last axis."""
    shape = img.shape
    if len(shape) > 4:  # e.g. (X, Y, Z, 1, C)
        extra = [s for s in shape[3:] if s != 1]
        if len(extra) > 1:
            raise MedsegError(f"{path}: image has shape {shape}; expected 3D or 4D (channels last)")
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as e:
        raise MedsegError(f"{path}: cannot read the voxel data ({e})") from None
    if data.ndim == 3:
        data = data[None]
    else:
        data = data.reshape(shape[:3] + (-1,))
        data = np.moveaxis(data, -1, 0)
    if data.ndim != 4 or min(data.shape[1:]) < 1:
        raise MedsegError(f"{path}: image has shape {shape}; expected 3D or 4D (channels last)")
    if not np.isfinite(data).all():
        raise MedsegError(f"{path}: image contains NaN or infinite values")
    return np.ascontiguousarray(data)


def read_scan(paths: PathLike | Sequence[PathLike], channels: int | None = None) -> Scan:
    """Read one 4D NIfTI (channels last) or one 3D NIfTI per channel.

    ``channels`` is the number the model expects; a mismatch, or per-channel files whose grids differ, is an
    error naming the file.
    """
    plist = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not plist:
        raise MedsegError("no image file given")
    imgs = [load_nifti(p) for p in plist]
    arrays = [_image_channels(img, p) for img, p in zip(imgs, plist)]
    ref = imgs[0]
    for img, arr, p in zip(imgs[1:], arrays[1:], plist[1:]):
        if arr.shape[1:] != arrays[0].shape[1:]:
            raise MedsegError(f"{p}: shape {arr.shape[1:]} differs from {plist[0]} {arrays[0].shape[1:]}")
        if not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise MedsegError(f"{p}: its geometry (affine) differs from {plist[0]}; channels must share one grid")
    data = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    if channels is not None and data.shape[0] != channels:
        names = ", ".join(str(p) for p in plist)
        raise MedsegError(f"{names}: has {data.shape[0]} channel(s) but the model expects {channels}")
    return Scan(data=data, affine=np.asarray(ref.affine, dtype=np.float64), reference=ref,
                sources=[str(p) for p in plist])


def read_label(path: PathLike, like: Scan | None = None) -> np.ndarray:
    """An integer label map (X, Y, Z); with ``like``, its grid must match the scan's."""
    img = load_nifti(path)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MedsegError(f"{path}: a label map must be 3D, got shape {data.shape}")
    if not np.allclose(data, np.round(data)):
        raise MedsegError(f"{path}: a label map must hold integers")
    if like is not None:
        if data.shape != like.shape:
            raise MedsegError(f"{path}: label shape {data.shape} differs from its image's {like.shape}")
        if not np.allclose(img.affine, like.affine, atol=1e-3):
            raise MedsegError(f"{path}: label geometry (affine) differs from its image's")
    return np.round(data).astype(np.int32)


def label_dtype(values: np.ndarray | Sequence[int]) -> np.dtype:
    vals = np.asarray(values)
    if vals.size == 0 or (vals.min() >= 0 and vals.max() < 256):
        return np.dtype(np.uint8)
    return np.dtype(np.int16)


def like_reference(array: np.ndarray, reference: nib.Nifti1Image, dtype=None) -> nib.Nifti1Image:
    """A NIfTI holding ``array`` with the reference's affine, qform/sform (and codes) and units."""
    header = reference.header.copy()
    dtype = np.dtype(dtype or array.dtype)
    out = type(reference)(np.asarray(array, dtype=dtype), None, header=header)
    qform, qcode = reference.header.get_qform(coded=True)
    sform, scode = reference.header.get_sform(coded=True)
    out.set_qform(qform if qform is not None else reference.affine, int(qcode or 0))
    out.set_sform(sform if sform is not None else reference.affine, int(scode or 0))
    out.set_data_dtype(dtype)
    out.header.set_slope_inter(1.0, 0.0)
    if array.ndim != len(reference.shape):
        out.header.set_data_shape(array.shape)
    return out


def atomic_save(img: nib.Nifti1Image, path: PathLike) -> Path:
    """Write ``img`` to ``path`` through a temporary file in the same folder, so no partial file remains."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
