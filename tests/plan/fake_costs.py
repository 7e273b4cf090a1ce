"""Fake device costs for planner tests: deterministic, linear in FLOPs (no timing)."""

import math

from medseg3d.plan.benchmark import step_flops

SEC_PER_FLOP = 1e-11


def fake_timer(calls=None, best_threads=1):
    """Step = 0.01 s + 3 x forward FLOPs x 1e-11 s; threads other than ``best_threads`` are 1.5x slower."""

    def timer(kind, spec):
        if calls is not None:
            calls.append((kind, spec))
        if kind in ("step", "threads", "forward"):
            t = 0.01 + (3 if kind != "forward" else 1) * step_flops(spec) * SEC_PER_FLOP
            return t * (1.0 if kind != "threads" or spec["threads"] == best_threads else 1.5)
        if kind == "augment":
            extra = 2e-8 if spec["spatial"] else 0.0
            return 1e-8 * math.prod(spec["volume"]) + (2e-8 + extra) * math.prod(spec["patch"]) * spec["channels"]
        if kind == "preprocess":
            return 5e-8 * math.prod(spec["volume"]) * spec["channels"]
        if kind == "startup":
            return 4.0
        if kind == "progress_png":
            return 0.3
        if kind == "checkpoint":
            return 0.01
        raise AssertionError(kind)

    return timer
