"""The dataset layouts (MSD, nnU-Net v2 raw, BraTS folders) become case lists, and the cached preprocessing
yields what training expects (RAS, target spacing, cropped, z-scored, labels mapped to class indices)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from monai import transforms as mt

from medseg3d.config import load_config
from medseg3d.data.datasets import load_dataset, make_splits
from medseg3d.data.synthetic import write_brats_folders, write_msd_dataset, write_nnunet_dataset
from medseg3d.data.transforms import LoadCased, preprocess_transforms
from medseg3d.errors import MedsegError

SHAPE = (32, 32, 24)


@pytest.fixture(scope="module")
def msd(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd")
    write_msd_dataset(root, num_training=3, num_test=1, shape=SHAPE, orientation=["LPS", "RAS", "RAI", "RAS"], seed=1)
    return root


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    write_nnunet_dataset(root, num_training=3, num_test=1, shape=SHAPE, orientation=["LPS", "RAS", "RAI", "RAS"], seed=1)
    return root


def test_msd_layout(msd):
    info = load_dataset(msd)
    assert info.layout == "msd"
    assert info.channels == ["T1", "T1ce", "T2", "FLAIR"]
    assert info.labels == {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}
    assert [c["id"] for c in info.training] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert all(len(c["image"]) == 1 and c["label"].endswith(".nii.gz") for c in info.training)
    assert [c["id"] for c in info.test] == ["BRATS_004"]


def test_nnunet_layout(nnunet):
    info = load_dataset(nnunet)
    assert info.layout == "nnunet"
    assert info.channels == ["T1", "T1ce", "T2", "FLAIR"]
    assert info.labels == {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}
    assert [c["id"] for c in info.training] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert [p.rsplit("_", 1)[-1] for p in info.training[0]["image"]] == [f"{i:04d}.nii.gz" for i in range(4)]
    assert [c["id"] for c in info.test] == ["BRATS_004"]


def test_layouts_preprocess_to_the_same_arrays(msd, nnunet):
    """The same phantoms stored as one 4D file or four 3D files give identical preprocessed tensors."""
    cfg = load_config({"data": {"root": str(msd)}, "preprocess": {"spacing": [8.0, 8.0, 8.0]}})
    outs = []
    for root in (msd, nnunet):
        info = load_dataset(root)
        pre = mt.Compose([LoadCased(channels=4), *preprocess_transforms(cfg, list(info.labels.values()))])
        outs.append(pre(info.training[0]))
    a, b = outs
    assert a["image"].shape == b["image"].shape and a["image"].shape[0] == 4
    np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())
    img, lab = a["image"].numpy(), a["label"].numpy()
    assert set(np.unique(lab)) <= {0, 1, 2, 3}  # BraTS 0/1/2/4 -> class indices 0..3
    assert 3 in np.unique(lab)
    nz = img[0] != 0
    assert abs(img[0][nz].mean()) < 0.05 and abs(img[0][nz].std() - 1) < 0.05  # z-score on nonzero voxels
    np.testing.assert_allclose(np.abs(np.diag(a["image"].affine.numpy())[:3]), [8.0, 8.0, 8.0], rtol=1e-4)
    assert (np.diag(a["image"].affine.numpy())[:3] > 0).all()  # RAS


def test_config_overrides_dataset_names(msd):
    info = load_dataset(msd, channels=["a", "b", "c", "d"], labels={"bg": 0, "tumour": 1})
    assert info.channels == ["a", "b", "c", "d"] and info.labels == {"bg": 0, "tumour": 1}
    with pytest.raises(MedsegError, match="names 2 channels but the dataset has 4"):
        load_dataset(msd, channels=["a", "b"])


def test_bad_datasets_name_the_file(tmp_path, msd):
    with pytest.raises(MedsegError, match="dataset folder not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(MedsegError, match=r"dataset.json: not valid JSON"):
        load_dataset(tmp_path)
    meta = json.loads((msd / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/ghost.nii.gz"})
    bad = tmp_path / "bad"
    shutil.copytree(msd, bad)
    (bad / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MedsegError, match="ghost.nii.gz: listed in .* but not found"):
        load_dataset(bad)
    assert [c["id"] for c in load_dataset(bad, strict=False).training][-1] == "ghost"  # left to the check


def _msd_with(tmp_path, msd, edit) -> Path:
    root = tmp_path / "edited"
    shutil.copytree(msd, root)
    meta = json.loads((root / "dataset.json").read_text())
    edit(meta, root)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("where, path", [("label", "../../etc/passwd"), ("image", "/etc/passwd"),
                                         ("image", "./imagesTr/../../outside.nii.gz")])
def test_msd_entry_outside_the_root_is_an_error_naming_it(tmp_path, msd, where, path):
    def edit(meta, root):
        meta["training"][1][where] = path
    root = _msd_with(tmp_path, msd, edit)
    with pytest.raises(MedsegError) as e:
        load_dataset(root)
    assert str(e.value) == (f"{root / 'dataset.json'}: training entry 1 {where} '{path}' lies outside the dataset "
                            f"folder {root}; list files inside it (e.g. ./imagesTr/CASE.nii.gz)")


def test_msd_absolute_paths_inside_the_root_and_linked_folders_are_fine(tmp_path, msd):
    def absolute(meta, root):
        meta["training"] = [{k: str(root / v) for k, v in e.items()} for e in meta["training"]]
    root = _msd_with(tmp_path, msd, absolute)
    assert [c["id"] for c in load_dataset(root).training] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    # a sub-folder that is a link to another disk stays inside the dataset as far as its entries go
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(msd / "dataset.json", linked)
    shutil.copytree(msd / "labelsTr", linked / "labelsTr")
    (linked / "imagesTr").symlink_to(msd / "imagesTr", target_is_directory=True)
    info = load_dataset(linked)
    assert info.training[0]["image"] == [str(linked / "imagesTr" / "BRATS_001.nii.gz")]
    # the dataset folder given through a link, its entries written with the real path
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert len(load_dataset(alias).training) == 3


def test_msd_duplicate_case_ids_are_one_error(tmp_path, msd):
    def dup(meta, root):
        (root / "more").mkdir()
        shutil.copy(root / "imagesTr" / "BRATS_002.nii.gz", root / "more" / "BRATS_002.nii.gz")
        meta["training"].append({"image": "./more/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"})
    root = _msd_with(tmp_path, msd, dup)
    with pytest.raises(MedsegError) as e:
        load_dataset(root)
    assert str(e.value) == (f"{root / 'dataset.json'}: training entries 1 and 3 are both case 'BRATS_002' "
                            f"({root / 'imagesTr' / 'BRATS_002.nii.gz'} and {root / 'more' / 'BRATS_002.nii.gz'}); "
                            f"case ids come from the image file names and must be unique, so rename or remove one")
    with pytest.raises(MedsegError, match=r"case id\(s\) \['BRATS_002'\] appear more than once"):
        make_splits([c["id"] for c in load_dataset(root, strict=False).training], 2, seed=0)


@pytest.mark.parametrize("ending", [".mha", ".nrrd", "nrrd"])
def test_nnunet_layout_with_mha_or_nrrd_files(tmp_path, nnunet, ending):
    """nnU-Net datasets converted to MHA/NRRD (file_ending) list every case with its label, and load."""
    import SimpleITK as sitk

    root = tmp_path / "conv"
    suffix = ending if ending.startswith(".") else "." + ending
    for f in sorted(nnunet.rglob("*.nii.gz")):
        out = root / f.relative_to(nnunet).parent / (f.name[: -len(".nii.gz")] + suffix)
        out.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(f)), str(out))
    meta = json.loads((nnunet / "dataset.json").read_text())
    meta["file_ending"] = ending
    (root / "dataset.json").write_text(json.dumps(meta))
    info = load_dataset(root)
    assert [c["id"] for c in info.training] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert [c["id"] for c in info.test] == ["BRATS_004"]
    assert info.training[1]["label"] == str(root / "labelsTr" / f"BRATS_002{suffix}")
    assert info.training[1]["image"][3] == str(root / "imagesTr" / f"BRATS_002_0003{suffix}")
    ref = LoadCased(channels=4, label_values=[0, 1, 2, 4])(load_dataset(nnunet).training[1])
    out = LoadCased(channels=4, label_values=[0, 1, 2, 4])(info.training[1])
    np.testing.assert_array_equal(out["label"].numpy(), ref["label"].numpy())
    np.testing.assert_allclose(out["image"].numpy(), ref["image"].numpy())
    np.testing.assert_allclose(out["image"].affine.numpy(), ref["image"].affine.numpy(), atol=1e-4)


def test_brats_folders_layout(tmp_path):
    write_brats_folders(tmp_path, num_cases=2, shape=(16, 16, 12))
    (tmp_path / "BraTS_002" / "BraTS_002_seg.nii.gz").unlink()
    info = load_dataset(tmp_path)
    assert info.layout == "brats" and info.channels == ["T1", "T1ce", "T2", "FLAIR"]
    assert [c["id"] for c in info.training] == ["BraTS_001"] and [c["id"] for c in info.test] == ["BraTS_002"]
    assert info.training[0]["label"].endswith("BraTS_001_seg.nii.gz")


def test_nnunet_missing_channel_is_named(tmp_path):
    write_nnunet_dataset(tmp_path, num_training=2, shape=(16, 16, 12))
    (tmp_path / "imagesTr" / "BRATS_002_0003.nii.gz").unlink()
    with pytest.raises(MedsegError, match="BRATS_002_0003.nii.gz: missing channel file"):
        load_dataset(tmp_path)
