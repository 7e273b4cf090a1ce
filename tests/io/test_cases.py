"""Inputs -> cases: a plain folder of image files (MSD imagesTs/: one file per case, no _0000 suffix) is one
case per file; nnU-Net, BraTS and DICOM folders keep their meaning; an empty folder is one clear sentence."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg3d.errors import MedsegError
from medseg3d.io.cases import collect_cases

BRATS = ["T1", "T1ce", "T2", "FLAIR"]


def nifti(path, shape=(6, 6, 6)):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    return path


def test_plain_folder_is_one_case_per_file(tmp_path):
    ts = tmp_path / "imagesTs"
    ts.mkdir()
    for name in ("BRATS_485", "BRATS_486"):
        nifti(ts / f"{name}.nii.gz", (6, 6, 6, 4))  # MSD: the four channels in one 4D file
    (ts / ".DS_Store").write_text("x")
    (ts / "README.txt").write_text("test images")
    cases = collect_cases([ts], BRATS)
    assert [(c.name, [p.name for p in c.inputs]) for c in cases] == [("BRATS_485", ["BRATS_485.nii.gz"]),
                                                                      ("BRATS_486", ["BRATS_486.nii.gz"])]


def test_plain_folder_of_mixed_formats(tmp_path):
    nifti(tmp_path / "a.nii.gz")
    nifti(tmp_path / "b.nii")
    for name in ("c.nrrd", "d.mha"):
        sitk.WriteImage(sitk.Image(6, 6, 6, sitk.sitkFloat32), str(tmp_path / name))
    assert [c.name for c in collect_cases([tmp_path], ["CT"])] == ["a", "b", "c", "d"]


def test_plain_folder_with_channel_named_files_groups_them(tmp_path):
    for ch in ("flair", "t2"):
        nifti(tmp_path / f"case1_{ch}.nii.gz")
    (case,) = collect_cases([tmp_path], ["T2", "FLAIR"])
    assert case.name == "case1" and [p.name for p in case.inputs] == ["case1_t2.nii.gz", "case1_flair.nii.gz"]


def test_nnunet_folder_still_groups_by_suffix(tmp_path):
    for c in range(2):
        nifti(tmp_path / f"la_003_{c:04d}.nii.gz")
    (case,) = collect_cases([tmp_path], ["T2", "ADC"])
    assert case.name == "la_003" and len(case.inputs) == 2


def test_empty_and_unusable_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedsegError) as e:
        collect_cases([empty], ["CT"])
    assert str(e.value) == (f"{empty}: the folder is empty; give image files, a folder of them, a DICOM series "
                            "folder, an nnU-Net folder or BraTS case folders")
    (empty / ".hidden").write_text("x")
    with pytest.raises(MedsegError, match="the folder is empty"):
        collect_cases([empty], ["CT"])
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    with pytest.raises(MedsegError, match=r"junk: not a DICOM series, an nnU-Net folder \(CASE_0000.nii.gz ...\), a "
                                          r"folder of image files \(.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd\) or BraTS"):
        collect_cases([junk], ["CT"])
    with pytest.raises(MedsegError, match="^no input given"):
        collect_cases([], ["CT"])
    with pytest.raises(MedsegError, match="missing.nii.gz: file not found"):
        collect_cases([tmp_path / "missing.nii.gz"], ["CT"])


def test_case_names_from_a_plain_folder_and_a_file_must_not_collide(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    nifti(folder / "a.nii.gz")
    other = tmp_path / "other"
    other.mkdir()
    nifti(other / "a.nii.gz")
    with pytest.raises(MedsegError, match="case name 'a' is also the name of"):
        collect_cases([folder, other / "a.nii.gz"], ["CT"])
