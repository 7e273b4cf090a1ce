"""Both dataset layouts (MSD and nnU-Net v2 raw) become the same case list, and the cached preprocessing
yields what training expects (RAS, target spacing, cropped, z-scored, labels mapped to class indices)."""

import json

import numpy as np
import pytest
from monai import transforms as mt

from medseg3d.config import load_config
from medseg3d.data.datasets import load_dataset, make_splits
from medseg3d.data.synthetic import write_msd_dataset, write_nnunet_dataset
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
    meta["training"] = [{k: str(msd / v) for k, v in e.items()} for e in meta["training"]]
    meta["training"].append({"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/ghost.nii.gz"})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MedsegError, match="ghost.nii.gz: listed in .* but not found"):
        load_dataset(bad)


def test_nnunet_missing_channel_is_named(tmp_path):
    write_nnunet_dataset(tmp_path, num_training=2, shape=(16, 16, 12))
    (tmp_path / "imagesTr" / "BRATS_002_0003.nii.gz").unlink()
    with pytest.raises(MedsegError, match="BRATS_002_0003.nii.gz: missing channel file"):
        load_dataset(tmp_path)


def test_splits_are_seeded_disjoint_and_cover():
    ids = [f"c{i}" for i in range(11)]
    s1, s2 = make_splits(ids, 5, seed=0), make_splits(ids, 5, seed=0)
    assert s1 == s2 and s1 != make_splits(ids, 5, seed=1)
    assert sorted(i for s in s1 for i in s["val"]) == sorted(ids)
    for s in s1:
        assert not set(s["train"]) & set(s["val"]) and set(s["train"]) | set(s["val"]) == set(ids)
