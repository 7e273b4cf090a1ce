"""The device benchmark with an injected timer (fake costs, no timed assertions): which thread count wins,
what is cached, and how the cost model extends measurements to other sizes and widths."""

import json
import math

import pytest
import torch

from medseg3d.models import build_model
from medseg3d.plan.benchmark import (DeviceCosts, flops_per_voxel, measure_device, net_depth, real_timer, step_flops,
                                     thread_candidates, verify)

from fake_costs import SEC_PER_FLOP, fake_timer


def test_flops_per_voxel_is_the_counted_forward():
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("unet", 3, 4, 3, base_filters=8, depth=3, norm="instance").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(torch.zeros(1, 4, 32, 48, 32))
    assert flops_per_voxel(3, 8, 3, 4, 3) * 32 * 48 * 32 == pytest.approx(c.get_total_flops(), rel=1e-9)


def test_depth_pools_while_the_axis_is_at_least_8():
    assert net_depth([48, 48, 48], 8) == 3          # 48 -> 24 -> 12 -> 6
    assert net_depth([64, 64, 64], 8) == 4          # bottom 4
    assert net_depth([16, 24, 24], 8) == 2
    assert net_depth([128, 128, 128], 32) == 3      # 2 * 32 * 2**3 = 512 bottom channels at most
    assert net_depth([256, 256], 32, dims=2) == 4   # 2D keeps base * 2**depth
    assert thread_candidates(2) == [1, 2] and thread_candidates(64) == [1, 2, 4, 8, 16, 32, 64]


def test_measure_picks_the_fastest_threads_and_caches(tmp_path, monkeypatch):
    monkeypatch.setattr("medseg3d.plan.benchmark.free_cores", lambda: 4)
    calls = []
    costs = measure_device("cpu", dims=(3,), in_channels=4, out_channels=4, volume=[40, 48, 40],
                           timer=fake_timer(calls, best_threads=3), cache_dir=tmp_path)
    assert costs.threads == 3 and set(costs.thread_seconds) == {"1", "2", "3", "4"}
    kinds = {k for k, _ in calls}
    assert {"threads", "step", "forward", "augment", "preprocess", "progress_png", "checkpoint"} <= kinds
    steps = [s for k, s in calls if k == "step"]
    assert steps and all(s["threads"] == 3 for s in steps)  # every network timing at the chosen count
    stored = json.loads((tmp_path / "device_benchmark.json").read_text())
    assert any(isinstance(v, dict) and v["threads"] == 3 for v in stored.values())
    # a second run reuses every measurement
    again = []
    costs2 = measure_device("cpu", dims=(3,), in_channels=4, out_channels=4, volume=[40, 48, 40],
                            timer=fake_timer(again), cache_dir=tmp_path)
    assert again == [] and costs2.threads == 3
    # refresh measures anew
    fresh = []
    measure_device("cpu", dims=(3,), in_channels=4, out_channels=4, volume=[40, 48, 40],
                   timer=fake_timer(fresh, best_threads=1), cache_dir=tmp_path, refresh=True)
    assert any(k == "threads" for k, _ in fresh)


def test_cost_model_interpolates_and_verify_anchors(tmp_path):
    costs = measure_device("cpu", dims=(3,), in_channels=1, out_channels=2, volume=[64, 64, 64],
                           timer=fake_timer(), cache=False)
    # the fake is linear in FLOPs, so the fitted model reproduces it at any size and width
    for base, patch, batch in [(8, [64, 64, 64], 2), (16, [48, 64, 48], 2), (24, [32, 32, 32], 4)]:
        depth = net_depth(patch, base)
        spec = {"dims": 3, "base_filters": base, "depth": depth, "patch": patch, "batch": batch,
                "in_channels": 1, "out_channels": 2}
        expected = 0.01 + 3 * step_flops(spec) * SEC_PER_FLOP
        assert costs.step_seconds(3, base, depth, patch, batch, 1, 2) == pytest.approx(expected, rel=0.35)
    small = costs.step_seconds(3, 8, 3, [32, 32, 32], 2, 1, 2)
    big = costs.step_seconds(3, 8, 3, [64, 64, 64], 2, 1, 2)
    assert big > small
    # a verified size is returned as measured and pulls its neighbours with it
    spec = {"dims": 3, "base_filters": 8, "depth": 4, "patch": [64, 64, 64], "batch": 2, "in_channels": 1,
            "out_channels": 2}
    before = costs.step_seconds(3, 8, 4, [64, 64, 80], 2, 1, 2)
    [(_, measured)] = verify(costs, [("step", spec)], timer=lambda k, s: 10.0, cache=False)
    assert measured == 10.0 and costs.step_seconds(3, 8, 4, [64, 64, 64], 2, 1, 2) == 10.0
    assert costs.step_seconds(3, 8, 4, [64, 64, 80], 2, 1, 2) > 2 * before
    # the cached form round-trips
    assert DeviceCosts.from_dict(json.loads(json.dumps(costs.to_dict()))).step_seconds(
        3, 8, 4, [64, 64, 64], 2, 1, 2) == 10.0
    assert costs.augment_seconds(3, [48] * 3, [64] * 3, 1, spatial=True) > costs.augment_seconds(
        3, [48] * 3, [64] * 3, 1, spatial=False)


def test_real_timer_runs_the_real_step_and_augmentation():
    timer = real_timer(torch.device("cpu"))
    spec = {"dims": 3, "base_filters": 4, "depth": 1, "patch": [8, 8, 8], "batch": 1, "in_channels": 2,
            "out_channels": 3, "threads": 1}
    for kind in ("step", "forward"):
        t = timer(kind, spec)
        assert math.isfinite(t) and t > 0
    t = timer("augment", {"dims": 3, "patch": [8, 8, 8], "volume": [12, 12, 12], "channels": 2, "spatial": True,
                          "classes": 3})
    assert math.isfinite(t) and t > 0
    assert torch.get_num_threads() >= 1
