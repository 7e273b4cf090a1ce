"""Writers: a map on a scan's grid -> NIfTI, NRRD, MHA, 3D Slicer ``.seg.nrrd``, DICOM-SEG or RTSTRUCT with the
scan's exact geometry; one binary mask per label; class probabilities -> float16 ``.npz``. Each ``*_writer``
returns ``write(path)`` for :func:`~medseg3d.io.scan.atomic_write_all`, so all files of a case appear together
or not at all.

:data:`OUTPUT_FORMATS` is the one table of output formats: their suffixes, whether they need a DICOM series as
input, the format of the float maps (uncertainty) and per-label masks that go with them, and a one-line help;
the command line and the API derive their choices and help from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import MedsegError
from .nifti import nifti_like
from .scan import PathLike, Scan, atomic_write
from .sitk_image import sitk_like

Writer = Callable[[str], None]


@dataclass(frozen=True)
class OutputFormat:
    """One output format. ``map_format``: the format of float maps (uncertainty) written next to the label map;
    ``mask_format``: the format of the per-label masks (``--masks``)."""

    name: str
    suffix: str
    title: str
    help: str
    needs_dicom: bool = False
    map_format: str = ""
    mask_format: str = ""
    other_suffixes: tuple[str, ...] = ()  # also recognised in file names (``-o seg.nii``)


OUTPUT_FORMATS: dict[str, OutputFormat] = {f.name: f for f in [
    OutputFormat("nifti", ".nii.gz", "NIfTI", "NIfTI label map (the input's affine and qform/sform)",
                 map_format="nifti", mask_format="nifti", other_suffixes=(".nii",)),
    OutputFormat("nrrd", ".nrrd", "NRRD", "NRRD label map", map_format="nrrd", mask_format="nrrd"),
    OutputFormat("mha", ".mha", "MHA", "MetaImage label map", map_format="mha", mask_format="mha"),
    OutputFormat("seg.nrrd", ".seg.nrrd", "3D Slicer segmentation",
                 "3D Slicer segmentation: named, coloured segments with SNOMED CT codes",
                 map_format="nrrd", mask_format="seg.nrrd"),
    OutputFormat("dicom-seg", ".dcm", "DICOM-SEG",
                 "DICOM-SEG referencing the source images (DICOM series input only)",
                 needs_dicom=True, map_format="nifti", mask_format="nifti"),
    OutputFormat("rtstruct", ".dcm", "RTSTRUCT",
                 "DICOM RT Structure Set, contours per slice (DICOM series input only)",
                 needs_dicom=True, map_format="nifti", mask_format="nifti"),
]}
FORMATS = {name: f.suffix for name, f in OUTPUT_FORMATS.items()}  # name -> suffix
IMAGE_FORMATS = ("nifti", "nrrd", "mha")  # formats of float maps


def format_help() -> str:
    """The help of ``--format``, from the table."""
    return "; ".join(f"{f.name}: {f.help}" for f in OUTPUT_FORMATS.values()) + \
        " (default: dicom-seg for a DICOM series, else nifti)"


def output_format(fmt: str) -> OutputFormat:
    if fmt not in OUTPUT_FORMATS:
        raise MedsegError(f"unknown output format '{fmt}'; use one of {', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[fmt]


def map_format(fmt: str) -> str:
    """The format of float maps (uncertainty) written with a label map in ``fmt``."""
    return output_format(fmt).map_format


def check_format(fmt: str, scan: Scan) -> list[str]:
    """Before inference: the format exists and the scan can be written in it. For formats that reference a
    DICOM source this runs :func:`~medseg3d.io.dicom.check_dicom_seg_source` (it refuses, or repairs blank UIDs
    in memory) and returns its warnings, to be shown to the user."""
    spec = output_format(fmt)
    if spec.needs_dicom and not scan.dicom:
        others = ", ".join(n for n, f in OUTPUT_FORMATS.items() if not f.needs_dicom)
        raise MedsegError(f"{scan.sources[0] if scan.sources else 'image'}: {spec.title} output needs a DICOM series "
                          f"as input; use --format {others}")
    if spec.needs_dicom:
        from .dicom import check_dicom_seg_source

        return check_dicom_seg_source(scan.dicom, spec.title)
    return []


def image_writer(array: np.ndarray, scan: Scan, fmt: str) -> Writer:
    """``array`` (X, Y, Z) on the scan's grid as a NIfTI, NRRD or MHA file in the scan's geometry."""
    if fmt == "nifti":
        img = nifti_like(array, scan)
        return lambda path: nib.save(img, path)
    if fmt in ("nrrd", "mha"):
        img = sitk_like(array, scan)
        return lambda path: sitk.WriteImage(img, path, useCompression=True)
    raise MedsegError(f"format '{fmt}' holds label maps only; use {', '.join(IMAGE_FORMATS)}")


def label_writer(labels: np.ndarray, scan: Scan, fmt: str, names: dict[str, int], version: str,
                 codes: Mapping[str, Mapping] | None = None) -> Writer:
    """A label map (X, Y, Z) in ``fmt``. ``.seg.nrrd``, DICOM-SEG and RTSTRUCT get one named, coloured segment
    (ROI) per non-background label with SNOMED CT codes (:mod:`medseg3d.io.codes`; ``codes`` overrides them
    per label name)."""
    check_format(fmt, scan)
    if fmt == "seg.nrrd":
        from .slicer import seg_nrrd_writer

        return seg_nrrd_writer(labels, scan, names, codes)
    if fmt == "dicom-seg":
        from .dicom import dicom_seg_writer

        return dicom_seg_writer(labels, scan.dicom, names, version, codes)
    if fmt == "rtstruct":
        from .rtstruct import rtstruct_writer

        return rtstruct_writer(labels, scan.dicom, names, version, codes)
    return image_writer(labels, scan, fmt)


def mask_filename(name: str) -> str:
    """A label name as a file name: characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._") or "label"
    return stem


def mask_paths(names: dict[str, int], folder: PathLike, fmt: str = "nifti") -> dict[str, Path]:
    """Per non-background label name, the path of its mask: ``folder/<label name><suffix>`` (see
    :func:`mask_writers`); known before inference, so the paths can be checked first. Two names that give one
    file name are an error."""
    suffix = OUTPUT_FORMATS[output_format(fmt).mask_format].suffix
    folder = Path(folder)
    out: dict[str, Path] = {}
    seen: dict[str, str] = {}
    for name, value in names.items():
        if value == 0:
            continue
        stem = mask_filename(name)
        if stem.lower() in seen:
            raise MedsegError(f"{folder}: labels {seen[stem.lower()]!r} and {name!r} would both be written as "
                              f"{stem}{suffix}; rename one of them")
        seen[stem.lower()] = name
        out[name] = folder / f"{stem}{suffix}"
    return out


def mask_writers(labels: np.ndarray, scan: Scan, names: dict[str, int], folder: PathLike, fmt: str = "nifti",
                 codes: Mapping[str, Mapping] | None = None) -> dict[Path, Writer]:
    """One binary mask (uint8, 0/1) per non-background label, ``folder/<label name><suffix>``, in the scan's
    geometry, as TotalSegmentator writes them: all labels, also those absent from the map (an empty mask).
    ``fmt`` is the label map's format: image formats give the same format, ``seg.nrrd`` a one-segment
    ``.seg.nrrd``, DICOM-SEG and RTSTRUCT (which already hold one segment per label) NIfTI masks."""
    mfmt = output_format(fmt).mask_format
    writers: dict[Path, Writer] = {}
    for name, path in mask_paths(names, folder, fmt).items():
        mask = (np.asarray(labels) == names[name]).astype(np.uint8)
        if mfmt == "seg.nrrd":
            from .slicer import seg_nrrd_writer

            writers[path] = seg_nrrd_writer(mask, scan, {"background": 0, name: 1},
                                            {name: codes[name]} if codes and name in codes else None)
        else:
            writers[path] = image_writer(mask, scan, mfmt)
    return writers


def probabilities_writer(probs: np.ndarray, scan: Scan, names: dict[str, int],
                         regions: dict[str, list[int]] | None = None) -> Writer:
    """Class probabilities (C, X, Y, Z) as float16 in an ``.npz`` (as nnU-Net does) with ``probabilities``,
    ``label_names``, ``label_values`` and ``affine`` (voxel -> RAS mm) on the scan's grid. For a region-trained
    model the channels are the ``regions`` (sigmoid probabilities), named by ``region_names`` with their label
    values in ``region_labels`` ("1+2+4")."""
    extra = {"region_names": np.array(list(regions)),
             "region_labels": np.array(["+".join(map(str, v)) for v in regions.values()])} if regions else {}

    def write(path: str) -> None:
        with open(path, "wb") as f:
            np.savez_compressed(f, probabilities=probs.astype(np.float16), label_names=np.array(list(names)),
                                label_values=np.array(list(names.values())), affine=scan.affine, **extra)
    return write


def write_image(array: np.ndarray, scan: Scan, path: PathLike, fmt: str = "nifti") -> Path:
    """Write one map atomically (temporary file + rename)."""
    return atomic_write(path, image_writer(array, scan, fmt))


def format_for_path(path: PathLike) -> str | None:
    """The output format a file name asks for (``x.seg.nrrd`` -> seg.nrrd, not nrrd; ``x.dcm`` -> dicom-seg,
    the first of the table's ``.dcm`` formats), or None."""
    lower = Path(path).name.lower()
    matches = [(len(s), n) for n, f in OUTPUT_FORMATS.items() for s in (f.suffix, *f.other_suffixes)
               if lower.endswith(s)]
    return max(matches, key=lambda m: m[0])[1] if matches else None  # max keeps the first of equal lengths


def write_labels(labels: np.ndarray, scan: Scan, path: PathLike, names: dict[str, int], fmt: str | None = None,
                 version: str = "unknown", codes: Mapping[str, Mapping] | None = None) -> Path:
    """Write a label map atomically in ``fmt`` (default: from the file name, see :func:`format_for_path`);
    ``version`` is the software version DICOM outputs record."""
    fmt = fmt or format_for_path(path)
    if fmt is None:
        known = sorted({s for f in OUTPUT_FORMATS.values() for s in (f.suffix, *f.other_suffixes)})
        raise MedsegError(f"{path}: cannot tell the output format from the file name; end it with one of "
                          f"{', '.join(known)} or give the format")
    return atomic_write(path, label_writer(labels, scan, fmt, names, version, codes))
