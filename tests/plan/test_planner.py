"""Planner decisions on synthetic fingerprints with fake device costs (no timed assertions), the commented
YAML, the decision table, CT normalisation, and a planned config that trains on data_samples/."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medseg3d
from medseg3d.config import load_config
from medseg3d.errors import MedsegError
from medseg3d.plan import format_decisions, make_plan, measure_device, plan_dataset, plan_yaml, write_plan
from medseg3d.data.normalization import CTNormalized, ct_normalize
from medseg3d.plan.planner import n_windows, steps_wanted, target_spacing

from fake_costs import fake_timer  # tests/plan/conftest.py puts it on the path

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"


def synthetic_fp(spacing, shape, n=6, ct=False, channels=("T1",), labels=None, jitter=0.0, coarse_spread=None,
                 root="/data/synthetic"):
    """A fingerprint with the fields the planner reads: ``n`` cases of ``shape`` voxels at ``spacing`` mm (RAS),
    the foreground box 80 % of the image, optional spread of the spacings."""
    labels = labels or {"background": 0, "gray": 1, "white": 2}
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        sp = np.array(spacing, float) * (1 + jitter * rng.uniform(-1, 1, 3))
        if coarse_spread is not None:
            sp[int(np.argmax(spacing))] = coarse_spread[i % len(coarse_spread)]
        cases.append({"id": f"case{i:03d}", "shape_ras": list(shape), "spacing_ras": sp.tolist(),
                      "crop_shape_ras": [int(s * 0.8) for s in shape], "voxels": int(np.prod(shape)),
                      "read_seconds": 0.5, "orientation": "RAS" if i % 2 else "LPS"})
    stats = ({"p00_5": -980.0, "p99_5": 1500.0, "mean": 60.0, "std": 250.0} if ct else
             {"p00_5": 50.0, "p99_5": 900.0, "mean": 400.0, "std": 120.0})
    chans = [{"name": c, "ct_like": ct, "ct_reason": "integer values with a floor at -1024" if ct else "no floor",
              **stats} for c in channels]
    sps = np.array([c["spacing_ras"] for c in cases])
    return {"root": root, "cases": cases, "channels": chans, "labels": labels,
            "spacing": {"median": np.median(sps, 0).tolist(), "p10": np.percentile(sps, 10, 0).tolist()},
            "orientations": {"RAS": n // 2, "LPS": n - n // 2}, "classes": {}}


@pytest.fixture(scope="module")
def costs3d():
    return measure_device("cpu", dims=(3,), in_channels=1, out_channels=3, volume=[96, 112, 96],
                          timer=fake_timer(), cache=False)


@pytest.fixture(scope="module")
def costs2d():
    return measure_device("cpu", dims=(2,), in_channels=1, out_channels=3, volume=[400, 400, 36],
                          context_slices=2, timer=fake_timer(), cache=False)


def _budget_total(plan):
    e = plan.estimate
    return e["startup"] + e["preprocess"] + e["training"] + e["validation"] + e["final_validation"] + \
        e["epoch_overhead"]


def test_isotropic_mri_plans_3d_with_zscore(costs3d):
    fp = synthetic_fp([2.0, 2.0, 2.0], [96, 112, 96], jitter=0.1)
    plan = make_plan(fp, costs3d, 180, "cpu")
    c = plan.config
    assert c["model"]["spatial_dims"] == 3 and "slice_axis" not in c["model"]
    np.testing.assert_allclose(c["preprocess"]["spacing"],
                               np.median([cs["spacing_ras"] for cs in fp["cases"]], axis=0), atol=1e-3)
    assert c["preprocess"]["normalize"] in ("zscore", "zscore_nonzero")
    assert plan.decision("spacing").because.startswith("median spacing of 6 cases")
    assert "preprocess.normalize" not in plan.extras
    # the patch divides by the net's divisor, the depth pools while the smallest axis is >= 8
    patch, depth = c["train"]["patch_size"], c["model"]["params"]["depth"]
    assert all(p % 2 ** depth == 0 for p in patch) and 4 <= min(patch) // 2 ** depth < 8
    # budget accounting: everything fits, validation passes stay within 10 %
    assert _budget_total(plan) <= 180 and plan.estimate["validation"] <= 0.1 * 180 + 1e-6
    assert c["train"]["iterations"] >= steps_wanted(180)
    assert c["train"]["scheduler"] == "poly" and c["train"]["budget"] is not None
    assert plan.extras["train.threads"] == costs3d.threads
    cfg = load_config(c)
    assert cfg.total_iterations == c["train"]["iterations"]


def test_anisotropic_spacing_takes_the_coarse_axis_rule_and_slices(costs2d):
    # 0.8 x 0.8 x 5 mm, some cases thinner: the coarse axis gets the 10th percentile of its spacings
    fp = synthetic_fp([0.8, 0.8, 5.0], [400, 400, 36], coarse_spread=[5.0, 5.0, 4.0, 5.0, 6.0, 3.5])
    spacing, why, axis = target_spacing(fp)
    assert axis == 2 and "10th percentile" in why
    assert spacing[2] == pytest.approx(np.percentile([5.0, 5.0, 4.0, 5.0, 6.0, 3.5], 10))
    assert spacing[:2] == pytest.approx([0.8, 0.8])
    plan = make_plan(fp, costs2d, 600, "cpu")
    m = plan.config["model"]
    assert m["spatial_dims"] == 2 and m["slice_axis"] == 2 and m["context_slices"] in (1, 2)
    assert plan.decision("dims").value == "2.5D"
    assert len(plan.config["train"]["patch_size"]) == 2
    cfg = load_config(plan.config)
    assert cfg.model.slice_axis == 2


def test_nnunet_rule_needs_fewer_voxels_on_the_coarse_axis_too():
    # 3x coarser spacing but as many voxels along it: the median stays
    fp = synthetic_fp([1.0, 1.0, 4.0], [64, 64, 64])
    spacing, _, axis = target_spacing(fp)
    assert axis is None and spacing == pytest.approx([1.0, 1.0, 4.0])


def test_ct_gets_ct_normalisation(costs3d):
    fp = synthetic_fp([1.0, 1.0, 1.0], [128, 128, 128], ct=True, channels=("CT",))
    plan = make_plan(fp, costs3d, 600, "cpu")
    assert plan.extras["preprocess.normalize"] == "ct"
    stats = plan.extras["preprocess.intensity_stats"]
    assert stats == [{"lower": -980.0, "upper": 1500.0, "mean": 60.0, "std": 250.0}]
    assert plan.config["train"]["augment"]["gamma_prob"] == 0.0
    text = plan_yaml(plan)
    assert "normalize: ct" in text and "not yet a config key" not in text  # a real key, written as one
    cfg = load_config(yaml.safe_load(text))
    assert cfg.preprocess.normalize == "ct" and cfg.preprocess.intensity_stats[0].lower == -980.0


def test_ct_normalize_clips_and_scales():
    x = np.array([[-2000.0, -500.0, 0.0, 40.0, 3000.0]], dtype=np.float32)[:, :, None, None]
    stats = [{"lower": -1000.0, "upper": 1500.0, "mean": 60.0, "std": 250.0}]
    want = (np.clip(x, -1000, 1500) - 60) / 250
    np.testing.assert_allclose(ct_normalize(x, stats), want, rtol=1e-6)
    np.testing.assert_allclose(ct_normalize(torch.from_numpy(x), stats).numpy(), want, rtol=1e-6)
    from monai.data import MetaTensor

    out = CTNormalized("image", stats)({"image": MetaTensor(torch.from_numpy(x), affine=torch.eye(4) * 2)})
    assert isinstance(out["image"], MetaTensor) and out["image"].affine[0, 0] == 2
    np.testing.assert_allclose(out["image"].numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError, match="channel"):
        ct_normalize(np.zeros((2, 3, 3, 3)), stats)


def test_small_budget_plans_a_smaller_net_or_patch_than_a_large_one(costs3d):
    fp = synthetic_fp([1.5, 1.5, 1.5], [128, 150, 128])
    tiny, large = make_plan(fp, costs3d, 60, "cpu"), make_plan(fp, costs3d, 4 * 3600, "cpu")

    def capacity(p):
        return math.prod(p.config["train"]["patch_size"]) * p.config["model"]["params"]["base_filters"]

    assert capacity(tiny) < capacity(large)
    assert math.prod(tiny.config["train"]["patch_size"]) <= math.prod(large.config["train"]["patch_size"])
    assert tiny.config["model"]["params"]["base_filters"] <= large.config["model"]["params"]["base_filters"]
    assert large.config["train"]["iterations"] > tiny.config["train"]["iterations"]
    # a long schedule affords rotation and scaling; a tiny one does not
    assert large.config["train"]["augment"]["rotate_prob"] > 0 and tiny.config["train"]["augment"]["rotate_prob"] == 0
    for p, b in ((tiny, 60), (large, 4 * 3600)):
        assert _budget_total(p) <= b
        load_config(p.config)


def test_no_budget_plans_for_quality_and_estimates_the_time(costs3d):
    fp = synthetic_fp([1.0, 1.0, 1.0], [160, 192, 160])
    plan = make_plan(fp, costs3d, None, "cpu")
    t = plan.config["train"]
    assert t["iterations"] == 250_000 and t["iters_per_epoch"] == 250 and t["optimizer"] == "sgd"
    assert plan.config["model"]["params"]["base_filters"] == 32
    assert math.prod(t["patch_size"]) <= 128 ** 3 and t["budget"] is None
    assert plan.estimate["total"] > plan.estimate["training"] > 0
    assert plan.decision("estimated time").value
    load_config(plan.config)


def test_a_budget_below_the_fixed_costs_is_an_error(costs3d):
    fp = synthetic_fp([1.0, 1.0, 1.0], [160, 192, 160])
    with pytest.raises(MedsegError, match="too small"):
        make_plan(fp, costs3d, 3, "cpu")


def test_sliding_window_count_matches_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for shape, win, ov in [((96, 112, 80), (48, 48, 48), 0.5), ((40, 30, 20), (32, 32, 32), 0.25),
                           ((130, 64, 64), (64, 64, 64), 0.5)]:
        padded = [max(s, w) for s, w in zip(shape, win)]
        interval = _get_scan_interval(padded, win, 3, (ov,) * 3)
        assert n_windows(shape, win, ov) == len(dense_patch_slices(padded, win, interval))


def test_written_plan_is_commented_and_validates(tmp_path, costs3d):
    fp = synthetic_fp([2.0, 2.0, 2.0], [96, 112, 96], root=str(tmp_path / "data"))
    plan = make_plan(fp, costs3d, 180, "cpu")
    out = write_plan(plan, tmp_path / "configs" / "plan.yaml")
    text = out.read_text()
    assert "spacing: [2.0, 2.0, 2.0]" in text and "# median spacing of 6 cases" in text
    assert "root: ../data" in text  # relative to the file
    cfg = load_config(out)
    assert cfg.train.threads == plan.extras["train.threads"]  # the measured thread count, as a real key
    assert cfg.data.root == str((tmp_path / "data").resolve())
    assert cfg.train.patch_size == plan.config["train"]["patch_size"]
    table = format_decisions(plan)
    header = table.splitlines()[0]
    assert header.split() == ["decision", "value", "because"]
    for name in ("spacing", "patch", "width", "batch", "threads", "iterations", "validation", "budget"):
        assert any(line.startswith(name) for line in table.splitlines()), name
    with pytest.raises(MedsegError, match="is a folder"):
        write_plan(plan, tmp_path)


def test_planned_config_trains_on_data_samples(tmp_path):
    plan = plan_dataset(SAMPLES, "3m", "cpu", cache_dir=tmp_path / "cache", timer=fake_timer())
    assert plan.config["model"]["spatial_dims"] == 3  # the samples are near-isotropic
    out = write_plan(plan, tmp_path / "plan.yaml")
    cfg = load_config(out, [f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                            "train.iterations=2", "train.budget=null", "train.tensorboard=false"])
    run = medseg3d.train(cfg)
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["iterations"] == "2" and (run / "best.pt").is_file()
    assert (run / "validation_metrics.csv").is_file()


def test_plan_command_writes_the_config_and_prints_the_table(tmp_path, capsys):
    from medseg3d.plan import plan_command

    lines = []
    out = tmp_path / "plan.yaml"
    assert plan_command(SAMPLES, "90s", "cpu", out, echo=lines.append, cache_dir=tmp_path / "cache",
                        timer=fake_timer()) == 0
    text = "\n".join(lines)
    assert "decision" in text and "iterations" in text and f"wrote {out}" in text
    assert load_config(out).train.budget is not None
    assert plan_command(SAMPLES, "3 parsecs", "cpu", tmp_path / "x.yaml", echo=lines.append,
                        cache_dir=tmp_path / "cache", timer=fake_timer()) == 1
    assert "error: --budget" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()
    assert plan_command(tmp_path / "missing", "90s", echo=lines.append, cache_dir=tmp_path / "cache",
                        timer=fake_timer()) == 1
    assert "dataset folder not found" in capsys.readouterr().err


def test_time_already_spent_comes_off_the_budget(tmp_path, costs3d):
    fp = synthetic_fp([2.0, 2.0, 2.0], [96, 112, 96])
    fresh, late = make_plan(fp, costs3d, 300, "cpu"), make_plan(fp, costs3d, 300, "cpu", spent_s=60)
    assert late.estimate["spent"] == 60 and late.estimate["total"] <= 300
    assert late.estimate["training"] < fresh.estimate["training"]
    # the trainer's budget covers the whole command, so both keep the whole 300 s; the late plan trains less
    assert fresh.config["train"]["budget"] == late.config["train"]["budget"] == "300s"
    assert fresh.estimate["training"] - late.estimate["training"] >= 50


def test_on_a_gpu_the_loader_workers_augment_alongside_the_step(costs3d):
    """The same measured costs on a GPU with 16 cores: the trainer runs 12 loader workers there, so a step
    costs the slower of the network's step and its batch's augmentation over 12 workers, not their sum; the
    plan gets more steps in the same budget and says why."""
    import dataclasses

    from medseg3d.plan.planner import _cost, _Setting

    gpu = dataclasses.replace(costs3d, device="cuda", cpus=16)
    s = _Setting(dims=3, slice_axis=None, context=0, in_ch=1, channels=1, out_ch=3, median=[96, 112, 96],
                 volume=[96, 112, 96], val_shapes=[])
    step = costs3d.step_seconds(3, 16, 3, [64, 64, 64], 2, 1, 3)
    aug = costs3d.augment_seconds(3, [64, 64, 64], [96, 112, 96], 1, False)
    assert _cost(costs3d, s, [64, 64, 64], 16, 3, 2, False) == pytest.approx(step + 2 * aug)
    assert _cost(gpu, s, [64, 64, 64], 16, 3, 2, False) == pytest.approx(max(step, 2 * aug / 12))
    fp = synthetic_fp([1.5, 1.5, 1.5], [128, 150, 128])
    on_cpu, on_gpu = make_plan(fp, costs3d, 600, "cpu"), make_plan(fp, gpu, 600, "cuda")
    per_step = lambda p: p.candidate["step_s"]  # noqa: E731
    assert per_step(on_gpu) <= per_step(on_cpu)
    assert "12 loader workers" in on_gpu.decision("iterations").because
    assert "12 loader workers" not in on_cpu.decision("iterations").because
