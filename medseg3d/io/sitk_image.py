"""SimpleITK images (NRRD, MHA, DICOM series) <-> medseg3d's (C, X, Y, Z) arrays with a RAS affine.

SimpleITK stores geometry in LPS (origin, spacing, direction) and its arrays in (Z, Y, X) order; a scan read
through SimpleITK becomes the same (C, X, Y, Z) data + RAS affine as a NIfTI scan, and keeps the SimpleITK
image as its reference so outputs get exactly the input's size, spacing, origin and direction."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import MedsegError
from .scan import Scan

_LPS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS (its own inverse)


def sitk_affine(img: sitk.Image) -> np.ndarray:
    """The 4x4 voxel -> RAS+ mm affine of a 3D SimpleITK image."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = _LPS @ np.asarray(img.GetOrigin(), dtype=np.float64)
    return affine


def sitk_channels(img: sitk.Image, source: str) -> np.ndarray:
    """(C, X, Y, Z) float32 of a 3D scalar or vector (multi-component) SimpleITK image."""
    if img.GetDimension() != 3:
        raise MedsegError(f"{source}: image has {img.GetDimension()} dimensions; expected a 3D image "
                          "(several channels as a vector image or as one file per channel)")
    arr = sitk.GetArrayViewFromImage(img)  # (Z, Y, X) or (Z, Y, X, C)
    arr = arr[..., None] if img.GetNumberOfComponentsPerPixel() == 1 else arr
    return np.ascontiguousarray(np.transpose(arr, (3, 2, 1, 0)), dtype=np.float32)


def sitk_like(array: np.ndarray, scan: Scan) -> sitk.Image:
    """A SimpleITK image of ``array`` ((X, Y, Z), or (C, X, Y, Z) as a vector image) in the scan's geometry:
    the reference's own size, spacing, origin and direction when the scan came through SimpleITK, else those
    of the scan's affine."""
    arr = np.asarray(array)
    img = (sitk.GetImageFromArray(np.transpose(arr, (3, 2, 1, 0)), isVector=True) if arr.ndim == 4
           else sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0))))
    if isinstance(scan.reference, sitk.Image):
        img.CopyInformation(scan.reference)
        return img
    lps = _LPS @ scan.affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps / spacing).ravel().tolist())
    img.SetOrigin((_LPS @ scan.affine[:3, 3]).tolist())
    return img
