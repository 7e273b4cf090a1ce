"""DICOM series in (SimpleITK's series reader, pydicom datasets kept for the output), DICOM-SEG out
(highdicom), with segment names from the checkpoint's labels so 3D Slicer shows them by name."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import MedsegError
from .preview import _COLORS
from .scan import PathLike, first_line

_COLORS_RGB = [tuple(round(c * 255) for c in rgb) for rgb in _COLORS]  # the preview's colours, 0-255


def is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_dir(path: PathLike) -> bool:
    """A folder that holds DICOM files (``.dcm`` or with the ``DICM`` magic)."""
    p = Path(path)
    return p.is_dir() and any(f.is_file() and is_dicom_file(f) for f in p.iterdir())


def read_dicom_series(folder: PathLike) -> tuple[sitk.Image, list]:
    """The one image series in ``folder``: a SimpleITK image (slices sorted by position) and the pydicom
    datasets of its slices in the same order (without pixel data)."""
    import pydicom

    folder = Path(folder)
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as e:
        raise MedsegError(f"{folder}: not a readable DICOM series ({first_line(e)})") from None
    if len(series) != 1:
        raise MedsegError(f"{folder}: holds {len(series)} DICOM series; give a folder with exactly one"
                          if series else f"{folder}: no readable DICOM image series in the folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except Exception as e:  # SimpleITK raises RuntimeError, pydicom InvalidDicomError and friends
        raise MedsegError(f"{folder}: not a readable DICOM series ({first_line(e)})") from None
    return img, datasets


def dicom_seg(labels: np.ndarray, datasets: Sequence, names: dict[str, int], software_version: str):
    """A highdicom DICOM-SEG (binary, one segment per non-background label, in the checkpoint's order) for a
    label map (X, Y, Z) on the grid of the series ``datasets`` (in Z order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    fg = [(name, value) for name, value in names.items() if value != 0]
    frames = np.zeros(labels.shape[::-1], dtype=np.uint8)  # (frames, rows, columns) = (Z, Y, X)
    zyx = np.transpose(labels, (2, 1, 0))
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg3d", version=software_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, (name, value) in enumerate(fg, start=1):
        frames[zyx == value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*_COLORS_RGB[(number - 1) % len(_COLORS_RGB)])))
    try:
        return hd.seg.Segmentation(
            source_images=list(datasets), pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg3d",
            manufacturer_model_name="medseg3d", software_versions=software_version, device_serial_number="0",
            series_description="medseg3d segmentation")
    except (ValueError, TypeError, AttributeError) as e:
        src = getattr(datasets[0], "filename", "the DICOM series")
        raise MedsegError(f"{src}: cannot build a DICOM-SEG for this series ({first_line(e)})") from None


def write_dicom_series(volume: np.ndarray, affine: np.ndarray, folder: PathLike, modality: str = "MR",
                       patient_id: str = "PHANTOM", series_description: str = "medseg3d phantom") -> list[Path]:
    """Write a (X, Y, Z) volume as a DICOM series of single-frame MR (or CT) images, one ``.dcm`` per Z slice,
    with the geometry of ``affine`` (voxel -> RAS mm; its columns must be orthogonal). Values are rounded to
    int16. For test fixtures, samples and demos: the result is a valid source for DICOM-SEG."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    cosines = lps[:3, :3] / spacing
    pixels = np.clip(np.rint(volume), -32768, 32767).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    written = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Synthetic", patient_id, "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study, "1", "20260101", "120000"
        ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, 1, series_description
        ds.Modality, ds.Manufacturer = modality, "medseg3d"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([cosines[:, 0], cosines[:, 1]])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (along Y), column spacing (X)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        if modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = 10, 500, 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        path = folder / f"slice_{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        written.append(path)
    return written
