"""The table of output formats (suffixes, DICOM needs, map and mask formats, help), every label format written
from a DICOM series and read back by its own library, and the per-label binary masks (TotalSegmentator's
layout) in the scan's geometry."""

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import make_affine, phantom

from medseg3d.errors import MedsegError
from medseg3d.io.dicom import write_dicom_series
from medseg3d.io.readers import read_scan
from medseg3d.io.scan import atomic_write_all
from medseg3d.io.writers import (FORMATS, OUTPUT_FORMATS, check_format, format_for_path, format_help, label_writer,
                                 map_format, mask_filename, mask_paths, mask_writers, write_labels)

SHAPE = (30, 26, 12)
NAMES = {"background": 0, "liver": 1, "liver tumour": 2, "spleen": 3}


def labels_of(scan):
    lab = np.zeros(scan.shape, np.uint8)
    lab[scan.data[0] > 120] = 1
    lab[scan.data[0] > 170] = 2
    return lab


def nifti_scan(tmp_path):
    affine = make_affine("LAS", (1.0, 1.3, 2.0), 17.0)
    img = nib.Nifti1Image(phantom(SHAPE), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, tmp_path / "scan.nii.gz")
    return read_scan(tmp_path / "scan.nii.gz")


def test_the_format_table():
    assert list(OUTPUT_FORMATS) == ["nifti", "nrrd", "mha", "seg.nrrd", "dicom-seg", "rtstruct"]
    assert FORMATS == {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "seg.nrrd": ".seg.nrrd",
                       "dicom-seg": ".dcm", "rtstruct": ".dcm"}
    assert [n for n, f in OUTPUT_FORMATS.items() if f.needs_dicom] == ["dicom-seg", "rtstruct"]
    assert {n: map_format(n) for n in OUTPUT_FORMATS} == {"nifti": "nifti", "nrrd": "nrrd", "mha": "mha",
                                                          "seg.nrrd": "nrrd", "dicom-seg": "nifti",
                                                          "rtstruct": "nifti"}
    text = format_help()
    assert all(f"{n}:" in text for n in OUTPUT_FORMATS) and "DICOM series input only" in text
    with pytest.raises(MedsegError, match="unknown output format 'png'; use one of nifti, nrrd, mha, seg.nrrd, "
                                          "dicom-seg, rtstruct"):
        map_format("png")


def test_dicom_formats_need_a_dicom_series_in_one_sentence(tmp_path):
    scan = nifti_scan(tmp_path)
    for fmt, title in [("dicom-seg", "DICOM-SEG"), ("rtstruct", "RTSTRUCT")]:
        with pytest.raises(MedsegError) as info:
            check_format(fmt, scan)
        assert str(info.value) == (f"{tmp_path / 'scan.nii.gz'}: {title} output needs a DICOM series as input; "
                                   "use --format nifti, nrrd, mha, seg.nrrd")
    assert all(check_format(f, scan) == [] for f in ("nifti", "nrrd", "mha", "seg.nrrd"))


def test_every_format_from_a_dicom_series_reads_back(tmp_path):
    write_dicom_series(phantom(SHAPE), make_affine("LAS", (1.0, 1.3, 2.0), 17.0), tmp_path / "series")
    scan = read_scan(tmp_path / "series")
    lab = labels_of(scan)
    ref = sitk.ReadImage(str(tmp_path / "series" / "slice_0000.dcm"))  # only for the in-plane geometry
    writers = {tmp_path / "out" / f"case_{n}{f.suffix}": label_writer(lab, scan, n, NAMES, "0.1")
               for n, f in OUTPUT_FORMATS.items()}
    written = atomic_write_all(writers)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    for path in written:
        name = path.name
        if name.endswith((".nii.gz", ".mha")) or name.endswith("_nrrd.nrrd"):
            img = sitk.ReadImage(str(path))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), lab.transpose(2, 1, 0))
            np.testing.assert_allclose(img.GetOrigin(), scan.reference.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(img.GetSpacing()[:2], ref.GetSpacing()[:2], atol=1e-5)
        elif name.endswith(".seg.nrrd"):
            data, header = nrrd.read(str(path))
            np.testing.assert_array_equal(data, lab)
            assert header["Segment1_Name"] == "liver tumour"
        else:
            ds = pydicom.dcmread(path)
            assert ds.Modality == ("SEG" if "dicom-seg" in name else "RTSTRUCT")
            assert ds.StudyInstanceUID == scan.dicom[0].StudyInstanceUID


def test_write_labels_tells_the_format_from_the_suffix(tmp_path):
    scan = nifti_scan(tmp_path)
    lab = labels_of(scan)
    seg = write_labels(lab, scan, tmp_path / "a.seg.nrrd", NAMES)
    assert nrrd.read_header(str(seg))["Segment0_Name"] == "liver"  # not a plain NRRD
    plain = write_labels(lab, scan, tmp_path / "a.nrrd", NAMES)
    assert "Segment0_Name" not in nrrd.read_header(str(plain))
    assert [format_for_path(f"x{s}") for s in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".dcm")] == \
        ["nifti", "nifti", "nrrd", "seg.nrrd", "mha", "dicom-seg"]
    with pytest.raises(MedsegError, match="cannot tell the output format from the file name"):
        write_labels(lab, scan, tmp_path / "a.png", NAMES)
    with pytest.raises(MedsegError, match="DICOM-SEG output needs a DICOM series"):
        write_labels(lab, scan, tmp_path / "a.dcm", NAMES)
    assert not list(tmp_path.glob("a.png*")) and not list(tmp_path.glob("*.dcm"))


@pytest.mark.parametrize("fmt,suffix", [("nifti", ".nii.gz"), ("mha", ".mha"), ("seg.nrrd", ".seg.nrrd")])
def test_one_mask_per_label_in_the_scans_geometry(tmp_path, fmt, suffix):
    scan = nifti_scan(tmp_path)
    lab = labels_of(scan)
    writers = mask_writers(lab, scan, NAMES, tmp_path / "out" / "scan", fmt)
    assert list(writers) == list(mask_paths(NAMES, tmp_path / "out" / "scan", fmt).values())  # known beforehand
    assert sorted(p.name for p in writers) == sorted(f"{s}{suffix}" for s in ("liver", "liver_tumour", "spleen"))
    atomic_write_all(writers)
    for path in writers:
        name = {"liver": "liver", "liver_tumour": "liver tumour", "spleen": "spleen"}[path.name[: -len(suffix)]]
        expected = (lab == NAMES[name]).astype(np.uint8)
        if fmt == "seg.nrrd":
            data, header = nrrd.read(str(path))
            assert header["Segment0_Name"] == name and header["Segment0_LabelValue"] == "1"
            assert "Segment1_ID" not in header
        else:
            img = sitk.ReadImage(str(path))
            data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
            assert img.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_array_equal(data, expected)
        back = read_scan(path)
        np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)
    assert not (lab == 3).any()  # the absent label has an empty mask, as TotalSegmentator writes it


def test_dicom_formats_give_nifti_masks_and_names_must_stay_distinct(tmp_path):
    write_dicom_series(phantom(SHAPE), make_affine("LPS", (1.0, 1.0, 2.0)), tmp_path / "series")
    scan = read_scan(tmp_path / "series")
    writers = mask_writers(labels_of(scan), scan, NAMES, tmp_path / "masks", "rtstruct")
    assert {p.name for p in writers} == {"liver.nii.gz", "liver_tumour.nii.gz", "spleen.nii.gz"}
    assert mask_filename("Kidney (left) / cyst") == "Kidney_left_cyst"
    with pytest.raises(MedsegError, match="labels 'liver tumour' and 'liver_tumour' would both be written as "
                                          "liver_tumour.nii.gz"):
        mask_paths({"background": 0, "liver tumour": 1, "liver_tumour": 2}, tmp_path / "masks", "nifti")
