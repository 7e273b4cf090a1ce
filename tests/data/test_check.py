"""``medseg3d check``: each problem written into a real tiny dataset is found, with its case, file and
sentence; a clean dataset (and the shipped data_samples/) has none; LoadCased says the same sentences."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg3d.config import load_config
from medseg3d.data import check as check_mod
from medseg3d.data.check import (Problem, check_config, check_dataset, check_folder, format_problems,
                                 label_values_message, raise_for_errors, read_header)
from medseg3d.data.datasets import load_dataset
from medseg3d.data.synthetic import write_brats_folders, write_msd_dataset, write_nnunet_dataset
from medseg3d.data.transforms import LoadCased
from medseg3d.errors import MedsegError

REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 16, 12)
LABELS = [0, 1, 2, 4]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    write_nnunet_dataset(root / "nnunet", num_training=4, num_test=1, shape=SHAPE, seed=3)
    write_msd_dataset(root / "msd", num_training=3, num_test=1, shape=SHAPE, seed=3)
    return root


@pytest.fixture
def nnunet(pristine, tmp_path):
    return Path(shutil.copytree(pristine / "nnunet", tmp_path / "nnunet"))


@pytest.fixture
def msd(pristine, tmp_path):
    return Path(shutil.copytree(pristine / "msd", tmp_path / "msd"))


def problems_of(root, **kw):
    return check_dataset(load_dataset(root, strict=False), **kw)


def only(problems, severity=None):
    found = [p for p in problems if severity is None or p.severity == severity]
    assert len(found) == 1, format_problems(problems)
    return found[0]


def resave(path, data=None, affine=None, dtype=None):
    """Rewrite a NIfTI file in place with new voxels and/or affine (the header's other fields kept)."""
    img = nib.load(path)
    data = np.asarray(img.dataobj) if data is None else data
    out = nib.Nifti1Image(data, img.affine if affine is None else affine, img.header)
    if dtype is not None:
        out.set_data_dtype(dtype)
    nib.save(out, path)


# ------------------------------------------------------------------------------------------ clean datasets
def test_clean_datasets_have_no_problems(nnunet, msd, tmp_path):
    write_brats_folders(tmp_path / "brats", num_cases=3, shape=SHAPE)
    for root, n in ((nnunet, 5), (msd, 4), (tmp_path / "brats", 3)):
        problems, cases = check_folder(root)
        assert problems == [] and cases == n, format_problems(problems)
        assert format_problems(problems, cases) == f"no problems found in {n} case(s)"


def test_shipped_samples_are_clean():
    for root in (REPO / "data_samples", REPO / "data_samples" / "domain_b"):
        problems, n = check_folder(root)
        assert problems == [] and n > 0, format_problems(problems)


def test_only_labels_and_float_images_are_read(nnunet, monkeypatch):
    """Geometry comes from headers: with int16 images only the 4 labels' voxels are read; a float32 image is
    read (for NaN), the int16 ones still are not."""
    read = []
    real = check_mod.read_voxels
    monkeypatch.setattr(check_mod, "read_voxels", lambda p: read.append(Path(p).name) or real(p))
    assert problems_of(nnunet) == []
    assert sorted(read) == [f"BRATS_00{i}.nii.gz" for i in range(1, 5)]
    f = nnunet / "imagesTr" / "BRATS_002_0001.nii.gz"
    resave(f, np.asarray(nib.load(f).dataobj).astype(np.float32), dtype=np.float32)
    read.clear()
    assert problems_of(nnunet) == []
    assert sorted(read) == sorted(["BRATS_002_0001.nii.gz"] + [f"BRATS_00{i}.nii.gz" for i in range(1, 5)])


def test_with_a_cache_folder_unchanged_files_are_not_read_again(nnunet, tmp_path, monkeypatch):
    """Before every training: the second check reads headers only; a label edited since is read again."""
    import time

    from medseg3d.data import digest

    time.sleep(digest.RACY_NS / 1e9 + 0.05)  # (files changed within the last second are always read)
    read = []
    real = check_mod.read_voxels
    monkeypatch.setattr(check_mod, "read_voxels", lambda p: read.append(Path(p).name) or real(p))
    cache = tmp_path / "cache"
    assert problems_of(nnunet, cache_dir=cache) == [] and len(read) == 4
    read.clear()
    assert problems_of(nnunet, cache_dir=cache) == [] and read == []
    lab = nnunet / "labelsTr" / "BRATS_002.nii.gz"
    data = np.asarray(nib.load(lab).dataobj).copy()
    data[data == 4] = 3
    resave(lab, data)
    p = only(problems_of(nnunet, cache_dir=cache))
    assert read == ["BRATS_002.nii.gz"] and p.message.startswith("label value(s) [3]")


# ------------------------------------------------------------------------------------------ geometry
def test_label_shifted_14_mm_is_an_error_saying_by_how_much(nnunet):
    lab = nnunet / "labelsTr" / "BRATS_002.nii.gz"
    aff = nib.load(lab).affine.copy()
    aff[:3, 3] += [14.0, 0.0, 0.0]
    resave(lab, affine=aff)
    p = only(problems_of(nnunet))
    image = str(nnunet / "imagesTr" / "BRATS_002_0000.nii.gz")
    assert (p.severity, p.case, p.file) == ("error", "BRATS_002", str(lab))
    assert p.message == (f"label geometry (affine) differs from its image's ({image}): the origin is 14 mm away; "
                         f"fix the label's header or resample it onto the image's grid")


def test_label_on_another_grid(nnunet):
    lab = nnunet / "labelsTr" / "BRATS_003.nii.gz"
    resave(lab, np.asarray(nib.load(lab).dataobj)[:, :, :8])
    p = only(problems_of(nnunet))
    assert (p.severity, p.case, p.file) == ("error", "BRATS_003", str(lab))
    assert p.message.startswith("label shape (16, 16, 8) differs from its image's (16, 16, 12) (")


def test_label_spacing_and_flip_are_described(nnunet):
    lab = nnunet / "labelsTr" / "BRATS_001.nii.gz"
    aff = nib.load(lab).affine.copy()
    aff[:3, 2] *= 1.5  # thicker slices
    aff[:3, 0] *= -1  # and a flipped first axis
    resave(lab, affine=aff)
    msg = only(problems_of(nnunet)).message
    assert "the spacing is 12 x 12 x 24 mm against 12 x 12 x 16 mm" in msg
    assert "the voxel axes differ by up to 180 degrees" in msg


def test_channel_files_on_different_grids(nnunet):
    f = nnunet / "imagesTr" / "BRATS_004_0002.nii.gz"
    aff = nib.load(f).affine.copy()
    aff[:3, 3] += [0.0, 3.0, 4.0]
    resave(f, affine=aff)
    p = only(problems_of(nnunet))
    assert (p.severity, p.case, p.file) == ("error", "BRATS_004", str(f))
    first = nnunet / "imagesTr" / "BRATS_004_0000.nii.gz"
    assert p.message == (f"geometry (affine) differs from the first channel's ({first}): the origin is 5 mm away; "
                         f"channels must share one grid, so resample them onto one")


def test_qform_disagreeing_with_sform_is_a_warning(nnunet):
    f = nnunet / "labelsTr" / "BRATS_001.nii.gz"
    img = nib.load(f)
    q = img.affine.copy()
    q[:3, 3] += [0.0, 0.0, 14.0]
    img.set_qform(q, code=1)
    nib.save(img, f)
    p = only(problems_of(nnunet))
    assert (p.severity, p.file) == ("warning", str(f))
    assert p.message.startswith("its qform and sform disagree (the origin is 14 mm away)")


# ------------------------------------------------------------------------------------------ label values
def test_label_value_outside_the_labels(nnunet):
    lab = nnunet / "labelsTr" / "BRATS_002.nii.gz"
    data = np.asarray(nib.load(lab).dataobj).copy()
    data[data == 4] = 3  # BraTS 2023 convention under the 2018 labels
    resave(lab, data)
    p = only(problems_of(nnunet))
    assert (p.severity, p.case, p.file) == ("error", "BRATS_002", str(lab))
    assert p.message == ("label value(s) [3] are not among the config's labels [0, 1, 2, 4] (set data.labels, or "
                         "data.brats_labels for BraTS: 2018 is 1/2/4, 2023 is 1/2/3)")
    # the config's labels are the ones checked: under BraTS 2023 every case with enhancing tumour has a 4
    errors = problems_of(nnunet, labels={"background": 0, "necrotic": 1, "edema": 2, "enhancing": 3})
    assert {p.case for p in errors} == {"BRATS_001", "BRATS_003", "BRATS_004"}
    assert all(p.message.startswith("label value(s) [4] are not among") for p in errors)


def test_fractional_label_is_an_error(nnunet):
    lab = nnunet / "labelsTr" / "BRATS_004.nii.gz"
    data = np.asarray(nib.load(lab).dataobj).astype(np.float32)
    data[0, 0, 0] = 0.5
    resave(lab, data, dtype=np.float32)
    p = only(problems_of(nnunet))
    assert (p.severity, p.file) == ("error", str(lab)) and p.message.startswith("a label map must hold integers")


def test_empty_label_is_a_warning(nnunet):
    lab = nnunet / "labelsTr" / "BRATS_003.nii.gz"
    resave(lab, np.zeros(SHAPE, dtype=np.uint8))
    p = only(problems_of(nnunet))
    assert (p.severity, p.case, p.file) == ("warning", "BRATS_003", str(lab))
    assert p.message.startswith("label is empty (background only)")


def test_region_with_an_unknown_label_value(nnunet):
    p = only(problems_of(nnunet, regions={"WT": [1, 2, 4], "TC": [1, 4], "ET": [3]}))
    assert (p.severity, p.case, p.file) == ("error", "", str(nnunet))
    assert p.message == ("region 'ET' uses label value(s) [3] that the labels [0, 1, 2, 4] do not have; fix "
                         "data.regions or data.labels")


# ------------------------------------------------------------------------------------------ images
def test_nan_voxels_are_an_error(nnunet):
    f = nnunet / "imagesTr" / "BRATS_001_0003.nii.gz"
    data = np.asarray(nib.load(f).dataobj).astype(np.float32)
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = np.inf
    resave(f, data, dtype=np.float32)
    p = only(problems_of(nnunet))
    assert (p.severity, p.case, p.file) == ("error", "BRATS_001", str(f))
    assert p.message == "image contains NaN or infinite values (2 voxel(s)); replace them (e.g. by 0) before training"


def test_channel_count(msd):
    meta = json.loads((msd / "dataset.json").read_text())
    meta["modality"] = {"0": "T1", "1": "T1ce", "2": "T2"}  # the 4D images hold 4
    (msd / "dataset.json").write_text(json.dumps(meta))
    problems = problems_of(msd)
    assert [(p.severity, p.case) for p in problems] == [("error", f"BRATS_00{i}") for i in range(1, 5)]
    assert problems[0].file == str(msd / "imagesTr" / "BRATS_001.nii.gz")
    assert problems[0].message == ("case 'BRATS_001' has 4 channel(s) but 3 are expected (one per channel name); "
                                   "add or remove channel files, or set data.channels")


def test_spacing_and_orientation_outliers_are_warnings(tmp_path):
    root = tmp_path / "d"
    write_nnunet_dataset(root, num_training=5, shape=SHAPE, seed=1,
                         spacing=[(1, 1, 1)] * 4 + [(1, 1, 4)], orientation=["RAS", "RAS", "RAS", "LPS", "RAS"])
    problems = problems_of(root)
    assert [(p.severity, p.case) for p in problems] == [("warning", "BRATS_004"), ("warning", "BRATS_005")]
    assert problems[0].message.startswith("orientation LPS differs from the RAS of 4 of the 5 cases")
    assert problems[1].message.startswith("spacing 1 x 1 x 4 mm (R x A x S) is more than 3 times off the dataset's "
                                          "median 1 x 1 x 1 mm along S")
    # mixed orientations without a clear majority are normal (preprocessing reorients): no warning
    write_nnunet_dataset(tmp_path / "mixed", num_training=4, shape=SHAPE, orientation=["RAS", "LPS", "RAS", "LPS"])
    assert problems_of(tmp_path / "mixed") == []


# ------------------------------------------------------------------------------------------ files and ids
def test_duplicate_ids_missing_files_and_paths_outside_the_root_all_reported(msd):
    meta = json.loads((msd / "dataset.json").read_text())
    (msd / "other").mkdir()
    shutil.copy(msd / "imagesTr" / "BRATS_001.nii.gz", msd / "other" / "BRATS_001.nii.gz")
    meta["training"] += [{"image": "./other/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"},
                         {"image": "./imagesTr/ghost.nii.gz", "label": "../" * 20 + "etc/passwd"}]
    (msd / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MedsegError, match="training entries 0 and 3 are both case 'BRATS_001'"):
        load_dataset(msd)  # strict: the first problem
    problems = problems_of(msd)
    assert [(p.severity, p.case, Path(p.file).name) for p in problems] == [
        ("error", "BRATS_001", "msd"), ("error", "ghost", "ghost.nii.gz"), ("error", "ghost", "passwd")]
    assert problems[0].message.startswith("case id 'BRATS_001' is used by 2 training cases (")
    assert problems[1].message == "image file not found (listed for training case 'ghost')"
    assert problems[2].file == "/etc/passwd"
    assert problems[2].message == (f"lies outside the dataset folder {msd}; list files inside it "
                                   f"(e.g. ./imagesTr/CASE.nii.gz)")


def test_nnunet_missing_label_and_stray_files(nnunet):
    (nnunet / "labelsTr" / "BRATS_002.nii.gz").rename(nnunet / "labelsTr" / "BRATS_099.nii.gz")
    shutil.copy(nnunet / "imagesTr" / "BRATS_001_0000.nii.gz", nnunet / "imagesTr" / "BRATS_001_0004.nii.gz")
    problems = problems_of(nnunet)
    assert [(p.severity, p.case, Path(p.file).name) for p in problems] == [
        ("error", "BRATS_002", "BRATS_002.nii.gz"), ("warning", "", "BRATS_001_0004.nii.gz"),
        ("warning", "", "BRATS_099.nii.gz")]
    assert problems[0].message == "label file not found (listed for training case 'BRATS_002')"
    assert problems[1].message == ("not a channel file of any case (cases are CASE_0000.nii.gz ... "
                                   "CASE_0003.nii.gz); it is ignored")
    assert problems[2].message == ("a label without images (no BRATS_099_0000.nii.gz in imagesTr); it is ignored")


def test_unreadable_file_is_an_error(nnunet):
    f = nnunet / "imagesTr" / "BRATS_003_0001.nii.gz"
    f.write_bytes(b"not an image")
    p = only(problems_of(nnunet))
    assert (p.severity, p.case, p.file) == ("error", "BRATS_003", str(f))
    assert p.message.startswith("not a readable NIfTI image")


def test_damaged_voxel_data_is_an_error_and_the_check_goes_on(nnunet):
    import gzip

    lab = nnunet / "labelsTr" / "BRATS_001.nii.gz"
    raw = gzip.decompress(lab.read_bytes())
    lab.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # the header reads, the voxels are cut short
    p = only(problems_of(nnunet))
    assert (p.severity, p.case, p.file) == ("error", "BRATS_001", str(lab))
    assert p.message.startswith("cannot read the voxel data (") and p.message.endswith(
        "; the file is damaged, so write it again")


def test_headers_of_mha_and_nrrd(nnunet, tmp_path):
    import SimpleITK as sitk

    src = nnunet / "imagesTr" / "BRATS_001_0000.nii.gz"
    ref = read_header(src)
    for suffix in (".mha", ".nrrd"):
        out = tmp_path / f"x{suffix}"
        sitk.WriteImage(sitk.ReadImage(str(src)), str(out))
        h = read_header(out)
        assert h.shape == ref.shape and h.channels == 1 and not h.floating
        np.testing.assert_allclose(h.affine, ref.affine, atol=1e-4)


# ------------------------------------------------------------------------------------------ output and config
def test_format_problems_is_a_table_with_a_summary(nnunet):
    problems = [Problem("error", "BRATS_002", str(nnunet / "labelsTr" / "BRATS_002.nii.gz"), "label is wrong"),
                Problem("warning", "", "", "a warning")]
    text = format_problems(problems, 4, root=nnunet).splitlines()
    assert text[0].split() == ["severity", "case", "file", "problem"]
    assert text[1].split() == ["error", "BRATS_002", "labelsTr/BRATS_002.nii.gz", "label", "is", "wrong"]
    assert text[2].split() == ["warning", "-", "-", "a", "warning"]
    assert text[3] == "1 error(s), 1 warning(s) in 4 case(s)"
    assert text[0].index("problem") == text[1].index("label is wrong") == text[2].index("a warning")


def test_raise_for_errors_names_the_first_and_counts_the_rest():
    raise_for_errors([Problem("warning", "a", "f", "w")])  # warnings pass
    with pytest.raises(MedsegError, match=r"^f1: m1 \(1 more dataset error\(s\); `medseg3d check` lists them all\)$"):
        raise_for_errors([Problem("warning", "a", "f0", "w"), Problem("error", "a", "f1", "m1"),
                          Problem("error", "b", "f2", "m2")])


def test_check_config_uses_the_configs_labels(nnunet):
    cfg = load_config({"data": {"root": str(nnunet), "brats_labels": "2023"}})
    problems, n = check_config(cfg)
    assert n == 5 and problems and all(p.message.startswith("label value(s) [4]") for p in problems)
    cfg = load_config({"data": {"domains": {"a": {"root": str(nnunet), "brats_labels": "2023"},
                                            "b": {"root": str(nnunet)}}}, "model": {"name": "u2net3d"}})
    problems, n = check_config(cfg)
    assert n == 10 and problems and all(p.case.startswith("a/") for p in problems)


# ------------------------------------------------------------------------------------------ LoadCased agrees
@pytest.mark.parametrize("edit", ["value", "shift", "shape"])
def test_loadcased_says_what_check_says(nnunet, edit):
    lab = nnunet / "labelsTr" / "BRATS_002.nii.gz"
    img = nib.load(lab)
    data, aff = np.asarray(img.dataobj).copy(), img.affine.copy()
    if edit == "value":
        data[data == 4] = 3
    elif edit == "shift":
        aff[:3, 3] += [0.0, -14.0, 0.0]
    else:
        data = data[:8]
    resave(lab, data, aff)
    p = only(problems_of(nnunet))
    case = next(c for c in load_dataset(nnunet).training if c["id"] == "BRATS_002")
    with pytest.raises(MedsegError) as e:
        LoadCased(channels=4, label_values=LABELS)(case)
    assert str(e.value) == str(p)


def test_loadcased_reads_mha_labels(nnunet, tmp_path):
    import SimpleITK as sitk

    case = load_dataset(nnunet).training[0]
    mha = tmp_path / "label.mha"
    sitk.WriteImage(sitk.ReadImage(case["label"]), str(mha))
    a = LoadCased(channels=4, label_values=LABELS)(case)
    b = LoadCased(channels=4, label_values=LABELS)({**case, "label": str(mha)})
    np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())
    assert set(np.unique(b["label"].numpy())) <= set(LABELS)


def test_loadcased_keeps_the_label_when_it_is_fine(nnunet):
    case = load_dataset(nnunet).training[0]
    out = LoadCased(channels=4, label_values=LABELS)(case)
    ref = np.asarray(nib.load(case["label"]).dataobj)
    np.testing.assert_array_equal(out["label"].numpy()[0], ref)
    assert out["image"].shape == (4, *SHAPE)
    assert label_values_message([3], LABELS).startswith("label value(s) [3]")

