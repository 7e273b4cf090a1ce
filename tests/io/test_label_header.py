"""A label map written for a NIfTI input keeps the input's geometry (affine, qform/sform and their codes, units)
but none of the fields that describe the input's intensities: FSLeyes and MRIcroGL would window it with the
input's cal_min/cal_max (and show it black), and it says it is a label map (NIFTI_INTENT_LABEL, 1002)."""

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from helpers import make_affine, phantom

from medseg3d.io.nifti import NIFTI_INTENT_LABEL
from medseg3d.io.readers import read_scan
from medseg3d.io.writers import image_writer

SHAPE = (12, 10, 8)


def mri_like_input(path, affine, nifti2=False):
    """A scanner-like NIfTI: int16 with a scale factor, a description, an aux file, a display window,
    an intent of its own, separate qform and sform codes, mm + sec units and an extension."""
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls((phantom(SHAPE) * 10).astype(np.int16), affine)
    hdr = img.header
    hdr["descrip"] = b"T1 MPRAGE TE=2.3 TR=1900"
    hdr["aux_file"] = b"T1.lut"
    hdr["cal_min"], hdr["cal_max"] = 0.0, 3000.0
    hdr.set_intent("estimate", (), name="T1w")
    img.set_qform(affine, 1)
    img.set_sform(affine, 2)
    hdr.set_xyzt_units("mm", "sec")
    hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", b"acquired on scanner 3"))
    nib.save(img, path)
    back = nib.load(path)
    assert back.header["cal_max"] == 3000.0 and back.header.extensions  # the input really carries them
    return path


def labels_for(scan):
    return np.where(scan.data[0] > 600, 2, 0).astype(np.uint8)


def test_label_map_keeps_geometry_and_drops_intensity_fields(tmp_path):
    affine = make_affine("LAS", (0.9, 1.1, 2.5), 12.0)
    for nifti2 in (False, True):
        src = mri_like_input(tmp_path / f"t1_{nifti2}.nii.gz", affine, nifti2)
        scan = read_scan(src)
        labels = labels_for(scan)
        out = tmp_path / f"seg_{nifti2}.nii.gz"
        image_writer(labels, scan, "nifti")(str(out))
        got, ref = nib.load(out), nib.load(src)
        hdr = got.header
        assert got.shape == SHAPE and np.issubdtype(got.get_data_dtype(), np.integer)
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-5)
        for coded in ("get_qform", "get_sform"):
            m_got, c_got = getattr(hdr, coded)(coded=True)
            m_ref, c_ref = getattr(ref.header, coded)(coded=True)
            assert c_got == c_ref
            np.testing.assert_allclose(m_got, m_ref, atol=1e-5)
        assert hdr.get_xyzt_units() == ("mm", "sec")
        np.testing.assert_allclose(hdr.get_zooms(), ref.header.get_zooms()[:3])
        assert hdr["descrip"].item() == b"" and hdr["aux_file"].item() == b""
        assert hdr["cal_min"] == 0 and hdr["cal_max"] == 0
        assert int(hdr["intent_code"]) == NIFTI_INTENT_LABEL == 1002
        assert hdr.get_intent()[0] == "label" and hdr.get_intent()[2] == ""
        assert got.dataobj.slope == 1.0 and got.dataobj.inter == 0.0
        assert len(hdr.extensions) == 0
        np.testing.assert_array_equal(np.asarray(got.dataobj), labels)
        # the input is untouched
        assert nib.load(src).header["descrip"].item() == b"T1 MPRAGE TE=2.3 TR=1900"


def test_float_maps_are_not_marked_as_labels(tmp_path):
    src = mri_like_input(tmp_path / "t1.nii.gz", make_affine("RAS", (1, 1, 1)))
    scan = read_scan(src)
    image_writer(np.random.rand(*SHAPE).astype(np.float32), scan, "nifti")(str(tmp_path / "unc.nii.gz"))
    hdr = nib.load(tmp_path / "unc.nii.gz").header
    assert int(hdr["intent_code"]) == 0 and hdr["cal_max"] == 0 and hdr["descrip"].item() == b""


def test_label_map_for_a_non_nifti_input_is_a_label_map(tmp_path):
    src = tmp_path / "t1.mha"
    img = sitk.GetImageFromArray(phantom(SHAPE[::-1]) * 10)
    img.SetSpacing((0.9, 1.1, 2.5))
    sitk.WriteImage(img, str(src))
    scan = read_scan(src)
    image_writer(labels_for(scan), scan, "nifti")(str(tmp_path / "seg.nii.gz"))
    got = nib.load(tmp_path / "seg.nii.gz")
    assert int(got.header["intent_code"]) == NIFTI_INTENT_LABEL
    assert got.header.get_qform(coded=True)[1] == 1 and got.header.get_sform(coded=True)[1] == 1
    np.testing.assert_allclose(got.affine, scan.affine, atol=1e-5)
