"""benchmarks/anatomy.py: the real-anatomy data set built from nilearn's MNI template (two tiny cases)."""

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg3d.errors import MedsegError

pytest.importorskip("nilearn")

REPO = Path(__file__).resolve().parents[2]
SCALE = 3.0  # 4.5-7.5 mm voxels: a few thousand voxels per case


def _anatomy():
    spec = importlib.util.spec_from_file_location("bench_anatomy", REPO / "benchmarks" / "anatomy.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    anatomy = _anatomy()
    out = tmp_path_factory.mktemp("bench") / "anatomy"
    return anatomy, anatomy.build_anatomy_dataset(out, n_cases=2, n_test=1, seed=3, scale=SCALE)


def _load(path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


def test_layout_and_dataset_json(built):
    _, root = built
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1"}
    assert meta["labels"] == {"background": 0, "gray_matter": 1, "white_matter": 2}
    assert meta["numTraining"] == 1 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz")) == [
        "imagesTr/ANAT_001_0000.nii.gz", "imagesTs/ANAT_002_0000.nii.gz",
        "labelsTr/ANAT_001.nii.gz", "labelsTs/ANAT_002.nii.gz"]
    assert not [p for p in root.parent.iterdir() if p.name != "anatomy"]  # no temporary folder left behind
    from medseg3d.data.datasets import load_dataset  # medseg3d reads it as an nnU-Net v2 raw data set

    info = load_dataset(root)
    assert info.layout == "nnunet" and info.channels == ["T1"] and [c["id"] for c in info.training] == ["ANAT_001"]


def test_geometry_per_case(built):
    anatomy, root = built
    codes = []
    pairs = [("imagesTr/ANAT_001_0000.nii.gz", "labelsTr/ANAT_001.nii.gz"),
             ("imagesTs/ANAT_002_0000.nii.gz", "labelsTs/ANAT_002.nii.gz")]
    for i, (img_path, lab_path) in enumerate((root / a, root / b) for a, b in pairs):
        geom = anatomy.GEOMETRIES[i]
        img, a = _load(img_path)
        lab, y = _load(lab_path)
        code = "".join(nib.aff2axcodes(img.affine))
        assert code == geom.code
        codes.append(code)
        np.testing.assert_allclose(img.header.get_zooms()[:3], np.array(geom.spacing) * SCALE, rtol=1e-5)
        # image and labels on one grid, with the affine in both qform and sform
        assert a.shape == y.shape and a.ndim == 3
        np.testing.assert_allclose(img.affine, lab.affine)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.affine, atol=1e-4)
        assert a.dtype == np.int16 and y.dtype == np.uint8
        # labels {0, 1, 2} in plausible proportions: the brain fills part of the box, cortex + deep gray > white
        assert set(np.unique(y)) == {0, 1, 2}
        brain = y > 0
        assert 0.1 < brain.mean() < 0.6
        gm_share = (y == 1).sum() / brain.sum()
        assert 0.45 < gm_share < 0.8
        # the labels sit on the anatomy: T1 contrast is white > gray > background (zero outside the brain)
        wm, gm = a[y == 2].mean(), a[y == 1].mean()
        assert wm > 1.1 * gm > 0
        assert (a[~brain] == 0).mean() > 0.8  # CSF and partial volume at the brain edge are not
    assert codes[0] != codes[1]


def test_seeded_reused_and_never_clobbered(built, tmp_path):
    anatomy, root = built
    stamp = (root / anatomy.BUILD_STAMP).stat().st_mtime_ns
    assert anatomy.build_anatomy_dataset(root, n_cases=2, n_test=1, seed=3, scale=SCALE) == root  # reused
    assert (root / anatomy.BUILD_STAMP).stat().st_mtime_ns == stamp
    with pytest.raises(MedsegError, match="--overwrite"):
        anatomy.build_anatomy_dataset(root, n_cases=2, n_test=1, seed=4, scale=SCALE)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's folder")
    with pytest.raises(MedsegError, match="not built by this script"):
        anatomy.build_anatomy_dataset(foreign, n_cases=2, n_test=1, seed=3, scale=SCALE, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "a user's folder"
    again = anatomy.build_anatomy_dataset(tmp_path / "again", n_cases=2, n_test=1, seed=3, scale=SCALE)
    for rel in ("imagesTr/ANAT_001_0000.nii.gz", "labelsTs/ANAT_002.nii.gz"):
        (i1, a1), (i2, a2) = _load(root / rel), _load(again / rel)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_allclose(i1.affine, i2.affine)
