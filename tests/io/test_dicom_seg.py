"""DICOM-SEG output: SNOMED CT codes and colours per segment; the source check that runs before inference
refuses what cannot be referenced and repairs blank UIDs with a warning (never touching the files); any highdicom
error is one MedsegError sentence."""

import copy
import warnings

import numpy as np
import pydicom
import pytest
from helpers import make_affine, phantom

from medseg3d.errors import MedsegError
from medseg3d.io.dicom import check_dicom_seg_source, dicom_seg, write_dicom_series
from medseg3d.io.preview import label_colors
from medseg3d.io.readers import read_scan
from medseg3d.io.writers import check_format

SHAPE = (30, 26, 12)
BRATS = {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}


def series(tmp_path, name="series", modality="MR", blank=(), delete=()):
    files = write_dicom_series(phantom(SHAPE), make_affine("LAS", (1.0, 1.3, 2.0), 17.0), tmp_path / name,
                               modality=modality)
    for f in files:
        if blank or delete:
            ds = pydicom.dcmread(f)
            for attr in blank:
                setattr(ds, attr, "")
            for attr in delete:
                delattr(ds, attr)
            ds.save_as(f)
    return tmp_path / name


def brats_labels(scan):
    data = scan.data[0]
    lab = np.zeros(scan.shape, np.uint8)
    lab[data > 100] = 2
    lab[data > 150] = 4
    lab[data > 190] = 1
    return lab


def test_segments_carry_snomed_codes_and_preview_colours(tmp_path):
    scan = read_scan(series(tmp_path))
    seg = dicom_seg(brats_labels(scan), scan.dicom, BRATS, "0.1")
    got = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert list(got) == ["necrotic", "edema", "enhancing"]
    types = {n: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for n, s in got.items()}
    assert types == {"necrotic": "6574001", "edema": "79654002", "enhancing": "108369006"}
    assert {s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in got.values()} == {"49755003"}
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator for s in got.values()} == {"SCT"}
    # the preview's colours, as CIELab (highdicom's conversion of the same RGB)
    import highdicom as hd

    for name, s in got.items():
        rgb = [round(c * 255) for c in label_colors(BRATS)[name]]
        assert list(s.RecommendedDisplayCIELabValue) == list(hd.color.CIELabColor.from_rgb(*rgb).value)

    seg = dicom_seg(brats_labels(scan), scan.dicom, {"background": 0, "object": 1, "liver": 2}, "0.1",
                    codes={"object": {"category": "SCT:49755003:Morphologically Abnormal Structure",
                                      "type": "SCT:4147007:Mass"}})
    (obj, liver) = seg.SegmentSequence
    assert obj.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"


def test_unknown_names_are_tissue(tmp_path):
    scan = read_scan(series(tmp_path))
    seg = dicom_seg(brats_labels(scan), scan.dicom, {"background": 0, "object": 2}, "0.1")
    (s,) = seg.SegmentSequence
    assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"


def test_blank_uids_are_repaired_before_inference_with_a_warning(tmp_path):
    folder = series(tmp_path, modality="CT", blank=("StudyInstanceUID", "SeriesInstanceUID"),
                    delete=("FrameOfReferenceUID",))
    on_disk = {f.name: f.read_bytes() for f in folder.iterdir()}
    scan = read_scan(folder)
    messages = check_format("dicom-seg", scan)
    assert len(messages) == 1
    assert str(folder) in messages[0] and "StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID" in messages[0]
    study = scan.dicom[0].StudyInstanceUID
    assert pydicom.uid.UID(study).is_valid and len({d.StudyInstanceUID for d in scan.dicom}) == 1
    assert check_dicom_seg_source(scan.dicom) == []  # repaired: nothing left to say
    assert read_scan(folder).dicom[0].get("StudyInstanceUID") == ""  # only the in-memory datasets changed
    again = read_scan(folder)
    check_dicom_seg_source(again.dicom)
    assert again.dicom[0].StudyInstanceUID == study  # derived from the SOPInstanceUIDs: same on every run

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already checked: building the SEG warns no more
        seg = dicom_seg(brats_labels(scan), scan.dicom, BRATS, "0.1")
    assert seg.StudyInstanceUID == study
    assert seg.FrameOfReferenceUID == scan.dicom[0].FrameOfReferenceUID != ""
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == scan.dicom[0].SeriesInstanceUID != ""
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == on_disk

    # a caller that skipped the check still gets a valid SEG, and the warning
    other = read_scan(folder)
    with pytest.warns(UserWarning, match="StudyInstanceUID"):
        seg = dicom_seg(brats_labels(other), other.dicom, BRATS, "0.1")
    assert seg.StudyInstanceUID == study


def test_sources_that_cannot_be_referenced_are_refused_in_one_sentence(tmp_path):
    scan = read_scan(series(tmp_path))
    folder = str(tmp_path / "series")

    def refused(mutate, text):
        datasets = [copy.deepcopy(d) for d in scan.dicom]
        mutate(datasets)
        with pytest.raises(MedsegError) as info:
            check_dicom_seg_source(datasets)
        message = str(info.value)
        assert message.startswith(folder) and text in message and "\n" not in message, message

    refused(lambda ds: setattr(ds[3], "SOPInstanceUID", ""), "1 of 12 images have no valid SOPInstanceUID")
    refused(lambda ds: setattr(ds[3], "SOPInstanceUID", ds[2].SOPInstanceUID), "share another image's SOPInstanceUID")
    refused(lambda ds: delattr(ds[0], "ImagePositionPatient"), "without ImagePositionPatient")
    refused(lambda ds: setattr(ds[0], "StudyInstanceUID", "1.2.3.4"), "2 different StudyInstanceUIDs")
    with pytest.raises(MedsegError, match="no DICOM images"):
        check_dicom_seg_source([])


@pytest.mark.parametrize("mutate,kind", [
    (lambda ds: [setattr(d, "SOPClassUID", "1.2.3") for d in ds], "KeyError"),  # highdicom: unknown SOP class
    (lambda ds: [setattr(d, "PatientName", ["a", "b"]) for d in ds], "TypeError"),
    (lambda ds: setattr(ds[1], "Rows", 99), "ValueError"),
])
def test_any_highdicom_error_is_one_medseg_error(tmp_path, mutate, kind):
    scan = read_scan(series(tmp_path))
    datasets = [copy.deepcopy(d) for d in scan.dicom]
    mutate(datasets)
    with pytest.raises(MedsegError) as info:
        dicom_seg(brats_labels(scan), datasets, BRATS, "0.1")
    message = str(info.value)
    assert message.startswith(str(tmp_path / "series")) and f"({kind}: " in message and "\n" not in message


def test_label_map_must_match_the_series(tmp_path):
    scan = read_scan(series(tmp_path))
    with pytest.raises(MedsegError, match=r"label map shape \(3, 3, 3\) does not match the series' 30 columns"):
        dicom_seg(np.zeros((3, 3, 3), np.uint8), scan.dicom, BRATS, "0.1")


def test_any_label_name_is_written_as_it_is(tmp_path):
    from medseg3d.io.scan import atomic_write
    from medseg3d.io.writers import label_writer

    scan = read_scan(series(tmp_path))
    names = {"background": 0, "œdème péritumoral 水肿": 2}
    for fmt in ("dicom-seg", "rtstruct"):
        path = atomic_write(tmp_path / f"{fmt}.dcm", label_writer(brats_labels(scan), scan, fmt, names, "0.1"))
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        got = ds.SegmentSequence[0].SegmentLabel if fmt == "dicom-seg" else ds.StructureSetROISequence[0].ROIName
        assert got == "œdème péritumoral 水肿"
        assert ds.PatientName == scan.dicom[0].PatientName
