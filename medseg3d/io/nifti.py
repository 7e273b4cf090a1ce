"""NIfTI reading and writing (nibabel). A scan read from NIfTI keeps its nibabel image as the reference, so a
written map gets the input's exact shape, affine, qform/sform and their codes.

Reading looks at the header first (nibabel reads voxel data lazily): the layout (3D, 4D with channels last,
or the NIfTI vector form (X, Y, Z, 1, C)), a 4th axis that is time rather than channels, single-slice images,
and the affine are checked before any voxel is read."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ..errors import MedsegError
from .scan import PathLike, Scan, atomic_write, check_spatial, first_line

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NIFTI_INTENT_LABEL = 1002  # nibabel's 'label': "the voxel values are indices into a label table"
NIFTI_INTENT_VECTOR = 1007  # the NIfTI way to say "the 5th (or 4th) axis holds vector components"
TIME_UNITS = ("sec", "msec", "usec")


def load_nifti(path: PathLike) -> nib.Nifti1Image:
    """The NIfTI image of ``path`` (its header; the voxels are read on demand)."""
    p = Path(path)
    if not p.exists():
        raise MedsegError(f"{p}: file not found")
    if p.is_dir():
        raise MedsegError(f"{p}: is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(p))
    except Exception as e:  # nibabel raises several types for unreadable files
        raise MedsegError(f"{p}: not a readable NIfTI image ({first_line(e)}); check that it is a complete "
                          ".nii/.nii.gz file") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedsegError(f"{p}: not a NIfTI image (nibabel read it as {type(img).__name__}); give a NIfTI file")
    return img


def time_axis(img: nib.Nifti1Image) -> str | None:
    """How the header says that the 4th axis is time (e.g. 'one volume every 2 sec'), or None when it holds
    channels. A channel axis has no sampling step: writers leave pixdim[4] at 1 (nibabel, ITK, the Medical
    Segmentation Decathlon, which also store the unit 'sec' by default) or 0, or mark the axis as vector
    components (intent 1007). A step other than 0 or 1, a millisecond/microsecond unit or a slice timing is a
    time series (fMRI, DWI, DCE)."""
    shape, hdr = img.shape, img.header
    if len(shape) < 4 or shape[3] <= 1 or int(hdr["intent_code"]) == NIFTI_INTENT_VECTOR:
        return None
    step = float(hdr["pixdim"][4])
    unit = hdr.get_xyzt_units()[1]
    unit_txt = unit if unit in TIME_UNITS else "units"
    if np.isfinite(step) and step > 0 and step != 1.0:
        return f"one volume every {step:g} {unit_txt}"
    if unit in ("msec", "usec"):
        return f"its 4th axis in {unit}"
    slice_duration = float(hdr["slice_duration"])
    if np.isfinite(slice_duration) and slice_duration > 0:
        return f"slice timing of {slice_duration:g} {unit_txt}"
    return None


def nifti_layout(img: nib.Nifti1Image, source: str, allow_2d: bool = False) -> tuple[tuple[int, int, int], int]:
    """``((X, Y, Z), channels)`` from the header alone: 3D, 4D with channels last, or (X, Y, Z, 1, C); a 2D image
    is (X, Y, 1) when ``allow_2d``. Anything else is a MedsegError naming ``source``."""
    shape = tuple(int(s) for s in img.shape)
    dtype = img.get_data_dtype()
    if dtype.fields is not None:
        raise MedsegError(f"{source}: holds RGB colour voxels; give a greyscale image")
    if dtype.kind == "c":
        raise MedsegError(f"{source}: holds complex voxel values ({dtype}); give a magnitude image")
    if len(shape) < 2:
        raise MedsegError(f"{source}: is {len(shape)}D (shape {shape}); give a 3D volume")
    if len(shape) == 2:
        spatial = (shape[0], shape[1], 1)
        if not allow_2d:
            check_spatial(spatial, shape, source, allow_2d)
    else:
        spatial = shape[:3]
    extra = [s for s in shape[3:] if s != 1]
    if len(extra) > 1:
        raise MedsegError(f"{source}: image has shape {shape}; expected 3D or 4D (channels last); give one 3D "
                          "volume, its channels on the 4th axis")
    when = time_axis(img)
    if when is not None:
        raise MedsegError(f"{source}: is a 4D time series (shape {shape}, {when}); the model segments one 3D "
                          "volume with its channels on the 4th axis; save one time point as a 3D file and "
                          "segment that (if the 4th axis holds channels, set pixdim[4] to 1)")
    check_spatial(spatial, shape, source, allow_2d)
    return spatial, (extra[0] if extra else 1)


def nifti_channels(img: nib.Nifti1Image, source: PathLike | str, allow_2d: bool = False) -> np.ndarray:
    """(C, X, Y, Z) float32 from a 3D image or a 4D image with channels on the last axis (scaled by the
    header's scl_slope/scl_inter, as nibabel's get_fdata does)."""
    spatial, channels = nifti_layout(img, str(source), allow_2d)
    data = read_voxels(img, source, lambda: img.get_fdata(dtype=np.float32))
    data = data.reshape(spatial + (channels,))
    return np.ascontiguousarray(np.moveaxis(data, -1, 0))


def nifti_raw(img: nib.Nifti1Image, source: PathLike | str, allow_2d: bool = False) -> np.ndarray:
    """(X, Y, Z, C) in the file's own dtype (scaled to float only when the header scales): for label maps."""
    spatial, channels = nifti_layout(img, str(source), allow_2d)
    return read_voxels(img, source, lambda: np.asanyarray(img.dataobj)).reshape(spatial + (channels,))


def read_voxels(img, source: PathLike | str, read):
    """``read()`` the voxels; a failure is a MedsegError naming ``source``. Values beyond float32 become
    infinite without a warning: the finite check that follows names them."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return read()
    except MemoryError:
        raise MedsegError(f"{source}: not enough memory to read the voxel data; free memory or crop the image") from None
    except Exception as e:  # EOFError, zlib.error, OSError ("Expected N bytes"), ValueError ...
        raise MedsegError(f"{source}: the voxel data cannot be read (truncated or corrupt file: {first_line(e)}); "
                          "copy or export the file again") from None


def read_label(path: PathLike, like: Scan | None = None) -> np.ndarray:
    """An integer label map (X, Y, Z) from NIfTI, NRRD or MHA; with ``like``, its grid must match the scan's
    (see :func:`medseg3d.io.readers.read_label`)."""
    from .readers import read_label as _read_label

    return _read_label(path, like)


def label_dtype(values: np.ndarray | Sequence[int]) -> np.dtype:
    vals = np.asarray(values)
    if vals.size == 0 or (vals.min() >= 0 and vals.max() < 256):
        return np.dtype(np.uint8)
    return np.dtype(np.int16)


def _as_map(out: nib.Nifti1Image, dtype: np.dtype) -> None:
    """Header fields that describe the input's intensities do not describe a map written on its grid: reset
    them (descrip, aux_file, cal_min/cal_max, scaling, intent, extensions such as AFNI's or CIFTI's); integer
    maps are marked as label maps (NIFTI_INTENT_LABEL)."""
    hdr = out.header
    for key, value in (("descrip", b""), ("aux_file", b""), ("cal_min", 0), ("cal_max", 0), ("glmin", 0),
                       ("glmax", 0)):
        if key in hdr.keys():  # NIfTI-2 has no glmin/glmax
            hdr[key] = value
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_intent("label" if np.issubdtype(dtype, np.integer) else "none", (), name="")
    hdr.extensions.clear()


def like_reference(array: np.ndarray, reference: nib.Nifti1Image, dtype=None) -> nib.Nifti1Image:
    """A NIfTI holding ``array`` (X, Y, Z) with the reference's affine, qform/sform (and codes) and units; the
    intensity fields of the reference's header are reset and an integer map gets the label intent."""
    header = reference.header.copy()
    dtype = np.dtype(dtype or array.dtype)
    out = type(reference)(np.asarray(array, dtype=dtype), None, header=header)
    qform, qcode = reference.header.get_qform(coded=True)
    sform, scode = reference.header.get_sform(coded=True)
    out.set_qform(qform if qform is not None else reference.affine, int(qcode or 0))
    out.set_sform(sform if sform is not None else reference.affine, int(scode or 0))
    out.set_data_dtype(dtype)
    if array.ndim != len(reference.shape):
        out.header.set_data_shape(array.shape)
    _as_map(out, dtype)
    return out


def nifti_like(array: np.ndarray, scan: Scan, dtype=None) -> nib.Nifti1Image:
    """A NIfTI of ``array`` (X, Y, Z) in the scan's geometry: the reference's own header when the scan came
    from NIfTI, else the scan's affine as qform and sform with code 1 (scanner), units mm. An integer map is a
    label map (intent NIFTI_INTENT_LABEL)."""
    if isinstance(scan.reference, (nib.Nifti1Image, nib.Nifti2Image)):
        return like_reference(array, scan.reference, dtype)
    dtype = np.dtype(dtype or array.dtype)
    out = nib.Nifti1Image(np.asarray(array, dtype=dtype), scan.affine)
    out.set_qform(scan.affine, 1)
    out.set_sform(scan.affine, 1)
    out.header.set_xyzt_units("mm", "sec")
    _as_map(out, dtype)
    return out


def atomic_save(img: nib.Nifti1Image, path: PathLike) -> Path:
    """Write ``img`` to ``path`` through a temporary file in the same folder, so no partial file remains."""
    return atomic_write(path, lambda tmp: nib.save(img, tmp))
