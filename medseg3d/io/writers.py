"""Writers: a map on a scan's grid -> NIfTI, NRRD, MHA or DICOM-SEG with the scan's exact geometry; class
probabilities -> float16 ``.npz``. Each ``*_writer`` returns ``write(path)`` for :func:`atomic_write_all`, so
all files of a case appear together or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import MedsegError
from .nifti import nifti_like
from .scan import PathLike, Scan, atomic_write
from .sitk_image import sitk_like

FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom-seg": ".dcm"}
Writer = Callable[[str], None]


def check_format(fmt: str, scan: Scan) -> None:
    if fmt not in FORMATS:
        raise MedsegError(f"unknown output format '{fmt}'; use one of {', '.join(FORMATS)}")
    if fmt == "dicom-seg" and not scan.dicom:
        raise MedsegError(f"{scan.sources[0] if scan.sources else 'image'}: DICOM-SEG output needs a DICOM series "
                          "as input; use --format nifti, nrrd or mha")


def image_writer(array: np.ndarray, scan: Scan, fmt: str) -> Writer:
    """``array`` (X, Y, Z) on the scan's grid as a NIfTI, NRRD or MHA file in the scan's geometry."""
    if fmt == "nifti":
        img = nifti_like(array, scan)
        return lambda path: nib.save(img, path)
    if fmt in ("nrrd", "mha"):
        img = sitk_like(array, scan)
        return lambda path: sitk.WriteImage(img, path, useCompression=True)
    raise MedsegError(f"format '{fmt}' holds label maps only; use nifti, nrrd or mha")


def label_writer(labels: np.ndarray, scan: Scan, fmt: str, names: dict[str, int], version: str) -> Writer:
    """A label map (X, Y, Z) in ``fmt``; DICOM-SEG gets one segment per non-background name."""
    check_format(fmt, scan)
    if fmt == "dicom-seg":
        from .dicom import dicom_seg

        seg = dicom_seg(labels, scan.dicom, names, version)
        return lambda path: seg.save_as(path)
    return image_writer(labels, scan, fmt)


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
