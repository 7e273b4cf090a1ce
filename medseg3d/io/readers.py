"""One reading path for every input: NIfTI (nibabel), NRRD and MHA (SimpleITK), a DICOM series folder
(SimpleITK's series reader) and in-memory images all become a :class:`Scan` with (C, X, Y, Z) data and a
RAS affine, keeping the original image as the reference for writers. Label maps go through the same path
(:func:`read_label`).

A file is opened in two steps: its header first (layout, channels, a 4th axis that is time, single-slice
images, the affine, and whether the float32 array fits in memory), then its voxels (readable, finite). Every
problem is a :class:`MedsegError` of one sentence naming the file."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import MedsegError
from .dicom import is_dicom_dir, read_dicom_series
from .memory import check_memory
from .nifti import NIFTI_SUFFIXES, load_nifti, nifti_channels, nifti_layout, nifti_raw
from .scan import (IMAGE_SUFFIXES, PathLike, Scan, check_affine, check_finite, check_spatial, image_suffix)
from .sitk_image import as_3d, sitk_affine, sitk_channels, sitk_layout, sitk_raw

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
FILE_SUFFIXES = IMAGE_SUFFIXES  # NIfTI, then SITK_SUFFIXES
AFFINE_TOLERANCE = 1e-3  # mm: channel files and labels must share their image's affine to this


def itk_reason(e: BaseException) -> str:
    """The useful part of a SimpleITK exception on one line: without the 'Exception thrown in SimpleITK ...'
    source-file line and the ITK class/address prefixes; of teem's NRRD chain of 'trouble' lines, the last."""
    lines, nrrd = [], []
    for line in str(e).splitlines():
        line = line.strip()
        if not line or line.startswith("Exception thrown in SimpleITK"):
            continue
        if line.startswith("[nrrd]"):
            line = re.sub(r"^\[nrrd\]\s*(_?\w+:\s*)?", "", line)
            if line:
                nrrd.append(line)
            continue
        line = re.sub(r"^(sitk::ERROR:|itk::ERROR:|ITK ERROR:)\s*", "", line)
        line = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line)
        line = line.replace("Reason: No such file or directory", "").strip()  # a stale errno, not the cause
        if line:
            lines.append(line)
    text = nrrd[-1] if nrrd else " ".join(lines) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class Opened:
    """An image whose header has been read and checked: its grid and channels are known, its voxels are not
    read yet. ``load(raw)`` reads them: (C, X, Y, Z) float32 (``raw=False``) or (X, Y, Z, C) in the file's own
    dtype (``raw=True``, for label maps), and the reference image for writers."""

    source: str
    spatial: tuple[int, int, int]
    channels: int
    affine: np.ndarray
    load: Callable[[bool], tuple[np.ndarray, Any]]
    dicom: list = field(default_factory=list)


_METAIO_GEOMETRY = ("Offset", "Origin", "Position", "ElementSpacing", "ElementSize", "TransformMatrix",
                    "Rotation", "Orientation")


def _check_metaio_geometry(p: Path) -> None:
    """MetaIO (.mha/.mhd) reads a geometry value it cannot parse ('nan', 'inf', a word) as 0, silently: refuse
    a header whose geometry fields are not finite numbers."""
    try:
        with open(p, "rb") as f:
            head = f.read(65536).decode("latin-1")
    except OSError:
        return
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            continue
        if key == "ElementDataFile":
            break
        if key in _METAIO_GEOMETRY:
            try:
                ok = all(np.isfinite(float(v)) for v in value.split())
            except ValueError:
                ok = False
            if not ok:
                raise MedsegError(f"{p}: its header's {key} is '{value.strip()}', not finite numbers; fix the "
                                  "header's spacing, origin and direction")


def _open_sitk_file(p: Path, suffix: str, allow_2d: bool) -> Opened:
    if suffix in (".mha", ".mhd"):
        _check_metaio_geometry(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise MedsegError(f"{p}: not a readable {suffix[1:].upper()} image ({itk_reason(e)}); check that it is a "
                          f"complete {suffix} file") from None
    spatial, channels = sitk_layout(reader, str(p), allow_2d)
    affine = check_affine(sitk_affine(reader), str(p))

    def load(raw: bool):
        try:
            img = reader.Execute()
        except RuntimeError as e:
            raise MedsegError(f"{p}: the voxel data cannot be read (truncated or corrupt file, or a missing data "
                              f"file: {itk_reason(e)}); copy or export the file again") from None
        return (sitk_raw(img) if raw else sitk_channels(img, str(p), allow_2d)), as_3d(img)

    return Opened(str(p), spatial, channels, affine, load)


def _opened_sitk_image(img: sitk.Image, source: str, allow_2d: bool, dicom=()) -> Opened:
    spatial, channels = sitk_layout(img, source, allow_2d)
    affine = check_affine(sitk_affine(img), source)
    return Opened(source, spatial, channels, affine,
                  lambda raw: ((sitk_raw(img) if raw else sitk_channels(img, source, allow_2d)), as_3d(img)),
                  list(dicom))


def _opened_nifti(img: nib.Nifti1Image, source: str, allow_2d: bool) -> Opened:
    spatial, channels = nifti_layout(img, source, allow_2d)
    affine = img.affine if img.affine is not None else img.header.get_best_affine()  # an in-memory image
    affine = check_affine(affine, source, "fix the header's pixdim and qform/sform")
    return Opened(source, spatial, channels, affine,
                  lambda raw: ((nifti_raw(img, source, allow_2d) if raw else nifti_channels(img, source, allow_2d)),
                               img))


def open_image(path: PathLike, allow_2d: bool = False) -> Opened:
    """Read and check the header of one image file (NIfTI, NRRD, MHA) or a DICOM series folder (read whole);
    the voxels are read by :func:`load_opened`."""
    p = Path(path)
    if not p.exists():
        raise MedsegError(f"{p}: file not found")
    if p.is_dir():
        if not any(p.iterdir()):
            raise MedsegError(f"{p}: is an empty folder; expected an image file or a DICOM series folder")
        if not is_dicom_dir(p):
            raise MedsegError(f"{p}: is a folder without DICOM files; expected an image file or a DICOM series")
        img, datasets = read_dicom_series(p)
        return _opened_sitk_image(img, str(p), allow_2d, datasets)
    suffix = image_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        return _opened_nifti(load_nifti(p), str(p), allow_2d)
    if suffix in SITK_SUFFIXES:
        return _open_sitk_file(p, suffix, allow_2d)
    raise MedsegError(f"{p}: unknown image format '{suffix}'; expected {', '.join(FILE_SUFFIXES)} "
                      "or a DICOM series folder")


def load_opened(o: Opened) -> Scan:
    """The Scan of an opened image: refused before reading when its float32 array exceeds the available
    memory, and after reading when a voxel is NaN or infinite."""
    check_memory(o.source, o.spatial, o.channels)
    data, reference = o.load(False)
    check_finite(data, o.source)
    # SimpleITK's reader may normalise the header's geometry (a negative spacing becomes a flipped direction):
    # the image it returns is the one writers copy, so the scan takes its affine
    affine = check_affine(sitk_affine(reference), o.source) if isinstance(reference, sitk.Image) else o.affine
    return Scan(data, affine, reference, [o.source], list(o.dicom))


def read_image(path: PathLike, allow_2d: bool = False) -> Scan:
    """One image file (NIfTI, NRRD, MHA) or DICOM series folder as a Scan of its own channels. A single-slice
    image (one voxel along an axis) is refused unless ``allow_2d``."""
    return load_opened(open_image(path, allow_2d))


def _same_grid(o: Opened, ref: Opened, what: str) -> None:
    if o.spatial != ref.spatial:
        raise MedsegError(f"{o.source}: shape {o.spatial} differs from {ref.source} {ref.spatial}; {what}")
    if not np.allclose(o.affine, ref.affine, atol=AFFINE_TOLERANCE):
        raise MedsegError(f"{o.source}: its geometry (affine) differs from {ref.source}; {what}; here "
                          f"{affine_difference(o.affine, ref.affine)}")


def affine_difference(a: np.ndarray, b: np.ndarray) -> str:
    """How two voxel -> RAS affines differ, in a few words: how far apart the origins are, and how much the
    voxel axes (spacing and direction) differ."""
    parts = []
    dist = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    if dist > AFFINE_TOLERANCE:
        parts.append(f"the origins are {dist:.3g} mm apart")
    axes = float(np.abs(a[:3, :3] - b[:3, :3]).max())
    if axes > AFFINE_TOLERANCE:
        parts.append(f"the voxel axes differ by up to {axes:.3g} mm")
    return " and ".join(parts) or "they differ by less than a micrometre"


def read_scan(paths: PathLike | Sequence[PathLike], channels: int | None = None, allow_2d: bool = False) -> Scan:
    """Read one multichannel image, or one image per channel (their grids must agree); ``channels`` is the
    number the model expects, and a mismatch is an error naming the files. Every header is checked (grids,
    channel count, memory for all channels together) before any voxel is read."""
    plist = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not plist:
        raise MedsegError("no image file given; give an image file, one file per channel or a DICOM series folder")
    opened = [open_image(p, allow_2d) for p in plist]
    ref = opened[0]
    for o in opened[1:]:
        _same_grid(o, ref, "channels must share one grid (resample them onto one image's grid)")
    total = sum(o.channels for o in opened)
    if channels is not None and total != channels:
        names = ", ".join(str(p) for p in plist)
        raise MedsegError(f"{names}: has {total} channel(s) but the model expects {channels}; give one file per "
                          "channel or one file with the channels on its 4th axis")
    if len(opened) == 1:
        return load_opened(ref)
    source = f"{ref.source} (+{len(opened) - 1} channel file(s))"
    check_memory(source, ref.spatial, total)
    data = np.empty((total,) + ref.spatial, dtype=np.float32)  # filled file by file: no second copy
    c = 0
    for o in opened:
        part, reference = o.load(False)
        check_finite(part, o.source)
        data[c:c + o.channels] = part
        c += o.channels
        if o is ref:
            ref_image = reference
        del part
    affine = check_affine(sitk_affine(ref_image), ref.source) if isinstance(ref_image, sitk.Image) else ref.affine
    return Scan(data, affine, ref_image, [str(p) for p in plist], list(ref.dicom))


def read_label(path: PathLike, like: Scan | None = None) -> np.ndarray:
    """An integer label map (X, Y, Z) as int32 from NIfTI, NRRD, MHA (or a DICOM series folder), read like an
    image (same header checks); with ``like``, its grid (shape, and affine to 1e-3 mm) must be the scan's. A
    single-slice label is accepted: a label follows its image."""
    o = open_image(path, allow_2d=True)
    shape_txt = o.spatial if o.channels == 1 else o.spatial + (o.channels,)
    if o.channels != 1:
        raise MedsegError(f"{path}: a label map must be 3D with one channel, got shape {shape_txt}; give the label "
                          "map, not an image")
    if like is not None:
        if o.spatial != like.shape:
            raise MedsegError(f"{path}: label shape {o.spatial} differs from its image's {like.shape}; the label "
                              "must be on its image's voxel grid")
        if not np.allclose(o.affine, like.affine, atol=AFFINE_TOLERANCE):
            image = f" ({like.sources[0]})" if like.sources else ""
            raise MedsegError(f"{path}: label geometry (affine) differs from its image's{image}; resample the label "
                              "onto its image's grid")
    check_memory(o.source, o.spatial, 1)
    data, _ = o.load(True)
    data = data[..., 0]
    if data.dtype == bool:
        return data.astype(np.int32)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.issubdtype(data.dtype, np.floating):
            raise MedsegError(f"{path}: a label map must hold integers, got {data.dtype} voxels; give the label map")
        finite = np.isfinite(data)
        if not finite.all():
            raise MedsegError(f"{path}: {data.size - int(finite.sum())} label values are NaN or infinite; a label "
                              "map must hold integers")
        rounded = np.round(data)
        if not np.allclose(data, rounded):
            bad = data[~np.isclose(data, rounded)].flat[0]
            raise MedsegError(f"{path}: a label map must hold integers, found {bad:g}; give the label map, not an "
                              "image or a probability map")
        data = rounded
    info = np.iinfo(np.int32)
    if data.size and (data.min() < info.min or data.max() > info.max):
        raise MedsegError(f"{path}: label values beyond the int32 range; relabel them")
    return data.astype(np.int32)


def scan_from_image(image: Any, affine: np.ndarray | None = None, allow_2d: bool = False) -> Scan:
    """A Scan of an in-memory image: a nibabel image, a SimpleITK image, or a numpy array ((X, Y, Z) or
    channels-first (C, X, Y, Z); (X, Y) with ``allow_2d``) with its voxel -> RAS mm ``affine`` (required: a
    numpy array carries no geometry)."""
    if isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        return load_opened(_opened_nifti(image, "nibabel image", allow_2d))
    if isinstance(image, sitk.Image):
        return load_opened(_opened_sitk_image(image, "SimpleITK image", allow_2d))
    if isinstance(image, np.ndarray):
        src = "numpy image"
        if affine is None:
            raise MedsegError(f"{src}: no affine given; a numpy array carries no geometry: pass affine= (the 4x4 "
                              "voxel -> RAS mm matrix, e.g. nibabel's img.affine), or give the nibabel/SimpleITK "
                              "image or the file")
        if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
            raise MedsegError(f"{src}: holds {image.dtype} values; give real numbers")
        if image.ndim == 2 and allow_2d:
            image = image[None, :, :, None]
        elif image.ndim == 2:
            check_spatial((*image.shape, 1), image.shape, src)
        if image.ndim not in (3, 4):
            raise MedsegError(f"{src}: expected (X, Y, Z) or (C, X, Y, Z), got shape {image.shape}")
        data = image[None] if image.ndim == 3 else image
        check_spatial(data.shape[1:], image.shape, src, allow_2d)
        aff = check_affine(affine, src, "pass an invertible 4x4 voxel -> RAS mm affine=")
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: infinite, named just below
            data = np.ascontiguousarray(data, dtype=np.float32)
        check_finite(data, src)
        return Scan(data, aff, None, [])
    raise MedsegError(f"cannot segment an object of type {type(image).__name__}; give a path, a nibabel or "
                      "SimpleITK image, or a numpy array with an affine")
