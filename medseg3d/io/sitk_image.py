"""SimpleITK images (NRRD, MHA, DICOM series) <-> medseg3d's (C, X, Y, Z) arrays with a RAS affine.

SimpleITK stores geometry in LPS (origin, spacing, direction) and its arrays in (Z, Y, X) order; a scan read
through SimpleITK becomes the same (C, X, Y, Z) data + RAS affine as a NIfTI scan, and keeps the SimpleITK
image as its reference so outputs get exactly the input's size, spacing, origin and direction.

The layout (3D scalar or vector image; a 2D image only when allowed, as one slice) is checked from the header
(:class:`SimpleITK.ImageFileReader` after ``ReadImageInformation``) before the voxels are read."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..errors import MedsegError
from .scan import Scan, check_spatial

_LPS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS (its own inverse)
SitkInfo = Union[sitk.Image, sitk.ImageFileReader]  # both answer GetSize, GetSpacing, GetOrigin, GetDirection
_COMPLEX = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


def sitk_affine_from(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """The 4x4 voxel -> RAS+ mm affine of a 3D (or 2D, as one slice at z = 0 with 1 mm thickness) LPS
    geometry."""
    n = len(spacing)
    d = np.eye(3)
    d[:n, :n] = np.asarray(direction, dtype=np.float64).reshape(n, n)
    sp = np.ones(3)
    sp[:n] = np.asarray(spacing, dtype=np.float64)
    org = np.zeros(3)
    org[:n] = np.asarray(origin, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ d @ np.diag(sp)
    affine[:3, 3] = _LPS @ org
    return affine


def sitk_affine(img: SitkInfo) -> np.ndarray:
    """The 4x4 voxel -> RAS+ mm affine of a 3D (or 2D) SimpleITK image or of a file reader's header."""
    return sitk_affine_from(img.GetDirection(), img.GetSpacing(), img.GetOrigin())


def _components(info: SitkInfo) -> int:
    return info.GetNumberOfComponentsPerPixel() if isinstance(info, sitk.Image) else info.GetNumberOfComponents()


def sitk_layout(info: SitkInfo, source: str, allow_2d: bool = False) -> tuple[tuple[int, int, int], int]:
    """``((X, Y, Z), channels)`` of a 3D scalar or vector image (or, with ``allow_2d``, a 2D one as one slice)
    from its header; anything else is a MedsegError naming ``source``."""
    dim, size = info.GetDimension(), tuple(int(s) for s in info.GetSize())
    if info.GetPixelID() in _COMPLEX:
        raise MedsegError(f"{source}: holds complex voxel values; give a magnitude image")
    if dim == 2:
        spatial = (size[0], size[1], 1)
    elif dim == 3:
        spatial = size
    else:
        raise MedsegError(f"{source}: image has {dim} dimensions (size {size}); expected a 3D image "
                          "(several channels as a vector image or as one file per channel)")
    check_spatial(spatial, size, source, allow_2d)
    return spatial, int(_components(info))


def as_3d(img: sitk.Image) -> sitk.Image:
    """A 2D image as a one-slice 3D image (z = 0, 1 mm thick), so writers give it back as a volume; a 3D image
    as it is."""
    return sitk.JoinSeries(img) if img.GetDimension() == 2 else img


def sitk_raw(img: sitk.Image) -> np.ndarray:
    """(X, Y, Z, C) in the image's own pixel type."""
    img3 = as_3d(img)
    arr = sitk.GetArrayViewFromImage(img3)  # (Z, Y, X) or (Z, Y, X, C), a view into img3's buffer
    arr = arr[..., None] if img.GetNumberOfComponentsPerPixel() == 1 else arr
    return np.array(np.transpose(arr, (2, 1, 0, 3)))  # a copy: img3 goes away


def sitk_channels(img: sitk.Image, source: str, allow_2d: bool = False) -> np.ndarray:
    """(C, X, Y, Z) float32 of a 3D scalar or vector (multi-component) SimpleITK image."""
    sitk_layout(img, source, allow_2d)
    img3 = as_3d(img)
    arr = sitk.GetArrayViewFromImage(img3)  # (Z, Y, X) or (Z, Y, X, C), a view into img3's buffer
    arr = arr[..., None] if img.GetNumberOfComponentsPerPixel() == 1 else arr
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: infinite, named by the finite check
        return np.array(np.transpose(arr, (3, 2, 1, 0)), dtype=np.float32, order="C")  # a copy: img3 goes away


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
