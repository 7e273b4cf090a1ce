"""2D models on volumes: config (slice axis, patch, 2.5D), 2.5D stacks at the first and last slices (training
and inference), slice inference against a plain per-slice loop, geometry through the Segmenter with a 2D
model, a 2D net learning a tiny case through the real Trainer, and every configs/slices2d_*.yaml training with
``medseg3d train`` and segmenting a scan with ``medseg3d infer``."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.inferers import sliding_window_inference
from typer.testing import CliRunner

from medseg3d.cli import app
from medseg3d.config import load_config
from medseg3d.data.slices import (coarsest_axis, context_indices, median_spacing, resolve_slices,
                                  slice_sampling_transforms, stack_slices)
from medseg3d.errors import MedsegError
from medseg3d.inference.predictor import predict_logits
from medseg3d.inference.segmenter import Segmenter
from medseg3d.io.nifti import atomic_save
from medseg3d.models import build_model

from helpers import make_affine, phantom

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples"
CONFIGS = sorted((REPO / "configs").glob("slices2d_*.yaml"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU machine two threads contending with other processes made these
    tiny nets 10-100x slower (measured), and one thread gives the same results."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg2d(**model):
    raw = {"data": {"root": "."}, "model": {"spatial_dims": 2, **model}, "train": {"patch_size": [16, 16]},
           "preprocess": {"spacing": None, "normalize": "none"}, "infer": {"overlap": 0.25, "sw_batch_size": 4}}
    return load_config(raw)


# ---- config ---------------------------------------------------------------------------------------------------
def test_config_2d_patch_axis_and_context():
    c = load_config({"data": {"root": "."}, "model": {"spatial_dims": 2, "slice_axis": 1},
                     "train": {"patch_size": [32, 1, 24]}})
    assert resolve_slices(c).train.patch_size == [32, 24]
    for raw, words in [
        ({"model": {"spatial_dims": 3}, "train": {"patch_size": [32, 32]}}, "three positive integers"),
        ({"model": {"spatial_dims": 2, "slice_axis": 0}, "train": {"patch_size": [32, 32, 1]}}, "must be 1 along"),
        ({"model": {"spatial_dims": 2}, "train": {"patch_size": [32, 32, 32]}}, "none is 1"),
        ({"model": {"spatial_dims": 3, "context_slices": 1}}, "model.context_slices needs"),
        ({"model": {"spatial_dims": 2, "slice_axis": 3}}, "model.slice_axis"),
        ({"model": {"spatial_dims": 2, "context_slices": -1}}, "model.context_slices"),
    ]:
        with pytest.raises(MedsegError, match=words):
            load_config({"data": {"root": "."}, **raw})


def test_auto_axis_is_the_coarsest_and_is_recorded(tmp_path):
    assert coarsest_axis([1.0, 1.0, 3.0]) == 2 and coarsest_axis([3.0, 1.0, 1.0]) == 0
    assert coarsest_axis([2.0, 2.0, 2.0]) == 2  # ties: the last (axial for RAS)
    c = load_config({"data": {"root": "."}, "model": {"spatial_dims": 2}, "train": {"patch_size": [8, 8]},
                     "preprocess": {"spacing": [1.0, 4.0, 1.0]}})
    assert resolve_slices(c).model.slice_axis == 1
    c.train.patch_size = [8, 1, 8]  # three numbers: the 1 must be along the resolved axis
    assert resolve_slices(c).train.patch_size == [8, 8]
    c.train.patch_size = [1, 8, 8]
    with pytest.raises(MedsegError, match="resolved to 1"):
        resolve_slices(c)
    # spacing null: the dataset's median spacing after reorientation to preprocess.orientation (RAS); the
    # files are stored S, R, A with 3 mm along their first axis, so the coarse axis is RAS axis 2
    cases = []
    for i in range(3):
        p = tmp_path / f"c{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), make_affine("SRA", (3.0, 1.0, 1.2))), p)
        cases.append({"image": [str(p)]})
    np.testing.assert_allclose(median_spacing(cases, "RAS"), [1.0, 1.2, 3.0], rtol=1e-6)
    with pytest.raises(MedsegError, match="slice_axis"):
        predict_logits(torch.nn.Identity(), torch.zeros(1, 1, 4, 4, 4), cfg2d())


# ---- 2.5D stacks ----------------------------------------------------------------------------------------------
def test_context_stack_replicates_first_and_last_slices():
    assert context_indices(5, 2).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4],
                                              [1, 2, 3, 4, 4], [2, 3, 4, 4, 4]]
    # two channels, slice s holds 10*c + s: channel-major stacks (channel c at offset o -> c*(2k+1) + o + k)
    vol = torch.zeros(1, 2, 5, 3, 2)
    for c in range(2):
        for s in range(5):
            vol[0, c, s] = 10 * c + s
    x = stack_slices(vol, 1)
    assert x.shape == (5, 6, 3, 2)
    np.testing.assert_array_equal(x[0, :, 0, 0].numpy(), [0, 0, 1, 10, 10, 11])    # first slice
    np.testing.assert_array_equal(x[4, :, 0, 0].numpy(), [3, 4, 4, 13, 14, 14])    # last slice
    np.testing.assert_array_equal(stack_slices(vol, 0)[2, :, 1, 1].numpy(), [2, 12])


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("axis", [0, 2])
def test_training_samples_stack_context_at_the_borders(where, axis):
    """The training crop of the slice with foreground (only the first or the last one) has the border slice
    replicated into the missing context channels, exactly as inference builds it."""
    n, k = 5, 2
    shape = [6, 6, 6]
    shape[axis] = n
    vol = np.zeros((2, *shape), np.float32)  # slice s: channel 0 holds s + 1, channel 1 holds 10 (s + 1)
    lab = np.zeros((1, *shape), np.float32)
    idx = [slice(None)] * 4
    for s in range(n):
        idx[1 + axis] = s
        vol[tuple(idx)] = np.array([s + 1, 10 * (s + 1)], np.float32)[:, None, None]
    centre = 0 if where == "first" else n - 1
    idx[1 + axis] = centre
    lab[tuple(idx)] = 1
    cfg = load_config({"data": {"root": "."}, "train": {"patch_size": [4, 4], "fg_oversample": 1.0},
                       "model": {"spatial_dims": 2, "slice_axis": axis, "context_slices": k}})
    from monai import transforms as mt

    t = mt.Compose(slice_sampling_transforms(cfg))
    t.set_random_state(0)
    out = t({"image": torch.from_numpy(vol), "label": torch.from_numpy(lab)})
    out = out[0] if isinstance(out, list) else out
    img, y = out["image"], out["label"]
    assert img.shape == (2 * (2 * k + 1), 4, 4) and y.shape == (1, 4, 4)
    expected = [1, 1, 1, 2, 3] if where == "first" else [3, 4, 5, 5, 5]
    expected = expected + [10 * v for v in expected]
    np.testing.assert_array_equal(img[:, 0, 0].numpy(), expected)
    assert torch.all(y == 1)  # the label is the centre slice's
    inference = stack_slices(torch.from_numpy(vol)[None].movedim(2 + axis, 2), k)[centre, :, 0, 0]
    np.testing.assert_array_equal(inference.numpy(), expected)


# ---- slice inference ------------------------------------------------------------------------------------------
def _tiny_net(in_ch):
    torch.manual_seed(0)
    net = build_model("unet", 2, in_ch, 3, base_filters=4, depth=2, norm="batch")
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [0, 1])
def test_slice_inference_equals_plain_per_slice_loop(axis, k):
    torch.manual_seed(1)
    image = torch.randn(2, 2, 7, 9, 6)  # two volumes
    shape = image.shape[2:]
    plane = [s for i, s in enumerate(shape) if i != axis]
    cfg = cfg2d(slice_axis=axis, context_slices=k)
    cfg.train.patch_size = plane  # each slice is one window
    net = _tiny_net(2 * (2 * k + 1))
    got = predict_logits(net, image, cfg)
    assert got.shape == (2, 3, *shape)

    expected = torch.zeros_like(got)
    with torch.no_grad():
        for n in range(2):
            for s in range(shape[axis]):
                chans = []
                for c in range(2):
                    for o in range(-k, k + 1):
                        chans.append(image[n, c].select(axis, min(max(s + o, 0), shape[axis] - 1)))
                y = net(torch.stack(chans)[None])[0]  # (3, A, B)
                idx = [n, slice(None), slice(None), slice(None), slice(None)]
                idx[2 + axis] = s
                expected[tuple(idx)] = y
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # slices larger than the patch: the same as a 2D sliding window over each slice on its own
    cfg.train.patch_size = [4, 4]
    got = predict_logits(net, image, cfg)
    for n, s in [(0, 0), (1, shape[axis] - 1), (1, shape[axis] // 2)]:
        chans = [image[n, c].select(axis, min(max(s + o, 0), shape[axis] - 1)) for c in range(2) for o in range(-k, k + 1)]
        with torch.no_grad():
            y = sliding_window_inference(torch.stack(chans)[None], [4, 4], 1, net, overlap=0.25, mode="gaussian")[0]
        torch.testing.assert_close(got[n].select(1 + axis, s), y, rtol=1e-4, atol=1e-5)


# ---- geometry -------------------------------------------------------------------------------------------------
LEVEL = 120.0


class Threshold2D(torch.nn.Module):
    """A 2D net: foreground where the centre slice's first channel (channel k of the 2.5D stack) > LEVEL."""

    def __init__(self, k=0):
        super().__init__()
        self.k = k

    def forward(self, x):
        assert x.dim() == 4, x.shape
        centre = x[:, self.k:self.k + 1]
        return torch.cat([torch.zeros_like(centre), centre - LEVEL], dim=1)


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("resample", [True, False], ids=["resampled", "native"])
@pytest.mark.parametrize("codes,spacing", [("LPS", (1.0, 1.0, 3.0)), ("RAS", (0.9, 1.1, 2.5)), ("ASL", (2.5, 1.0, 1.2))])
def test_2d_prediction_matches_input_geometry(tmp_path, codes, spacing, resample, k):
    shape = (40, 34, 15)
    affine = make_affine(codes, spacing)
    img = nib.Nifti1Image(phantom(shape), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    src = tmp_path / "scan.nii.gz"
    nib.save(img, src)
    cfg = load_config({"data": {"root": "."}, "preprocess": {"spacing": [1.5, 1.5, 3.0] if resample else None,
                                                             "normalize": "none"},
                       "model": {"spatial_dims": 2, "slice_axis": "auto" if resample else 2, "context_slices": k},
                       "train": {"patch_size": [24, 24]}, "infer": {"overlap": 0.25, "sw_batch_size": 8}})
    seg = Segmenter(Threshold2D(k), cfg, ["T1"], {"background": 0, "object": 3}, device="cpu")
    out = atomic_save(seg.predict(src), tmp_path / "out" / "pred.nii.gz")
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-6)
    assert b.header.get_qform(coded=True)[1] == 1 and b.header.get_sform(coded=True)[1] == 1
    assert np.issubdtype(b.get_data_dtype(), np.integer)
    data, pred = np.asarray(a.dataobj), np.asarray(b.dataobj)
    expected = np.where(data > LEVEL, 3, 0)
    agree = (pred == expected).mean()
    dice = 2 * ((pred == 3) & (expected == 3)).sum() / ((pred == 3).sum() + (expected == 3).sum())
    if resample:
        assert agree > 0.97 and dice > 0.95, (agree, dice)
    else:
        assert agree == 1.0


# ---- learning -------------------------------------------------------------------------------------------------
def _blob_dataset(root: Path, n=3, shape=(24, 24, 10)):
    rng = np.random.default_rng(0)
    training = []
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    g = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in range(n):
        c = rng.uniform([8, 8, 3], [16, 16, 7])
        r = np.sqrt(((g[0] - c[0]) / 6) ** 2 + ((g[1] - c[1]) / 5) ** 2 + ((g[2] - c[2]) / 3) ** 2)
        lab = (r < 1).astype(np.uint8)
        img = 1.0 + 0.2 * rng.standard_normal(shape) + 1.0 * lab
        aff = make_affine("RAS", (2.0, 2.0, 4.0))
        nib.save(nib.Nifti1Image(img.astype(np.float32), aff), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), root / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MR"}, "labels": {"0": "background", "1": "blob"},
                                                   "training": training, "test": []}))


def test_2d_model_learns_a_tiny_case(tmp_path):
    from medseg3d.engine.metrics import dice_per_class
    from medseg3d.engine.trainer import train
    from medseg3d.io.nifti import read_label

    _blob_dataset(tmp_path / "data")
    raw = {"name": "blob2d", "output_dir": str(tmp_path / "runs"),
           "data": {"root": str(tmp_path / "data"), "fold": "all", "cache_dir": str(tmp_path / "cache")},
           "preprocess": {"spacing": None, "crop_foreground": False},
           "model": {"name": "unet", "spatial_dims": 2, "slice_axis": "auto", "context_slices": 1,
                     "params": {"base_filters": 8, "depth": 2, "norm": "instance"}},
           "train": {"patch_size": [24, 24], "batch_size": 8, "epochs": 6, "iters_per_epoch": 25, "lr": 0.01,
                     "fg_oversample": 0.5, "augment": {"flip_prob": 0.5, "intensity_prob": 0, "noise_prob": 0}},
           "infer": {"sw_batch_size": 16}}
    run = train(raw)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["slice_axis"] == 2  # auto -> the 4 mm axis, from the dataset's spacing
    seg = Segmenter.from_checkpoint(run, device="cpu")
    assert seg.members[0].model.in_channels == 3  # 1 channel x (2k + 1)
    dices = []
    for i in range(3):
        pred = np.asarray(seg.predict(str(tmp_path / "data" / "imagesTr" / f"c{i}.nii.gz")).dataobj)
        dices += dice_per_class(pred, read_label(tmp_path / "data" / "labelsTr" / f"c{i}.nii.gz"), [1])
    assert np.mean(dices) > 0.9, dices


# ---- configs end to end ---------------------------------------------------------------------------------------
TINY = {
    "slices2d_unet": ["model.params.base_filters=4", "model.params.depth=2", "model.context_slices=1"],
    "slices2d_unetpp": ["model.params.base_filters=4", "model.params.depth=2"],
    "slices2d_multiresunet": ["model.params.base_filters=4", "model.params.depth=2"],
    "slices2d_fcn8s": ["model.params.base_filters=4", "model.params.fc_channels=16", "model.params.fc_kernel=3"],
}


def test_every_slices2d_config_is_listed_here():
    assert sorted(TINY) == [p.stem for p in CONFIGS]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache2d")


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_and_its_checkpoint_segments_a_scan(config, tmp_path, cache_dir):
    runner = CliRunner()
    sets = [f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={cache_dir}", "data.num_folds=6",
            "train.epochs=1", "train.iters_per_epoch=2", "train.batch_size=2", "train.budget=null",
            "preprocess.spacing=[6, 6, 8]", "train.patch_size=[32, 32]", *TINY[config.stem]]
    r = runner.invoke(app, ["train", str(config)] + [a for s in sets for a in ("--set", s)])
    assert r.exit_code == 0, r.output
    (run,) = list((tmp_path / "runs").iterdir())
    ck = torch.load(run / "best.pt", weights_only=True)
    assert ck["config"]["model"]["spatial_dims"] == 2 and ck["config"]["model"]["slice_axis"] == 2
    assert ck["config"]["train"]["patch_size"] == [32, 32]

    scan = SAMPLES / "imagesTs" / "BRATS_008.nii.gz"  # 3 x 3 x 5 mm, not trained on
    r = runner.invoke(app, ["infer", str(scan), "-m", str(run), "-o", str(tmp_path / "pred"), "--no-preview"])
    assert r.exit_code == 0, r.output
    pred, src = nib.load(tmp_path / "pred" / "BRATS_008.nii.gz"), nib.load(scan)
    assert pred.shape == src.shape[:3]
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
    assert pred.header.get_sform(coded=True)[1] == src.header.get_sform(coded=True)[1]
    assert np.issubdtype(pred.get_data_dtype(), np.integer)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}
