"""DICOM RT Structure Set output (``rtstruct``): one ROI per non-background label, named after it, in the
preview's colour, with closed planar contours per source slice in patient coordinates (LPS mm), each linked to
the slice's SOPInstanceUID, for radiotherapy planning systems and viewers that read RTSTRUCT but not DICOM-SEG.

Written with pydicom; contours come from marching squares (``skimage.measure.find_contours``) at the 0.5 level of
each slice's binary mask, i.e. along the boundary between inside and outside voxel centres, so filling a contour
(a voxel is inside when its centre is) gives the mask back. Holes are inner contours; readers combine the
contours of a slice with the even-odd rule, as :func:`rtstruct_masks` does. A library such as rt-utils was not
used: it needs OpenCV and assumes square pixels (it swaps the row and column spacings)."""

from __future__ import annotations

import datetime
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import MedsegError
from .codes import ANATOMICAL_STRUCTURE, pydicom_code, segment_codes
from .dicom import check_dicom_seg_source, series_label
from .preview import label_colors
from .scan import first_line

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # (retired) Detached Study Management, as references use


def _frame(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Origin, row direction (along a row: columns increase), column direction and (column, row) spacing."""
    orient = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    spacing = np.asarray([float(v) for v in ds.PixelSpacing])  # (between rows, between columns)
    return (np.asarray([float(v) for v in ds.ImagePositionPatient]), orient[:3], orient[3:],
            np.array([spacing[1], spacing[0]]))


def slice_contours(mask: np.ndarray, tolerance: float = 0.05) -> list[np.ndarray]:
    """Closed contours (each (N, 2) in voxel (x, y) = (column, row) coordinates, last point not repeated) of a
    2D boolean mask indexed (x, y)."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(np.float32), 1)
    out = []
    for c in find_contours(padded, 0.5):
        c = approximate_polygon(c, tolerance) - 1.0  # remove the padding offset
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) >= 3:
            out.append(c)
    return out


def _ds_values(points: np.ndarray) -> list[str]:
    """Decimal strings (DS, at most 16 characters) in mm with micrometre precision."""
    return [f"{v:.3f}" for v in points.ravel()]


def rtstruct_dataset(labels: np.ndarray, datasets: Sequence, names: dict[str, int], software_version: str,
                     codes: dict | None = None):
    """A pydicom RT Structure Set for a label map (X, Y, Z) on the grid of the series ``datasets`` (in Z order,
    X along the columns, Y along the rows, as the DICOM reader gives them)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    check_dicom_seg_source(datasets, "RTSTRUCT")
    src = series_label(datasets)
    labels = np.asarray(labels)
    first = datasets[0]
    if labels.shape != (int(first.Columns), int(first.Rows), len(datasets)):
        raise MedsegError(f"{src}: label map shape {labels.shape} does not match the series' "
                          f"{int(first.Columns)} columns x {int(first.Rows)} rows x {len(datasets)} slices")
    fg = [(name, int(value)) for name, value in names.items() if value != 0]
    coded = segment_codes([n for n, _ in fg], codes)
    colors = label_colors(names)
    now = datetime.datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: any label name, any patient name
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for attr in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, attr, first.get(attr, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 901
    ds.SeriesDescription, ds.OperatorsName = "medseg3d structures", ""
    ds.Manufacturer, ds.ManufacturerModelName = "medseg3d", "medseg3d"
    ds.SoftwareVersions, ds.DeviceSerialNumber = software_version, "0"
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = "medseg3d"
    ds.StructureSetName = "medseg3d"
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    def image_ref(image) -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
        return ref

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = DicomSequence([image_ref(im) for im in datasets])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID, study_ref.ReferencedSOPInstanceUID = STUDY_COMPONENT_SOP_CLASS, \
        first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_ref])

    frames = [_frame(im) for im in datasets]
    # the bounding box of each label, from one pass over the map, so each ROI only looks at its own voxels
    boxes = ndimage.find_objects(labels.astype(np.int32)) if labels.size and labels.min() >= 0 else None
    rois, contours, observations = [], [], []
    for number, (name, value) in enumerate(fg, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, first.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "AUTOMATIC"
        rois.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [round(c * 255) for c in colors[name]]
        per_slice = []
        if boxes is None:  # a map with negative values: look at the whole grid
            box = tuple(slice(0, n) for n in labels.shape)
        else:
            box = boxes[value - 1] if 0 < value <= len(boxes) else None  # None: the label is absent
        mask3d = labels[box] == value if box is not None else np.zeros((0, 0, 0), bool)
        offset = np.array([box[0].start, box[1].start]) if box is not None else np.zeros(2)
        for kk in np.flatnonzero(mask3d.any(axis=(0, 1))):
            k = kk + box[2].start
            origin, row_dir, col_dir, step = frames[k]
            for c in slice_contours(mask3d[:, :, kk]):
                c = c + offset
                points = origin + np.outer(c[:, 0] * step[0], row_dir) + np.outer(c[:, 1] * step[1], col_dir)
                contour = Dataset()
                contour.ContourImageSequence = DicomSequence([image_ref(datasets[k])])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourNumber = len(per_slice) + 1
                contour.ContourData = _ds_values(points)
                per_slice.append(contour)
        if per_slice:
            item.ContourSequence = DicomSequence(per_slice)
        contours.append(item)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType = "ORGAN" if coded[name].category == ANATOMICAL_STRUCTURE else ""
        obs.ROIInterpreter = ""
        code = pydicom_code(coded[name].type)
        code_item = Dataset()
        code_item.CodeValue, code_item.CodingSchemeDesignator, code_item.CodeMeaning = \
            code.value, code.scheme_designator, code.meaning
        obs.RTROIIdentificationCodeSequence = DicomSequence([code_item])
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def rtstruct_writer(labels: np.ndarray, datasets: Sequence, names: dict[str, int], software_version: str,
                    codes: dict | None = None) -> Callable[[str], None]:
    """``write(path)`` of the RT Structure Set (see :func:`rtstruct_dataset`); errors are one MedsegError."""
    import pydicom

    src = series_label(datasets)
    try:
        ds = rtstruct_dataset(labels, datasets, names, software_version, codes)
    except MedsegError:
        raise
    except Exception as e:  # pydicom value errors, skimage errors
        raise MedsegError(f"{src}: cannot build an RTSTRUCT for this series ({type(e).__name__}: "
                          f"{first_line(e)})") from None

    def write(path: str) -> None:
        try:
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
        except OSError:
            raise
        except Exception as e:  # pydicom encoding errors
            raise MedsegError(f"{src}: cannot write its RTSTRUCT ({type(e).__name__}: {first_line(e)})") from None
    return write


def rtstruct_masks(rtstruct, datasets: Sequence) -> dict[str, np.ndarray]:
    """The ROIs of an RT Structure Set (a pydicom dataset or a path) as boolean masks (X, Y, Z) on the grid of
    the series ``datasets`` (in Z order): a voxel is inside when its centre is inside an odd number of the
    slice's contours (holes are inner contours)."""
    import pydicom
    from skimage.draw import polygon

    ds = pydicom.dcmread(rtstruct) if not isinstance(rtstruct, pydicom.Dataset) else rtstruct
    by_uid = {str(im.SOPInstanceUID): k for k, im in enumerate(datasets)}
    shape = (int(datasets[0].Columns), int(datasets[0].Rows), len(datasets))
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for item in ds.ROIContourSequence:
        mask = np.zeros(shape, dtype=bool)
        for contour in item.get("ContourSequence", []):
            k = by_uid[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            origin, row_dir, col_dir, step = _frame(datasets[k])
            pts = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3) - origin
            x, y = pts @ row_dir / step[0], pts @ col_dir / step[1]
            rr, cc = polygon(x, y, shape=shape[:2])
            mask[rr, cc, k] ^= True
        out[names[int(item.ReferencedROINumber)]] = mask
    return out
