"""RTSTRUCT output read back: with pydicom (structure, references, planar contours) and with SimpleITK's reading
of the source series' geometry (an independent path from the writer's), the masks filled from the contours match
the labels on an oblique, anisotropic series (Dice > 0.95, holes kept); with rt-utils when it is installed."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import make_affine
from skimage.draw import polygon

from medseg3d.errors import MedsegError
from medseg3d.io.dicom import write_dicom_series
from medseg3d.io.preview import label_colors
from medseg3d.io.readers import read_scan
from medseg3d.io.rtstruct import RT_STRUCTURE_SET_STORAGE, rtstruct_masks
from medseg3d.io.scan import atomic_write
from medseg3d.io.writers import check_format, label_writer

SHAPE = (40, 34, 14)
NAMES = {"background": 0, "liver": 1, "ring lesion": 2, "spleen": 3}  # spleen: absent from the map


def ring_phantom(shape=SHAPE):
    """A smooth ellipsoid (1) and a thick ring with a hole in every slice it crosses (2)."""
    x, y, z = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    lab = np.zeros(shape, np.uint8)
    lab[((x - 13) / 9) ** 2 + ((y - 15) / 11) ** 2 + ((z - 7) / 5.5) ** 2 < 1] = 1
    r = np.hypot(x - 29, y - 17)
    lab[(r > 3.5) & (r < 8.5) & (abs(z - 7) < 4.5)] = 2
    return lab


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture()
def case(tmp_path):
    lab = ring_phantom()
    affine = make_affine("LPS", (0.8, 1.3, 2.5), 17.0)  # oblique, columns 0.8 mm apart, rows 1.3 mm
    write_dicom_series(200.0 * lab, affine, tmp_path / "series")
    scan = read_scan(tmp_path / "series")
    assert scan.shape == SHAPE
    labels = np.rint(scan.data[0] / 200.0).astype(np.uint8)  # the labels on the series' own grid and order
    assert {int(v) for v in np.unique(labels)} == {0, 1, 2}
    path = atomic_write(tmp_path / "out" / "series.dcm", label_writer(labels, scan, "rtstruct", NAMES, "0.1"))
    return scan, labels, path, tmp_path / "series"


def test_rtstruct_structure_and_references(case):
    scan, labels, path, folder = case
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RT_STRUCTURE_SET_STORAGE and ds.Modality == "RTSTRUCT"
    first = scan.dicom[0]
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == first.StudyInstanceUID
    ref_series = study.RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == first.SeriesInstanceUID
    sops = {d.SOPInstanceUID for d in map(pydicom.dcmread, folder.iterdir())}
    assert {c.ReferencedSOPInstanceUID for c in ref_series.ContourImageSequence} == sops

    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "ring lesion", "spleen"]
    assert [r.ROINumber for r in ds.StructureSetROISequence] == [1, 2, 3]
    colors = label_colors(NAMES)
    for item, name in zip(ds.ROIContourSequence, ["liver", "ring lesion", "spleen"]):
        assert list(item.ROIDisplayColor) == [round(c * 255) for c in colors[name]]
    assert "ContourSequence" not in ds.ROIContourSequence[2]  # empty ROI, listed by name
    codes = [o.RTROIIdentificationCodeSequence[0].CodeValue for o in ds.RTROIObservationsSequence]
    assert codes == ["10200004", "52988006", "78961009"]  # liver, lesion, spleen
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "", "ORGAN"]

    by_uid = {d.SOPInstanceUID: d for d in scan.dicom}
    for item in ds.ROIContourSequence[:2]:
        for c in item.ContourSequence:
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            assert len(pts) == c.NumberOfContourPoints >= 3
            image = by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
            normal = np.cross(*np.asarray(image.ImageOrientationPatient, float).reshape(2, 3))
            # every point lies in the plane of the slice it references
            np.testing.assert_allclose((pts - np.asarray(image.ImagePositionPatient, float)) @ normal, 0, atol=2e-3)


def test_masks_from_contours_match_the_labels(case):
    scan, labels, path, folder = case
    ds = pydicom.dcmread(path)
    # the series' geometry as SimpleITK reads it, independently of the writer's
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    for item, (name, value) in zip(ds.ROIContourSequence, [("liver", 1), ("ring lesion", 2)]):
        mask = np.zeros(SHAPE, bool)
        for c in item.ContourSequence:
            pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            idx = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in pts])
            k = int(round(idx[0, 2]))
            np.testing.assert_allclose(idx[:, 2], k, atol=1e-3)
            rr, cc = polygon(idx[:, 0], idx[:, 1], shape=SHAPE[:2])
            mask[rr, cc, k] ^= True  # even-odd: inner contours are holes
        assert dice(mask, labels == value) > 0.95, name
    # the ring's hole (its centre, voxel 29, 17) is a hole in the contours too
    assert labels[29 + 6, 17, 7] == 2 and labels[29, 17, 7] == 0 and not mask[29, 17, 7] and mask[29 + 6, 17, 7]
    masks = rtstruct_masks(path, scan.dicom)
    assert set(masks) == {"liver", "ring lesion", "spleen"} and not masks["spleen"].any()
    for name, value in [("liver", 1), ("ring lesion", 2)]:
        assert dice(masks[name], labels == value) > 0.95
    assert not masks["ring lesion"][29, 17, 7]


def test_rtstruct_needs_a_dicom_series(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    scan = read_scan(tmp_path / "scan.nii.gz")
    with pytest.raises(MedsegError, match=r"scan\.nii\.gz: RTSTRUCT output needs a DICOM series as input"):
        check_format("rtstruct", scan)


def test_rt_utils_reads_the_rois(tmp_path):
    """rt-utils (optional, needs OpenCV) reads names and masks. It assumes square pixels and returns masks as
    (rows, columns, slices), and rounds contour points to whole pixels before filling them, edges included, which
    moves boundaries by up to a pixel: the 5-pixel-thick ring agrees less than the liver."""
    rt_utils = pytest.importorskip("rt_utils")
    lab = ring_phantom((48, 48, 10))
    write_dicom_series(200.0 * lab, make_affine("LPS", (1.0, 1.0, 2.0)), tmp_path / "series")
    scan = read_scan(tmp_path / "series")
    labels = np.rint(scan.data[0] / 200.0).astype(np.uint8)
    path = atomic_write(tmp_path / "rt.dcm", label_writer(labels, scan, "rtstruct", NAMES, "0.1"))
    rt = rt_utils.RTStructBuilder.create_from(str(tmp_path / "series"), str(path))
    assert rt.get_roi_names() == ["liver", "ring lesion", "spleen"]
    for name, value, least in [("liver", 1, 0.9), ("ring lesion", 2, 0.85)]:
        mask = np.transpose(rt.get_roi_mask_by_name(name), (1, 0, 2))
        assert dice(mask, labels == value) > least, name
    assert not mask[29, 17, 5] and labels[29, 17, 5] == 0  # the ring's hole stays empty
