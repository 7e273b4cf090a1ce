"""Every input format comes back in every output format in its own geometry (read back by nibabel,
SimpleITK and ITK), for LPS, RAS, RAI and an oblique input with anisotropic spacing; and the Python API
returns the kind it was given. The fixed Threshold model makes the expected labels known voxel by voxel."""

import itk
import matplotlib.figure
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import LEVEL, make_affine, phantom, segmenter

from medseg3d.io.writers import write_image

CASES = [("LPS", (1.0, 1.0, 3.0), 0.0), ("RAS", (0.9, 1.1, 2.5), 0.0), ("RAI", (1.2, 1.0, 3.0), 0.0),
         ("LAS", (1.0, 1.3, 2.0), 17.0)]
SHAPE = (30, 26, 12)


def write_input(tmp_path, codes, spacing, oblique, fmt):
    affine = make_affine(codes, spacing, oblique)
    img = nib.Nifti1Image(phantom(SHAPE), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    src = tmp_path / "scan.nii.gz"
    nib.save(img, src)
    if fmt != "nifti":
        other = tmp_path / f"scan.{fmt}"
        sitk.WriteImage(sitk.ReadImage(str(src)), str(other))
        src = other
    return src


def same_sitk_geometry(a: sitk.Image, b: sitk.Image):
    assert b.GetSize() == a.GetSize()
    np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-5)


def same_itk_geometry(a, b):
    assert tuple(b.GetLargestPossibleRegion().GetSize()) == tuple(a.GetLargestPossibleRegion().GetSize())
    np.testing.assert_allclose(np.asarray(b.GetSpacing()), np.asarray(a.GetSpacing()), atol=1e-5)
    np.testing.assert_allclose(np.asarray(b.GetOrigin()), np.asarray(a.GetOrigin()), atol=1e-4)
    np.testing.assert_allclose(itk.array_from_matrix(b.GetDirection()), itk.array_from_matrix(a.GetDirection()),
                               atol=1e-5)


@pytest.mark.parametrize("in_fmt", ["nifti", "nrrd", "mha"])
@pytest.mark.parametrize("codes,spacing,oblique", CASES, ids=[f"{c}{'-oblique' if o else ''}" for c, _, o in CASES])
def test_every_input_format_to_every_output_format(tmp_path, codes, spacing, oblique, in_fmt):
    src = write_input(tmp_path, codes, spacing, oblique, in_fmt)
    seg = segmenter(spacing=None)  # native grid: the labels are exact
    scan = seg.read(src)
    labels = seg.segment(scan).labels
    ref_sitk, ref_itk = sitk.ReadImage(str(src)), itk.imread(str(src))
    expected = np.where(sitk.GetArrayFromImage(ref_sitk) > LEVEL, 3, 0)  # (Z, Y, X)
    for out_fmt, ext in [("nifti", ".nii.gz"), ("nrrd", ".nrrd"), ("mha", ".mha")]:
        out = write_image(labels, scan, tmp_path / "out" / f"pred{ext}", out_fmt)
        got = sitk.ReadImage(str(out))
        same_sitk_geometry(ref_sitk, got)
        same_itk_geometry(ref_itk, itk.imread(str(out)))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got), expected)
        assert np.issubdtype(sitk.GetArrayViewFromImage(got).dtype, np.integer)
        if out_fmt == "nifti":
            back = nib.load(out)
            assert back.shape == SHAPE
            np.testing.assert_allclose(back.affine, make_affine(codes, spacing, oblique), atol=1e-4)
            if in_fmt == "nifti":
                assert back.header.get_qform(coded=True)[1] == 1 and back.header.get_sform(coded=True)[1] == 1


def test_api_returns_the_kind_it_was_given(tmp_path):
    affine = make_affine("LPS", (1.0, 1.2, 2.5))
    data = phantom(SHAPE)
    expected = np.where(data > LEVEL, 3, 0)
    seg = segmenter(spacing=None)

    out = seg.predict((data, affine))
    assert isinstance(out, np.ndarray) and out.shape == SHAPE
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(seg.predict(data[None], affine=affine), expected)

    simg = sitk.ReadImage(str(write_input(tmp_path, "LPS", (1.0, 1.2, 2.5), 0.0, "mha")))
    out = seg.predict(simg)
    assert isinstance(out, sitk.Image)
    same_sitk_geometry(simg, out)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), np.where(sitk.GetArrayFromImage(simg) > LEVEL, 3, 0))

    assert isinstance(seg.predict(tmp_path / "scan.mha"), sitk.Image)
    nii = seg.predict(tmp_path / "scan.nii.gz")
    assert isinstance(nii, nib.Nifti1Image)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), expected)

    fig = seg.show((data, affine))
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
    assert isinstance(seg.show(nii, labels=nii), matplotlib.figure.Figure)


def test_per_channel_files_must_share_one_grid(tmp_path):
    from medseg3d.errors import MedsegError
    from medseg3d.io.readers import read_scan

    a, b = tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"
    nib.save(nib.Nifti1Image(phantom(SHAPE), make_affine("RAS", (1, 1, 1))), a)
    nib.save(nib.Nifti1Image(phantom(SHAPE), make_affine("LPS", (1, 1, 1))), b)
    with pytest.raises(MedsegError, match="c_0001.nii.gz: its geometry"):
        read_scan([a, b])
    scan = read_scan([a, a])
    assert scan.data.shape == (2,) + SHAPE


@pytest.mark.parametrize("scheme", ["2018", "2023"])
def test_brats_case_folders_give_the_models_channel_order(tmp_path, scheme):
    """BraTS 2018-2021 (_t1 _t1ce _t2 _flair) and 2023 (-t1n -t1c -t2w -t2f) case folders are read in the
    checkpoint's channel order, also when its channels carry MSD Task01 names in MSD's order."""
    from medseg3d.data.datasets import BRATS_NAMING
    from medseg3d.io.cases import collect_cases

    suffixes = BRATS_NAMING[scheme][0]
    case = tmp_path / "BraTS-GLI-00001-000"
    case.mkdir()
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    for s in (*suffixes, BRATS_NAMING[scheme][1]):
        nib.save(img, case / f"{case.name}{s}.nii.gz")
    (brats,) = collect_cases([tmp_path], ["T1", "T1ce", "T2", "FLAIR"])
    assert [p.name for p in brats.inputs] == [f"{case.name}{s}.nii.gz" for s in suffixes]
    (msd,) = collect_cases([tmp_path], ["FLAIR", "T1w", "t1gd", "T2w"])
    assert [p.name for p in msd.inputs] == [f"{case.name}{suffixes[i]}.nii.gz" for i in (3, 0, 1, 2)]
