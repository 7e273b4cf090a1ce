"""Window runners (medseg3d.inference.engines): every engine gives the torch fp32 logits and labels of a small
U-Net, skipping all-zero windows changes no bit of a MONAI sliding-window result, a network the ONNX exporter
cannot export falls back to torch with the reason recorded, and 'auto' measures, caches and reuses its choice.
Real engines on tiny networks; no timings are asserted."""

import importlib.util
from pathlib import Path
import warnings

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg3d.errors import MedsegError
from medseg3d.inference import engines
from medseg3d.inference.engines import free_cores, label_agreement, make_runner
from medseg3d.models import build_model

HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
HAVE_OV = importlib.util.find_spec("openvino") is not None
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed")
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino not installed")

WINDOW = (16, 16, 16)


def small_unet(seed: int = 0, spatial_dims: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", spatial_dims, 2, 3, base_filters=4, depth=2, norm="instance").eval()


def volume(shape=(48, 40, 36), seed: int = 1) -> torch.Tensor:
    """(1, 2, *shape): a textured block of 'head' (the first half of each axis) in a zero background (as after
    zscore_nonzero)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 2, *shape)
    x[(slice(None), slice(None)) + tuple(slice(0, s // 2) for s in shape)] = torch.randn(
        1, 2, *(s // 2 for s in shape), generator=g)
    return x


def reference(net, x):
    with torch.no_grad():
        return net(x)


def assert_labels_equal_where_decided(y, ref, margin, decided_fraction=0.9):
    """Labels agree wherever the reference's top two logits differ by more than ``margin`` (ties closer than the
    engines' rounding may go either way)."""
    top2 = ref.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > margin
    assert decided.float().mean() > decided_fraction
    assert torch.equal(y.argmax(1)[decided], ref.argmax(1)[decided])


ENGINES_FP32 = [pytest.param("torch", id="torch"),
                pytest.param("onnxruntime", id="onnxruntime", marks=needs_ort),
                pytest.param("openvino", id="openvino", marks=needs_ov)]


@pytest.mark.parametrize("engine", ENGINES_FP32)
def test_fp32_engines_match_torch(engine, tmp_path):
    net = small_unet()
    x = torch.randn(3, 2, *WINDOW, generator=torch.Generator().manual_seed(5))
    ref = reference(net, x)
    runner = make_runner(net, (2, *WINDOW), engine=engine, precision="fp32", threads=1, cache=tmp_path / "c.json")
    y = runner(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert_labels_equal_where_decided(y, ref, margin=1e-3)
    d = runner.describe()
    assert (d["engine"], d["precision"], d["selection"]) == (engine, "fp32", "requested")
    assert 1 <= d["threads"] <= free_cores()
    assert d["fallback"] is None and d["windows_run"] == 3


BF16 = [pytest.param("torch", id="torch"),
        pytest.param("openvino", id="openvino",
                     marks=[needs_ov, pytest.mark.skipif(not engines._cpu_has_bf16(), reason="no native bf16 CPU")])]


@pytest.mark.parametrize("engine", BF16)
def test_bf16_engines_are_close_to_fp32(engine, tmp_path):
    net = small_unet()
    x = torch.randn(1, 2, *WINDOW, generator=torch.Generator().manual_seed(6))
    ref = reference(net, x)
    runner = make_runner(net, (2, *WINDOW), engine=engine, precision="bf16", cache=False)
    y = runner(x)
    assert runner.describe()["precision"] == "bf16" and y.dtype == torch.float32
    assert not torch.equal(y, ref)  # really ran in lower precision
    torch.testing.assert_close(y, ref, rtol=0.1, atol=0.05 * float(ref.abs().max()))
    assert_labels_equal_where_decided(y, ref, margin=0.05 * float(ref.abs().max()), decided_fraction=0.5)


@pytest.mark.parametrize("engine", ENGINES_FP32)
def test_skip_empty_is_bit_identical_through_monai_sliding_window(engine, tmp_path):
    net = small_unet()
    x = volume()
    outs, runners = [], []
    for skip in (False, True):
        # one thread: results may differ in the last bits between thread counts
        runner = make_runner(net, (2, *WINDOW), engine=engine, precision="fp32", threads=1, skip_empty=skip,
                             cache=False)
        # batches of 3 windows mix empty and non-empty ones
        outs.append(sliding_window_inference(x, WINDOW, 3, runner, overlap=0.5, mode="gaussian"))
        runners.append(runner.describe())
    assert torch.equal(outs[0], outs[1])
    assert runners[0]["windows_skipped"] == 0
    assert runners[1]["windows_skipped"] > 0
    assert runners[1]["windows_run"] + runners[1]["windows_skipped"] == runners[0]["windows_run"]
    # and it is the network's sliding-window result
    ref = sliding_window_inference(x, WINDOW, 1, lambda w: reference(net, w), overlap=0.5, mode="gaussian")
    torch.testing.assert_close(outs[1], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_empty_window_output_is_position_independent():
    """What skipping relies on: a convolutional network's output for an all-zero window is the same array
    wherever that window lies (here: it does not depend on anything but the input)."""
    net = small_unet()
    runner = make_runner(net, (2, *WINDOW), engine="torch", precision="fp32", cache=False)
    zeros = torch.zeros(2, 2, *WINDOW)
    y = runner(zeros)
    assert runner.describe()["windows_skipped"] == 2
    assert torch.equal(y[0], reference(net, zeros[:1])[0]) and torch.equal(y[1], y[0])


class Unexportable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_unet()

    def forward(self, x):  # a running maximum along one axis: aten::cummax has no ONNX export
        return torch.cummax(self.net(x), dim=2).values


@needs_ort
def test_requested_engine_that_cannot_export_falls_back_with_reason():
    net = Unexportable().eval()
    x = torch.randn(1, 2, *WINDOW)
    with pytest.warns(RuntimeWarning, match="falling back to torch fp32"):
        runner = make_runner(net, (2, *WINDOW), engine="onnxruntime", precision="fp32", cache=False)
    d = runner.describe()
    assert (d["engine"], d["precision"]) == ("torch", "fp32")
    assert "onnxruntime/fp32" in d["failed"] and d["fallback"].startswith("onnxruntime/fp32 could not be built")
    assert torch.equal(runner(x), reference(net, x))


@needs_ort
def test_auto_skips_engines_that_cannot_export(tmp_path):
    net = Unexportable().eval()
    x = volume(shape=(16, 16, 16))
    runner = make_runner(net, (2, *WINDOW), engine="auto", precision="fp32", cache=tmp_path / "c.json")
    assert runner.describe()["selection"] == "pending"
    y = runner(x)
    d = runner.describe()
    assert d["engine"] == "torch" and d["selection"] == "measured"
    assert "onnxruntime/fp32" in d["failed"]
    assert torch.equal(y, reference(net, x))


class DictOutput(torch.nn.Module):
    """A network whose output is a dict with the segmentation under 'seg' and a list under 'aux'."""

    def __init__(self):
        super().__init__()
        self.net = small_unet()
        self.divisor = 4

    def forward(self, x):
        y = self.net(x)
        return {"seg": y, "aux": [y.mean(), y * 0]}


@needs_ort
def test_dict_and_list_outputs_export_their_main_output():
    net = DictOutput().eval()
    x = torch.randn(2, 2, *WINDOW)
    runner = make_runner(net, (2, *WINDOW), engine="onnxruntime", precision="fp32", cache=False)
    assert runner.describe()["engine"] == "onnxruntime"
    ref = reference(net, x)["seg"]
    torch.testing.assert_close(runner(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@needs_ort
def test_auto_measures_once_then_uses_the_cache(tmp_path):
    cache = tmp_path / "engines.json"
    net = small_unet()
    x = volume(shape=(24, 24, 24))
    w = x[..., 4:20, 4:20, 4:20]
    first = make_runner(net, (2, *WINDOW), cache=cache)
    assert first.describe()["engine"] is None  # nothing chosen before the first window
    y1 = first(w)
    d1 = first.describe()
    assert d1["selection"] == "measured" and cache.is_file()
    assert d1["engine"] in engines.ENGINES and d1["precision"] in engines.PRECISIONS
    assert "torch/fp32 first run" in d1["measured"] and 1 <= d1["threads"] <= free_cores()
    assert d1["agreement"][f"{d1['engine']}/{d1['precision']}"] >= engines.MIN_AGREEMENT
    second = make_runner(net, (2, *WINDOW), cache=cache)
    d2 = second.describe()
    assert d2["selection"].startswith("cached measurement")
    assert (d2["engine"], d2["precision"], d2["threads"]) == (d1["engine"], d1["precision"], d1["threads"])
    assert label_agreement(second(w), y1) >= engines.MIN_AGREEMENT


def test_auto_does_not_measure_on_all_zero_windows(tmp_path):
    net = small_unet()
    runner = make_runner(net, (2, *WINDOW), cache=tmp_path / "c.json")
    zeros = torch.zeros(2, 2, *WINDOW)
    y = runner(zeros)  # background only: answered by torch fp32, nothing chosen yet
    assert runner.describe()["selection"] == "pending" and not (tmp_path / "c.json").exists()
    assert torch.equal(y[0], reference(net, zeros[:1])[0])
    runner(torch.randn(1, 2, *WINDOW))  # the first real window measures
    assert runner.describe()["selection"] == "measured"


@needs_ort
def test_runner_runs_2d_windows():
    net = small_unet(spatial_dims=2)
    x = torch.randn(4, 2, 32, 32)
    runner = make_runner(net, (2, 32, 32), engine="onnxruntime", precision="fp32", cache=False)
    ref = reference(net, x)
    torch.testing.assert_close(runner(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_bad_arguments_are_medseg_errors():
    net = small_unet()
    with pytest.raises(MedsegError, match="unknown inference engine 'tensorrt'"):
        make_runner(net, (2, *WINDOW), engine="tensorrt")
    with pytest.raises(MedsegError, match="unknown inference precision 'fp8'"):
        make_runner(net, (2, *WINDOW), precision="fp8")
    with pytest.raises(MedsegError, match="onnxruntime runs fp32 only"):
        make_runner(net, (2, *WINDOW), engine="onnxruntime", precision="bf16")
    with pytest.raises(MedsegError, match="threads must be a positive integer"):
        make_runner(net, (2, *WINDOW), engine="torch", threads=0)


def test_threads_never_exceed_free_cores():
    net = small_unet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner = make_runner(net, (2, *WINDOW), engine="torch", precision="fp32", threads=10_000, cache=False)
    assert runner.describe()["threads"] == free_cores()


def test_infer_chooses_an_engine_by_measurement_and_reports_it(tmp_path, monkeypatch):
    """`medseg3d infer --engine auto --precision auto`: the engine is measured on the first window, its labels
    agree with PyTorch fp32, and the report says what ran; the choice is cached for the next run."""
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from medseg3d.cli import app

    repo = Path(__file__).resolve().parents[2]
    ckpt, scan = repo / "tests" / "fixtures" / "checkpoint_v1.pt", repo / "data_samples" / "imagesTs" / "BRATS_007.nii.gz"
    monkeypatch.setenv("MEDSEG3D_CACHE", str(tmp_path / "cache"))
    # the cache keeps busy and quiet machines apart; the load of a shared machine may cross that line between
    # the runs below, so it is held at quiet here
    monkeypatch.setattr(engines, "_load", lambda: (0.0, 0.0, 0.0))
    runner = CliRunner()
    r = runner.invoke(app, ["infer", str(scan), "-m", str(ckpt), "-o", str(tmp_path / "auto"), "--no-preview",
                            "--engine", "auto", "--precision", "auto"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "auto" / "BRATS_007.json").read_text())
    (used,) = report["inference"]["engines"]
    assert used["engine"] in ("torch", "onnxruntime", "openvino") and used["precision"] in ("fp32", "bf16")
    assert used["selection"].startswith("measured") and used["windows_run"] + used["windows_skipped"] > 0
    r = runner.invoke(app, ["infer", str(scan), "-m", str(ckpt), "-o", str(tmp_path / "fp32"), "--no-preview",
                            "--engine", "torch", "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    a = np.asarray(nib.load(tmp_path / "auto" / "BRATS_007.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "fp32" / "BRATS_007.nii.gz").dataobj)
    assert (a == b).mean() >= 0.995
    r = runner.invoke(app, ["infer", str(scan), "-m", str(ckpt), "-o", str(tmp_path / "again"), "--no-preview",
                            "--engine", "auto", "--precision", "auto"])
    again = json.loads((tmp_path / "again" / "BRATS_007.json").read_text())["inference"]["engines"][0]
    assert (again["engine"], again["precision"]) == (used["engine"], used["precision"])
    assert again["selection"].startswith("cached")
