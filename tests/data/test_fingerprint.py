"""The dataset fingerprint against nibabel's, numpy's and scikit-image's own numbers on data_samples/, its cache,
and the CT / MRI intensity flag on small written datasets."""

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from skimage.measure import label as sk_label

from medseg3d.data.datasets import load_dataset
from medseg3d.data.fingerprint import fingerprint, fingerprint_path, normalization_scheme
from medseg3d.errors import MedsegError

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"


@pytest.fixture(scope="module")
def fp(tmp_path_factory):
    return fingerprint(load_dataset(SAMPLES), cache_dir=tmp_path_factory.mktemp("cache"))


def _bbox(mask):
    idx = np.nonzero(mask)
    return [int(i.max() - i.min() + 1) for i in idx]


def test_geometry_matches_nibabel(fp):
    info = load_dataset(SAMPLES)
    assert [c["id"] for c in fp["cases"]] == [c["id"] for c in info.training]
    orientations = set()
    for case, entry in zip(fp["cases"], info.training):
        img = nib.load(entry["image"][0])
        assert case["shape"] == list(img.shape[:3])
        np.testing.assert_allclose(case["spacing"], img.header.get_zooms()[:3], rtol=1e-5)
        assert case["orientation"] == "".join(nib.aff2axcodes(img.affine))
        orientations.add(case["orientation"])
        canon = nib.as_closest_canonical(img)  # RAS, as the preprocessing reorients
        assert case["shape_ras"] == list(canon.shape[:3])
        np.testing.assert_allclose(case["spacing_ras"], canon.header.get_zooms()[:3], rtol=1e-5)
        assert case["crop_shape_ras"] == _bbox(np.any(canon.get_fdata() != 0, axis=-1))
        assert case["voxels"] == int(np.prod(img.shape[:3]))
    assert len(orientations) >= 4  # the samples are written in mixed orientations
    assert sum(fp["orientations"].values()) == len(fp["cases"])
    sp = np.array([nib.as_closest_canonical(nib.load(e["image"][0])).header.get_zooms()[:3] for e in info.training])
    np.testing.assert_allclose(fp["spacing"]["median"], np.median(sp, axis=0), rtol=1e-5)
    np.testing.assert_allclose(fp["spacing"]["p10"], np.percentile(sp, 10, axis=0), rtol=1e-5)


def test_foreground_intensities_match_numpy(fp):
    info = load_dataset(SAMPLES)
    pooled = [[] for _ in info.channels]
    for case, entry in zip(fp["cases"], info.training):
        data = nib.load(entry["image"][0]).get_fdata()
        lab = np.asarray(nib.load(entry["label"]).dataobj)
        fg = lab > 0
        assert case["foreground_voxels"] == int(fg.sum()) > 0
        for c in range(data.shape[-1]):
            vals = data[..., c][fg]
            pooled[c].append(vals)
            st = case["intensity"][c]
            np.testing.assert_allclose([st["p00_5"], st["p50"], st["p99_5"]],
                                       np.percentile(vals, [0.5, 50, 99.5]), rtol=1e-6)
            np.testing.assert_allclose([st["mean"], st["std"], st["min"], st["max"]],
                                       [vals.mean(), vals.std(), vals.min(), vals.max()], rtol=1e-6)
    for c, ch in enumerate(fp["channels"]):
        allv = np.concatenate(pooled[c])  # every case has fewer foreground voxels than the sample cap
        assert ch["samples"] == allv.size
        np.testing.assert_allclose([ch["p00_5"], ch["p50"], ch["p99_5"], ch["mean"], ch["std"]],
                                   [*np.percentile(allv, [0.5, 50, 99.5]), allv.mean(), allv.std()], rtol=1e-6)
        assert ch["ct_like"] is False
    assert normalization_scheme(fp) == "mri"


def test_classes_match_scikit_image(fp):
    info = load_dataset(SAMPLES)
    for case, entry in zip(fp["cases"], info.training):
        img = nib.load(entry["label"])
        lab = np.asarray(img.dataobj)
        vox_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
        for name, value in info.labels.items():
            if value == 0:
                continue
            mask = lab == value
            comp, n = sk_label(mask, connectivity=3, return_num=True)
            sizes = sorted(np.bincount(comp.ravel())[1:].tolist(), reverse=True)
            got = case["classes"][name]
            assert got["voxels"] == int(mask.sum())
            assert got["fraction"] == pytest.approx(mask.mean())
            assert got["objects"] == n
            assert got["object_voxels"] == sizes
            np.testing.assert_allclose(got["object_ml"], np.array(sizes) * vox_ml, rtol=1e-6)
    edema = [c["classes"]["edema"]["fraction"] for c in fp["cases"]]
    assert fp["classes"]["edema"]["fraction"] == pytest.approx(float(np.median(edema)))


def test_cache_is_keyed_by_file_sizes_and_times(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLES, data, ignore=shutil.ignore_patterns("domain_b", "imagesTs", "labelsTs"))
    cache = tmp_path / "cache"
    info = load_dataset(data)
    first = fingerprint(info, cache_dir=cache)
    path = fingerprint_path(info, cache)
    assert path.name == "fingerprint.json" and json.loads(path.read_text()) == first
    # a cached fingerprint is returned as stored (a marker written into it comes back)
    stored = json.loads(path.read_text())
    stored["marker"] = 1
    path.write_text(json.dumps(stored))
    assert fingerprint(info, cache_dir=cache)["marker"] == 1
    assert "marker" not in fingerprint(info, cache=False, cache_dir=cache)
    # changing a training file's modification time makes a new entry
    label = Path(info.training[0]["label"])
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint_path(info, cache) != path
    assert "marker" not in fingerprint(info, cache_dir=cache)


def _write_dataset(root: Path, name: str, volumes, labels) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    for i, (vol, lab) in enumerate(zip(volumes, labels)):
        nib.Nifti1Image(vol.astype(np.int16), aff).to_filename(root / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.Nifti1Image(lab.astype(np.uint8), aff).to_filename(root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": name},
                                                   "labels": {"background": 0, "organ": 1},
                                                   "file_ending": ".nii.gz"}))
    return root


def _phantoms(rng, air: float, body: float, organ: float):
    vols, labs = [], []
    g = np.mgrid[:24, :24, :12]
    for _ in range(3):
        r_body = np.sqrt(((g[0] - 12) / 10) ** 2 + ((g[1] - 12) / 10) ** 2 + ((g[2] - 6) / 7) ** 2)
        r_organ = np.sqrt(((g[0] - 13) / 4) ** 2 + ((g[1] - 11) / 4) ** 2 + ((g[2] - 6) / 3) ** 2)
        vol = np.where(r_body < 1, body, air) + rng.normal(0, 10, g[0].shape)
        vol = np.where(r_organ < 1, organ + rng.normal(0, 10, g[0].shape), vol)
        vols.append(np.round(vol))
        labs.append(r_organ < 1)
    return vols, labs


def test_ct_intensities_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    vols, labs = _phantoms(rng, air=-1024, body=40, organ=120)
    fp = fingerprint(load_dataset(_write_dataset(tmp_path / "ct", "image", vols, labs)), cache=False)
    ch = fp["channels"][0]
    assert ch["ct_like"] is True and "Hounsfield" in ch["ct_reason"]
    assert normalization_scheme(fp) == "ct"
    fg = np.concatenate([v[lab] for v, lab in zip(vols, labs)])
    np.testing.assert_allclose([ch["p00_5"], ch["p99_5"]], np.percentile(fg, [0.5, 99.5]))
    # MRI-like: the same shapes with positive intensities
    vols, labs = _phantoms(rng, air=0, body=400, organ=700)
    fp = fingerprint(load_dataset(_write_dataset(tmp_path / "mr", "T2", vols, labs)), cache=False)
    assert fp["channels"][0]["ct_like"] is False and normalization_scheme(fp) == "mri"
    # a channel named CT is CT whatever its values
    fp = fingerprint(load_dataset(_write_dataset(tmp_path / "named", "CT", vols, labs)), cache=False)
    assert fp["channels"][0]["ct_like"] is True and "named" in fp["channels"][0]["ct_reason"]


def test_a_dataset_without_training_cases_is_an_error(tmp_path):
    info = load_dataset(SAMPLES)
    info.training = []
    with pytest.raises(MedsegError, match="no training cases"):
        fingerprint(info, cache=False)
