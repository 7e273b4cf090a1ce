"""The synthetic BraTS-like phantom generator, its NIfTI geometry, the dataset writers and the shipped samples."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg3d.data.synthetic import (CHANNELS, LABELS, TISSUES, make_brats_phantom, phantom_tissues,
                                     tissues_to_label, to_nifti, write_brats_folders, write_msd_dataset,
                                     write_nnunet_dataset)

REPO = Path(__file__).resolve().parents[2]
SHAPE = (48, 48, 48)  # 4 mm voxels over the default 192 mm field of view
T = {name: i for i, name in enumerate(TISSUES)}
BRAIN = [T[n] for n in ("grey_matter", "white_matter", "ventricles", "edema", "enhancing", "necrosis")]
NORMAL_BRAIN = [T["grey_matter"], T["white_matter"]]


@pytest.fixture(scope="module", params=[0, 7])
def phantom(request):
    seed = request.param
    image, label = make_brats_phantom(SHAPE, seed=seed)
    return image, label, phantom_tissues(SHAPE, seed=seed)


def test_types_shapes_and_label_values(phantom):
    image, label, tissue = phantom
    assert image.shape == (4, *SHAPE) and image.dtype == np.float32
    assert label.shape == SHAPE and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2, 4}
    assert np.array_equal(label, tissues_to_label(tissue))
    assert np.isfinite(image).all() and image.min() >= 0 and 500 < image.max() < 3000


def test_tumour_compartments_are_nested_inside_the_brain(phantom):
    _, label, tissue = phantom
    tumour, core = label > 0, np.isin(label, (1, 4))
    # the core (necrosis + enhancing) is wrapped in edema: it touches no other tissue but the ventricles
    assert not (ndimage.binary_dilation(core) & ~tumour & (tissue != T["ventricles"])).any()
    # necrosis lies deepest, then the enhancing shell, then the edema (depth below the surrounding parenchyma)
    depth = ndimage.distance_transform_edt(tumour | (tissue == T["ventricles"]))
    assert depth[label == 1].mean() > depth[label == 4].mean() > depth[label == 2].mean()
    components, _ = ndimage.label(core)
    assert np.bincount(components.ravel())[1:].max() > 0.95 * core.sum()  # one core (plus at most a stray voxel)
    # the tumour is brain tissue and does not reach the skull, scalp or outside
    assert np.isin(tissue[tumour], BRAIN).all()
    assert np.isin(tissue[ndimage.binary_dilation(tumour)], BRAIN + [T["csf"]]).all()


def test_anatomy_shells(phantom):
    image, _, tissue = phantom
    head = tissue != T["background"]
    assert (image[:, ~head] == 0).all()  # exact zeros outside the head: a nonzero mask works
    assert (image[:, ndimage.binary_erosion(head, iterations=2)] > 0).mean() > 0.99
    # scalp wraps the skull, which wraps the intracranial space
    brain = np.isin(tissue, BRAIN)
    assert not (ndimage.binary_dilation(brain) & np.isin(tissue, (T["skull"], T["scalp"], T["background"]))).any()
    assert not (ndimage.binary_dilation(tissue == T["skull"]) & (tissue == T["background"])).any()
    for name in ("scalp", "skull", "csf", "ventricles", "grey_matter", "white_matter"):
        assert (tissue == T[name]).sum() > 20, name
    # the brain is not a box or a plain axis-aligned ellipsoid: its outline is irregular
    assert brain.sum() < 0.9 * np.prod(brain.shape) * np.pi / 6


def test_channel_contrasts(phantom):
    image, _, tissue = phantom
    t1, t1ce, t2, flair = (image[CHANNELS.index(c)] for c in ("T1", "T1ce", "T2", "FLAIR"))

    def mean(channel, *names):
        return channel[np.isin(tissue, [T[n] for n in names])].mean()

    assert mean(t1, "white_matter") > mean(t1, "grey_matter") > mean(t1, "csf")
    assert mean(t1, "edema", "necrosis") < mean(t1, "grey_matter", "white_matter")
    assert mean(t1ce, "enhancing") > 1.2 * mean(t1ce, "grey_matter", "white_matter")
    assert mean(t1ce, "enhancing") > 1.3 * mean(t1, "enhancing")
    for channel in (t2, flair):
        assert mean(channel, "edema") > 1.3 * mean(channel, "grey_matter", "white_matter")
    assert mean(t2, "csf") > mean(t2, "grey_matter") > mean(t2, "white_matter")
    assert mean(flair, "csf") < 0.5 * mean(flair, "grey_matter", "white_matter")  # CSF suppressed
    assert not any(np.allclose(image[a], image[b]) for a in range(4) for b in range(a + 1, 4))


def test_determinism_and_seed_variation():
    a_img, a_lab = make_brats_phantom((40, 40, 40), seed=3)
    b_img, b_lab = make_brats_phantom((40, 40, 40), seed=3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    c_img, c_lab = make_brats_phantom((40, 40, 40), seed=4)
    assert not np.array_equal(a_lab, c_lab)
    centroids = [np.array(ndimage.center_of_mass(lab > 0)) for lab in (a_lab, c_lab)]
    assert np.linalg.norm(centroids[0] - centroids[1]) > 1.0 or abs((a_lab > 0).sum() - (c_lab > 0).sum()) > 50


def test_anatomy_is_defined_in_millimetres():
    """The same seed on a coarser, anisotropic grid samples the same anatomy (e.g. the tumour's volume)."""
    fine = phantom_tissues((48, 48, 48), seed=5)
    coarse = phantom_tissues((48, 48, 32), seed=5, spacing=(4.0, 4.0, 6.0))
    for name in ("edema", "white_matter", "csf"):
        v_fine, v_coarse = (fine == T[name]).sum() * 64.0, (coarse == T[name]).sum() * 96.0
        assert v_coarse == pytest.approx(v_fine, rel=0.15), name


def test_phantom_is_fast():
    import time
    start = time.perf_counter()
    make_brats_phantom((64, 64, 64), seed=1)
    assert time.perf_counter() - start < 3.0  # ~0.5 s here; slack for loaded CI machines


@pytest.mark.parametrize("code", ["RAS", "LPS", "LAS", "RAI", "ASL", "PIR"])
@pytest.mark.parametrize("oblique", [0.0, 8.0])
def test_to_nifti_stores_the_requested_orientation(code, oblique):
    _, label = make_brats_phantom((32, 36, 28), seed=2, spacing=(6.0, 5.0, 7.0))
    img = to_nifti(label, (6.0, 5.0, 7.0), code, oblique_deg=oblique)
    assert "".join(nib.aff2axcodes(img.affine)) == code
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert np.allclose(img.get_qform(), img.get_sform(), atol=1e-4)
    # the voxel sizes follow their axes
    spacing_by_axis = dict(zip("RAS", (6.0, 5.0, 7.0)))
    pair = {"L": "R", "R": "R", "P": "A", "A": "A", "I": "S", "S": "S"}
    assert np.allclose(img.header.get_zooms(), [spacing_by_axis[pair[c]] for c in code])
    # back in RAS the data and the geometry are the phantom's own
    canon = nib.as_closest_canonical(img)
    assert np.array_equal(np.asarray(canon.dataobj), label)
    ref = nib.as_closest_canonical(to_nifti(label, (6.0, 5.0, 7.0), "RAS", oblique_deg=oblique))
    assert np.allclose(canon.affine, ref.affine, atol=1e-5)


def test_lps_and_ras_copies_agree_in_world_space(tmp_path):
    image, label = make_brats_phantom((40, 40, 40), seed=9)
    loaded = {}
    for code in ("LPS", "RAS"):
        nib.save(to_nifti(label, None, code, dtype=np.uint8), tmp_path / f"{code}.nii.gz")
        nib.save(to_nifti(image, None, code, dtype=np.int16), tmp_path / f"{code}_img.nii.gz")
        lab, img = (nib.load(tmp_path / f"{n}.nii.gz") for n in (code, f"{code}_img"))
        assert "".join(nib.aff2axcodes(lab.affine)) == code and lab.get_data_dtype() == np.uint8
        assert img.shape[-1] == 4 and img.get_data_dtype() == np.int16
        loaded[code] = [nib.as_closest_canonical(x) for x in (lab, img)]
    assert not np.array_equal(np.asarray(nib.load(tmp_path / "LPS.nii.gz").dataobj), label)  # truly flipped
    (lps_lab, lps_img), (ras_lab, ras_img) = loaded["LPS"], loaded["RAS"]
    assert np.array_equal(np.asarray(lps_lab.dataobj), np.asarray(ras_lab.dataobj))
    assert np.array_equal(np.asarray(lps_img.dataobj), np.asarray(ras_img.dataobj))
    assert np.allclose(lps_lab.affine, ras_lab.affine)
    # a voxel's world position is the same in both files
    vox = np.argwhere(label == 1)[0]
    world = ras_lab.affine @ [*vox, 1]
    lps_file = nib.load(tmp_path / "LPS.nii.gz")
    lps_vox = np.rint(np.linalg.inv(lps_file.affine) @ world)[:3].astype(int)
    assert np.asarray(lps_file.dataobj)[tuple(lps_vox)] == 1


def test_to_nifti_rejects_bad_orientation():
    with pytest.raises(ValueError):
        to_nifti(np.zeros((4, 4, 4)), (1, 1, 1), "RAR")
    with pytest.raises(ValueError):
        to_nifti(np.zeros((4, 4, 4)), (1, 1, 1), "XYZ")


def test_msd_writer(tmp_path):
    written = write_msd_dataset(tmp_path, num_training=2, num_test=1, shape=[(32, 32, 32), (32, 32, 24), (28, 28, 28)],
                                spacing=[None, (6.0, 6.0, 8.0), None], orientation=["LPS", "RAS", "LAS"], seed=1,
                                test_labels=True)
    assert all(p.is_file() for p in written) and tmp_path / "dataset.json" in written
    meta = json.loads((tmp_path / "dataset.json").read_text())
    for key in ("name", "description", "modality", "channel_names", "labels", "numTraining", "numTest", "training",
                "test"):
        assert key in meta, key
    assert meta["modality"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"} == meta["channel_names"]
    assert meta["labels"] == {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"}
    assert (meta["numTraining"], meta["numTest"]) == (2, 1)
    assert meta["training"][1] == {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"}
    assert meta["test"] == ["./imagesTs/BRATS_003.nii.gz"]
    img = nib.load(tmp_path / "imagesTr/BRATS_002.nii.gz")
    lab = nib.load(tmp_path / "labelsTr/BRATS_002.nii.gz")
    assert img.shape == (32, 32, 24, 4) and lab.shape == (32, 32, 24)
    assert np.allclose(img.header.get_zooms()[:3], (6, 6, 8))
    assert "".join(nib.aff2axcodes(nib.load(tmp_path / "labelsTr/BRATS_001.nii.gz").affine)) == "LPS"
    assert (tmp_path / "labelsTs/BRATS_003.nii.gz").is_file()


def test_msd_writer_is_byte_reproducible(tmp_path):
    a = write_msd_dataset(tmp_path / "a", num_training=1, num_test=1, shape=(24, 24, 24), seed=3)
    b = write_msd_dataset(tmp_path / "b", num_training=1, num_test=1, shape=(24, 24, 24), seed=3)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_writer_rejects_wrong_number_of_per_case_values(tmp_path):
    with pytest.raises(ValueError, match="orientation"):
        write_msd_dataset(tmp_path, num_training=2, num_test=0, shape=(16, 16, 16), orientation=["RAS"] * 3)


def test_nnunet_writer(tmp_path):
    written = write_nnunet_dataset(tmp_path, num_training=2, num_test=1, shape=(24, 24, 24), orientation="LPS")
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4} == LABELS
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    expected = [f"imagesTr/BRATS_00{i}_{c:04d}.nii.gz" for i in (1, 2) for c in range(4)]
    expected += ["labelsTr/BRATS_001.nii.gz", "labelsTr/BRATS_002.nii.gz"]
    expected += [f"imagesTs/BRATS_003_{c:04d}.nii.gz" for c in range(4)]
    assert sorted(str(p.relative_to(tmp_path)) for p in written if p.suffix == ".gz") == sorted(expected)
    channel = nib.load(tmp_path / "imagesTr/BRATS_001_0003.nii.gz")
    assert channel.shape == (24, 24, 24) and channel.get_data_dtype() == np.int16
    assert "".join(nib.aff2axcodes(channel.affine)) == "LPS"


def test_brats_folder_writer(tmp_path):
    written = write_brats_folders(tmp_path, num_cases=2, shape=(24, 24, 24), oblique_deg=5.0)
    assert len(written) == 10 and all(p.is_file() for p in written)
    for case in ("BraTS_001", "BraTS_002"):
        for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
            img = nib.load(tmp_path / case / f"{case}_{suffix}.nii.gz")
            assert img.shape == (24, 24, 24) and "".join(nib.aff2axcodes(img.affine)) == "LPS"
    seg = nib.load(tmp_path / "BraTS_001/BraTS_001_seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    assert not np.allclose(seg.affine[:3, :3], np.diag(np.diag(seg.affine[:3, :3])))  # oblique


def test_shipped_samples():
    root = REPO / "data_samples"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["numTraining"] == len(meta["training"]) >= 4 and meta["numTest"] == len(meta["test"]) >= 1
    pairs = [(root / c["image"], root / c["label"]) for c in meta["training"]]
    pairs += [(root / t, root / "labelsTs" / Path(t).name) for t in meta["test"]]
    codes, spacings = set(), []
    for image_path, label_path in pairs:
        image, label = nib.load(image_path), nib.load(label_path)
        assert image.shape == (*label.shape, 4), image_path
        assert np.allclose(image.affine, label.affine), image_path
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(label.dataobj))) == {0, 1, 2, 4}, label_path
        codes.add("".join(nib.aff2axcodes(label.affine)))
        spacings.append(label.header.get_zooms())
    assert {"LPS", "RAS"} <= codes and len(codes) >= 4
    assert any(max(z) / min(z) >= 1.5 for z in spacings)  # an anisotropic case
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 4 * 2**20
