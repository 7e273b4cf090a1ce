"""NIfTI reading and writing (nibabel). A scan read from NIfTI keeps its nibabel image as the reference, so a
written map gets the input's exact shape, affine, qform/sform and their codes."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ..errors import MedsegError
from .scan import PathLike, Scan, atomic_write

NIFTI_SUFFIXES = (".nii", ".nii.gz")


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


def nifti_channels(img: nib.Nifti1Image, source: PathLike | str) -> np.ndarray:
    """(C, X, Y, Z) float32 from a 3D image or a 4D image with channels on the last axis."""
    shape = img.shape
    if len(shape) > 4:  # e.g. (X, Y, Z, 1, C)
        extra = [s for s in shape[3:] if s != 1]
        if len(extra) > 1:
            raise MedsegError(f"{source}: image has shape {shape}; expected 3D or 4D (channels last)")
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as e:
        raise MedsegError(f"{source}: cannot read the voxel data ({e})") from None
    if data.ndim == 3:
        data = data[None]
    elif data.ndim >= 4:
        data = np.moveaxis(data.reshape(shape[:3] + (-1,)), -1, 0)
    if data.ndim != 4 or min(data.shape[1:]) < 1:
        raise MedsegError(f"{source}: image has shape {shape}; expected 3D or 4D (channels last)")
    return np.ascontiguousarray(data)


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
    """A NIfTI holding ``array`` (X, Y, Z) with the reference's affine, qform/sform (and codes) and units."""
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


def nifti_like(array: np.ndarray, scan: Scan, dtype=None) -> nib.Nifti1Image:
    """A NIfTI of ``array`` (X, Y, Z) in the scan's geometry: the reference's own header when the scan came
    from NIfTI, else the scan's affine as qform and sform with code 1 (scanner), units mm."""
    if isinstance(scan.reference, (nib.Nifti1Image, nib.Nifti2Image)):
        return like_reference(array, scan.reference, dtype)
    out = nib.Nifti1Image(np.asarray(array, dtype=dtype or array.dtype), scan.affine)
    out.set_qform(scan.affine, 1)
    out.set_sform(scan.affine, 1)
    out.header.set_xyzt_units("mm", "sec")
    return out


def atomic_save(img: nib.Nifti1Image, path: PathLike) -> Path:
    """Write ``img`` to ``path`` through a temporary file in the same folder, so no partial file remains."""
    return atomic_write(path, lambda tmp: nib.save(img, tmp))
