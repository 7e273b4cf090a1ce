"""One reading path for every input: NIfTI (nibabel), NRRD and MHA (SimpleITK), a DICOM series folder
(SimpleITK's series reader) and in-memory images all become a :class:`Scan` with (C, X, Y, Z) data and a
RAS affine, keeping the original image as the reference for writers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import MedsegError
from .dicom import is_dicom_dir, read_dicom_series
from .nifti import NIFTI_SUFFIXES, load_nifti, nifti_channels
from .scan import IMAGE_SUFFIXES, PathLike, Scan, first_line, image_suffix
from .sitk_image import sitk_affine, sitk_channels

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
FILE_SUFFIXES = IMAGE_SUFFIXES  # NIfTI, then SITK_SUFFIXES


def _scan(data: np.ndarray, affine: np.ndarray, reference: Any, sources: list[str], dicom=()) -> Scan:
    if not np.isfinite(data).all():
        raise MedsegError(f"{sources[0] if sources else 'image'}: image contains NaN or infinite values")
    return Scan(data, np.asarray(affine, dtype=np.float64), reference, sources, list(dicom))


def read_image(path: PathLike) -> Scan:
    """One image file (NIfTI, NRRD, MHA) or DICOM series folder as a Scan of its own channels."""
    p = Path(path)
    if not p.exists():
        raise MedsegError(f"{p}: file not found")
    if p.is_dir():
        if not is_dicom_dir(p):
            raise MedsegError(f"{p}: is a folder without DICOM files; expected an image file or a DICOM series")
        img, datasets = read_dicom_series(p)
        return _scan(sitk_channels(img, str(p)), sitk_affine(img), img, [str(p)], datasets)
    suffix = image_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        img = load_nifti(p)
        return _scan(nifti_channels(img, p), img.affine, img, [str(p)])
    if suffix in SITK_SUFFIXES:
        try:
            img = sitk.ReadImage(str(p))
        except RuntimeError as e:
            raise MedsegError(f"{p}: not a readable {suffix[1:].upper()} image ({first_line(e)})") from None
        return _scan(sitk_channels(img, str(p)), sitk_affine(img), img, [str(p)])
    raise MedsegError(f"{p}: unknown image format '{suffix}'; expected {', '.join(FILE_SUFFIXES)} "
                      "or a DICOM series folder")


def read_scan(paths: PathLike | Sequence[PathLike], channels: int | None = None) -> Scan:
    """Read one multichannel image, or one image per channel (their grids must agree); ``channels`` is the
    number the model expects, and a mismatch is an error naming the files."""
    plist = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not plist:
        raise MedsegError("no image file given")
    scans = [read_image(p) for p in plist]
    ref = scans[0]
    for s, p in zip(scans[1:], plist[1:]):
        if s.shape != ref.shape:
            raise MedsegError(f"{p}: shape {s.shape} differs from {plist[0]} {ref.shape}; channels must share one grid")
        if not np.allclose(s.affine, ref.affine, atol=1e-3):
            raise MedsegError(f"{p}: its geometry (affine) differs from {plist[0]}; channels must share one grid")
    data = np.concatenate([s.data for s in scans], axis=0) if len(scans) > 1 else ref.data
    if channels is not None and data.shape[0] != channels:
        names = ", ".join(str(p) for p in plist)
        raise MedsegError(f"{names}: has {data.shape[0]} channel(s) but the model expects {channels}")
    return Scan(data, ref.affine, ref.reference, [str(p) for p in plist], ref.dicom)


def scan_from_image(image: Any, affine: np.ndarray | None = None) -> Scan:
    """A Scan of an in-memory image: a nibabel image, a SimpleITK image, or a numpy array ((X, Y, Z) or
    channels-first (C, X, Y, Z)) with its voxel -> RAS affine (identity when None)."""
    if isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        return _scan(nifti_channels(image, "nibabel image"), image.affine, image, [])
    if isinstance(image, sitk.Image):
        return _scan(sitk_channels(image, "SimpleITK image"), sitk_affine(image), image, [])
    if isinstance(image, np.ndarray):
        if image.ndim not in (3, 4):
            raise MedsegError(f"numpy image: expected (X, Y, Z) or (C, X, Y, Z), got shape {image.shape}")
        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise MedsegError(f"numpy image: the affine must be 4x4, got shape {aff.shape}")
        data = np.ascontiguousarray(image[None] if image.ndim == 3 else image, dtype=np.float32)
        return _scan(data, aff, None, [])
    raise MedsegError(f"cannot segment an object of type {type(image).__name__}; give a path, a nibabel or "
                      "SimpleITK image, or a numpy array with an affine")
