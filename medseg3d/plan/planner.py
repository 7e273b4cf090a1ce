"""The planner: a dataset fingerprint + the device's measured costs + a wall-clock budget -> a config.

nnU-Net plans from a fingerprint and a GPU-memory target; this planner plans for a time budget on the device
at hand. Every choice is a :class:`Decision` with the number behind it:

- **spacing**: the median spacing of the training cases (RAS axis order); when one axis is more than 3x
  coarser than the others *and* has more than 3x fewer voxels (nnU-Net's rule), that axis gets the 10th
  percentile of its spacings (at least the finest other spacing).
- **2D or 3D**: with a target spacing more than 3x coarser on one axis, a 2.5D U-Net on slices across that axis
  (medseg3d's U-Net pools every axis alike, so in 3D the coarse axis would run out before the others);
  else 3D.
- **patch, depth, width, batch**: candidates from the median image at the target spacing (after the
  foreground crop) shrunk axis by axis (the axis covering most of the image first, as nnU-Net), each with a
  depth that pools while the smallest axis is at least 8 and a bottom of at most 512 channels, for the
  widths and batch sizes of the ladder. Each candidate's step costs the measured network step plus the
  measured augmentation of its batch. With a budget, the candidates that still get enough optimiser steps
  (:func:`steps_wanted`: 100 in 3 minutes, growing as budget**0.6) compete on
  ``2 log2(coverage) + 0.5 log2(width) + log2(steps / wanted, at most 4) + 0.25 log2(batch)`` (coverage: share of
  the median image inside a patch, at most 1); the winner trains for as many steps as the budget leaves. Without a budget the plan is nnU-Net's
  (1000 epochs x 250 iterations, width 32, the patch capped at 128^3 voxels) with its estimated time here.
- **budget accounting**: startup (a fresh interpreter importing the trainer, measured, + 2 s), preprocessing (the fingerprint's read times + the measured resampling
  rate), validation passes (at most 10 % of the budget: sliding windows over the validation cases of fold 0
  times the measured window cost), the final validation (the same plus 25 % for HD95) and the per-epoch
  checkpoint and plot are taken off the budget before the training steps are counted; ``train.budget`` is
  the whole budget (the trainer's clock covers the whole command and keeps the measured validation and the
  final validation inside it), so a slower step ends training in time.
- **threads** (measured), **learning rate** (Adam 3e-3 with poly decay over the planned steps for short
  schedules, 1e-3 for longer ones, nnU-Net's SGD 0.01 without a budget), **augmentation** (mirroring,
  intensity, gamma for MRI, noise; rotation and scaling only when the plan has >= 1000 steps and can afford
  them), **normalisation** (CT: clip to the foreground [p0.5, p99.5] and z-score with the dataset's mean/std;
  MRI: z-score per image, inside the nonzero mask when cropping removed more than a quarter of the image),
  **validation frequency**, **sliding window** (overlap, windows per forward; the window is the training
  patch: a larger one is timed and reported, not taken, because instance norm sees other statistics in it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import MedsegError
from ..runtime import loader_workers
from .benchmark import DeviceCosts, net_depth, parameter_count, unet_params

#: seconds for imports, reading the case list, building the model and the first batch when not measured
STARTUP_S = 5.0
#: share of the budget kept free for what the estimates miss
MARGIN = 0.05
#: validation passes during training take at most this share of the budget
VAL_SHARE = 0.10
#: HD95 on top of the final validation's sliding windows
FINAL_VAL_FACTOR = 1.25
#: per-epoch bookkeeping at most this share of an epoch
EPOCH_OVERHEAD_SHARE = 0.05
#: at least this many iterations per epoch (the demo's 25)
MIN_EPOCH = 25
#: nnU-Net's schedule when there is no budget
NNUNET_EPOCHS, NNUNET_ITERS = 1000, 250
#: plans with at least this many steps may afford spatial augmentation
SPATIAL_AUG_STEPS = 1000
#: how much a patch's share of the image, the net's width and the steps beyond the wanted ones count in a
#: candidate's score (context first, then steps, then width: on the CPU runs measured here a wider net on a small
#: patch lost to a narrow one on a large patch, and a wide net with few steps to a narrow one with many, in the
#: same time)
COVERAGE_WEIGHT, WIDTH_WEIGHT, STEPS_WEIGHT = 2.0, 0.5, 1.0
ANISO_RATIO = 3.0

LADDER = {3: {"widths": [8, 16, 24, 32], "fallback_widths": [4], "batches": [2, 4], "min_side": 16,
              "max_side": 256, "quality_voxels": 128 ** 3, "quality_width": 32, "quality_batch": 2},
          2: {"widths": [16, 32, 48, 64], "fallback_widths": [8], "batches": [8, 16, 32], "min_side": 32,
              "max_side": 1024, "quality_voxels": 512 ** 2, "quality_width": 32, "quality_batch": 16}}


@dataclass
class Decision:
    """One planned value: ``name`` (what), ``value``, ``because`` (the number behind it) and ``key`` (the
    config key it sets, dotted; None for what is only reported)."""

    name: str
    value: Any
    because: str
    key: str | None = None


@dataclass
class Plan:
    """A planned config (valid against today's schema), the decisions behind it, ``extras`` (planned values
    for config keys the schema does not have yet, by dotted key), the time estimate and the device."""

    config: dict
    decisions: list[Decision]
    extras: dict[str, Any] = field(default_factory=dict)
    estimate: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    budget_s: float | None = None
    candidate: dict[str, Any] = field(default_factory=dict)

    def decision(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name:
                return d
        raise KeyError(name)

    def value(self, key: str) -> Any:
        """A config value by dotted key (``train.patch_size``)."""
        node: Any = self.config
        for part in key.split("."):
            node = node[part]
        return node


# ---- spacing, shapes -------------------------------------------------------------------------------------------
def _fmt_mm(v: Sequence[float]) -> str:
    return "x".join(f"{x:.3g}" for x in v)


def target_spacing(fp: dict) -> tuple[list[float], str, int | None]:
    """(target spacing in RAS order, why, the anisotropic axis or None) by nnU-Net's rule."""
    sp = np.array([c["spacing_ras"] for c in fp["cases"]], dtype=float)
    shapes = np.array([c["shape_ras"] for c in fp["cases"]], dtype=float)
    target = np.median(sp, axis=0)
    n = len(sp)
    why = f"median spacing of {n} case{'s' if n != 1 else ''}"
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    median_shape = np.median(shapes * sp / target, axis=0)
    aniso_spacing = target[worst] > ANISO_RATIO * max(target[others])
    aniso_voxels = median_shape[worst] * ANISO_RATIO < min(median_shape[others])
    if aniso_spacing and aniso_voxels:
        p10 = float(np.percentile(sp[:, worst], 10))
        finest_other = float(max(target[others]))
        new = max(p10, finest_other + 1e-5) if p10 < finest_other else p10
        why = (f"median spacing of {n} cases ({_fmt_mm(target)} mm); axis {worst} is "
               f"{target[worst] / finest_other:.1f}x coarser with {median_shape[worst]:.0f} vs "
               f">= {min(median_shape[others]):.0f} voxels, so it gets the 10th percentile of its spacings "
               f"({p10:.3g} mm), nnU-Net's rule")
        target[worst] = new
        return [round(float(v), 3) for v in target], why, worst
    return [round(float(v), 3) for v in target], why, None


def planned_geometry(fp: dict) -> dict[str, Any]:
    """The data-side decisions the device benchmark also needs: target ``spacing`` (and why), each case's
    preprocessed ``shapes``, their ``median``, ``dims`` (2 for strongly anisotropic spacing, else 3),
    ``slice_axis``, ``context_slices`` and the spacing ``ratio``."""
    spacing, why, _ = target_spacing(fp)
    shapes = shapes_at(fp, spacing)
    median = [float(v) for v in np.median(np.array(shapes), axis=0)]
    ratio = max(spacing) / min(spacing)
    dims, axis, context = 3, None, 0
    if ratio > ANISO_RATIO:
        dims, axis = 2, int(np.argmax(spacing))
        context = 2 if median[axis] >= 16 else 1
    return {"spacing": spacing, "spacing_because": why, "shapes": shapes, "median": median, "dims": dims,
            "slice_axis": axis, "context_slices": context, "ratio": ratio,
            "volume": [max(1, int(round(v))) for v in median]}


def shapes_at(fp: dict, spacing: Sequence[float]) -> list[list[float]]:
    """Each case's foreground-cropped shape (RAS) after resampling to ``spacing``."""
    sp = np.asarray(spacing, float)
    return [list(np.asarray(c["crop_shape_ras"], float) * np.asarray(c["spacing_ras"], float) / sp)
            for c in fp["cases"]]


def validation_ids(fp: dict, num_folds: int = 5, seed: int = 0, fold: int = 0) -> list[str]:
    """The cases the trainer validates on (its seeded splits, fold 0)."""
    from ..data.datasets import make_splits

    ids = [c["id"] for c in fp["cases"]]
    if len(ids) < 2:
        raise MedsegError(f"{fp.get('root', 'dataset')}: need at least 2 training cases to plan a run with "
                          f"validation, found {len(ids)}")
    return list(make_splits(ids, num_folds, seed)[fold]["val"])


def n_windows(shape: Sequence[float], window: Sequence[int], overlap: float) -> int:
    """Windows of MONAI's sliding window over ``shape`` (the image is padded up to the window)."""
    total = 1
    for s, w in zip(shape, window):
        s = max(int(math.ceil(s)), w)
        interval = max(int(w * (1 - overlap)), 1) if s != w else w
        total *= max(0, math.ceil((s - w) / interval)) + 1
    return total


def steps_wanted(budget_s: float) -> int:
    """Optimiser steps a plan should reach within ``budget_s``: 100 in 3 minutes, growing as budget**0.6 so
    that more time buys both more steps and a larger patch or net. (Measured on this project's 2-core CPU with a
    real-anatomy T1 set at 2 mm, 3 minutes: a 48³ patch trained for 250 steps scored 0.919 mean Dice and a
    64³ patch for 113 steps 0.920, both above a 24×32×24 patch trained for 374 steps, 0.911.)"""
    return max(50, int(round(100 * (budget_s / 180.0) ** 0.6)))


def _roundup(v: float, m: int) -> int:
    return int(math.ceil(v / m) * m)


def patch_candidates(median: Sequence[float], dims: int, min_side: int, max_side: int) -> list[tuple[int, ...]]:
    """Patches from the whole median image (rounded up to 8) down to ``min_side``, shrinking by 8 the axis
    whose patch covers the largest share of the image (nnU-Net's order)."""
    med = np.maximum(np.asarray(median, float), 1.0)
    p = [min(max(_roundup(m, 8), min_side), max_side) for m in med]
    out = [tuple(p)]
    while True:
        ratios = [p[i] / med[i] if p[i] - 8 >= min_side else -1 for i in range(dims)]
        ax = int(np.argmax(ratios))
        if ratios[ax] < 0:
            break
        p[ax] -= 8
        out.append(tuple(p))
    return out


def fit_divisor(patch: Sequence[int], base: int, dims: int) -> tuple[tuple[int, ...], int]:
    """(patch rounded down to the net's divisor, depth) for a U-Net of width ``base``."""
    depth = net_depth(patch, base, dims=dims)
    div = 2 ** depth
    return tuple(max(div, (p // div) * div) for p in patch), depth


# ---- the plan -------------------------------------------------------------------------------------------------
@dataclass
class _Setting:
    dims: int
    slice_axis: int | None
    context: int
    in_ch: int            # network inputs (channels x slices for 2.5D)
    channels: int         # image channels
    out_ch: int
    median: list[float]   # median shape the patch covers (in-plane for 2D)
    volume: list[int]     # typical preprocessed volume (3D)
    val_shapes: list[list[float]]


def _cost(costs: DeviceCosts, s: _Setting, patch, base, depth, batch, spatial: bool) -> float:
    """Seconds per training step: the network's step plus the augmentation of its batch, or, where the trainer
    runs loader workers (on a GPU), the slower of the step and the batch's augmentation spread over them."""
    step = costs.step_seconds(s.dims, base, depth, patch, batch, s.in_ch, s.out_ch)
    aug = costs.augment_seconds(s.dims, patch, s.volume, s.channels, spatial)
    workers = loader_workers(costs.device, costs.cpus)
    return max(step, batch * aug / workers) if workers else step + batch * aug


def _step_how(costs: DeviceCosts, batch: int) -> str:
    workers = loader_workers(costs.device, costs.cpus)
    return (f"the measured step, with the augmentation of {batch} on {workers} loader workers alongside" if workers
            else f"measured step + augmentation of {batch}")


def _val_pass(costs: DeviceCosts, s: _Setting, window, base, depth, overlap: float, sw_batch: int) -> float:
    """Seconds of one validation pass: the sliding window over every validation case."""
    total = 0.0
    t_fwd = costs.forward_seconds(s.dims, base, depth, window, sw_batch, s.in_ch, s.out_ch)
    for shape in s.val_shapes:
        if s.dims == 3:
            n = n_windows(shape, window, overlap)
        else:
            plane = [v for i, v in enumerate(shape) if i != s.slice_axis]
            n = n_windows(plane, window, overlap) * int(math.ceil(shape[s.slice_axis]))
        total += math.ceil(n / sw_batch) * t_fwd
    return total * 1.1  # blending and stitching


def make_plan(fp: dict, device_costs: DeviceCosts, budget_s: float | None = None, device: str = "auto", *,
              spent_s: float = 0.0, name: str | None = None, num_folds: int = 5, seed: int = 0) -> Plan:
    """Plan a config for the fingerprinted dataset on the measured device within ``budget_s`` seconds of wall
    clock (None: plan for quality as nnU-Net and estimate the time). ``spent_s`` is time already used out of
    the budget (e.g. fingerprinting and benchmarking inside ``medseg3d train DATASET``)."""
    if budget_s is not None and budget_s <= 0:
        raise MedsegError(f"the budget must be positive, got {budget_s} s")
    ctx = _Planning(fp, device_costs, budget_s, float(spent_s))
    _plan_geometry(ctx, num_folds, seed)
    _plan_normalisation(ctx)
    _plan_network(ctx)
    _plan_training(ctx)
    _plan_window(ctx)
    return Plan(_config(ctx, name, num_folds), ctx.decisions, ctx.extras, ctx.est, device_costs.device, budget_s,
                ctx.chosen)


@dataclass
class _Planning:
    """What the planning steps share: the inputs, the decisions so far and the chosen candidate."""

    fp: dict
    costs: DeviceCosts
    budget_s: float | None
    spent: float
    decisions: list[Decision] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    est: dict[str, float] = field(default_factory=dict)
    geo: dict[str, Any] = field(default_factory=dict)
    setting: Any = None
    plane_median: list[float] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    normalize: str = "zscore_nonzero"
    ct: bool = False
    chosen: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    sw_batch: int = 2

    def add(self, *a, **k) -> None:
        self.decisions.append(Decision(*a, **k))

    @property
    def channels(self) -> list[str]:
        return [c["name"] for c in self.fp["channels"]]


def _plan_geometry(ctx: _Planning, num_folds: int, seed: int) -> None:
    """Target spacing, orientation, 3D or 2.5D (slice axis, context slices)."""
    fp = ctx.fp
    geo = ctx.geo = planned_geometry(fp)
    spacing, median, dims, axis, context, ratio = (geo["spacing"], geo["median"], geo["dims"], geo["slice_axis"],
                                                   geo["context_slices"], geo["ratio"])
    ctx.add("spacing", spacing, geo["spacing_because"], "preprocess.spacing")
    ctx.val_ids = validation_ids(fp, num_folds, seed)
    by_id = {c["id"]: s for c, s in zip(fp["cases"], geo["shapes"])}
    orients = fp.get("orientations", {})
    ctx.add("orientation", "RAS", f"{len(orients)} orientation(s) among {len(fp['cases'])} cases "
            f"({', '.join(f'{k} x{v}' for k, v in orients.items())}); every case is reoriented to RAS",
            "preprocess.orientation")
    if dims == 2:
        ctx.add("dims", "2.5D", f"target spacing {_fmt_mm(spacing)} mm is {ratio:.1f}x coarser on axis {axis} "
                f"(> {ANISO_RATIO:g}); medseg3d's U-Net pools every axis alike", "model.spatial_dims")
        ctx.add("slice axis", axis, f"the coarse axis ({spacing[axis]:.3g} mm)", "model.slice_axis")
        ctx.add("context slices", context, f"{context} neighbouring slice(s) each side as channels (median "
                f"{median[axis]:.0f} slices{'' if context == 2 else ', fewer than 16'})", "model.context_slices")
        ctx.plane_median = [m for i, m in enumerate(median) if i != axis]
    else:
        ctx.add("dims", "3D", f"target spacing {_fmt_mm(spacing)} mm: largest/smallest {ratio:.2f} <= "
                f"{ANISO_RATIO:g}", "model.spatial_dims")
        ctx.plane_median = list(median)
    channels = len(ctx.channels)
    ctx.setting = _Setting(dims, axis, context, channels * (2 * context + 1), channels, len(fp["labels"]),
                           ctx.plane_median, [max(1, int(round(v))) for v in median],
                           [by_id[i] for i in ctx.val_ids])


def _plan_normalisation(ctx: _Planning) -> None:
    """CT (clip + the dataset's z-score, nnU-Net's CTNormalization) or a per-image z-score for MRI."""
    fp = ctx.fp
    ct = [c for c in fp["channels"] if c["ct_like"]]
    ctx.ct = bool(ct)
    if ct:
        ctx.extras["preprocess.normalize"] = "ct"
        ctx.extras["preprocess.intensity_stats"] = [
            {"lower": c["p00_5"], "upper": c["p99_5"], "mean": c["mean"], "std": c["std"]} for c in fp["channels"]]
        ctx.add("normalisation", "ct (clip + dataset z-score)",
                "; ".join(f"{c['name']}: CT-like ({c['ct_reason']}), clip to [{c['p00_5']:.0f}, {c['p99_5']:.0f}] "
                          f"then (x - {c['mean']:.1f}) / {c['std']:.1f}" for c in ct), "preprocess.normalize")
        ctx.normalize = "zscore"  # (written as 'ct' with its statistics: the extras above)
        return
    rel = float(np.median([math.prod(c["crop_shape_ras"]) / max(c["voxels"], 1) for c in fp["cases"]]))
    ctx.normalize = "zscore_nonzero" if rel < 0.75 else "zscore"
    ctx.add("normalisation", ctx.normalize, "MRI-like intensities (no channel CT-like): z-score per image"
            + (f", inside the nonzero mask: the foreground crop keeps {rel:.0%} of the median image (< 75%)"
               if rel < 0.75 else f" over all voxels: the foreground crop keeps {rel:.0%} of the median image"),
            "preprocess.normalize")


def _plan_network(ctx: _Planning) -> None:
    """The candidate (patch, width, depth, batch, overlap, spatial augmentation) and its schedule."""
    fp, costs, s = ctx.fp, ctx.costs, ctx.setting
    dims, in_ch, n_out = s.dims, s.in_ch, s.out_ch
    pre_s = (sum(c.get("read_seconds", 0.0) for c in fp["cases"])
             + costs.preprocess_seconds(sum(c["voxels"] * s.channels for c in fp["cases"])))
    startup = costs.startup_seconds(STARTUP_S)
    lad = LADDER[dims]
    ctx.sw_batch = (2 if costs.device == "cpu" else 4) if dims == 3 else (16 if costs.device == "cpu" else 64)
    med_vox = math.prod(ctx.plane_median)

    def evaluate(patch, base, batch, overlap, spatial) -> dict:
        patch, depth = fit_divisor(patch, base, dims)
        params = parameter_count(dims, base, depth, in_ch, n_out)
        cover = min(math.prod(patch) / max(med_vox, 1.0), 1.0)
        val = _val_pass(costs, s, patch, base, depth, overlap, ctx.sw_batch)
        return {"patch": patch, "base": base, "depth": depth, "batch": batch, "in_ch": in_ch, "out_ch": n_out,
                "step_s": _cost(costs, s, patch, base, depth, batch, spatial), "val_s": val,
                "final_val_s": val * FINAL_VAL_FACTOR, "params": params, "coverage": cover,
                "overhead_s": costs.epoch_overhead_seconds(params), "overlap": overlap, "spatial": spatial,
                "score": COVERAGE_WEIGHT * math.log2(cover) + WIDTH_WEIGHT * math.log2(base)
                + 0.25 * math.log2(batch)}

    patches = patch_candidates(ctx.plane_median, dims, lad["min_side"], lad["max_side"])
    ctx.est.update(startup=startup, preprocess=pre_s)
    if ctx.budget_s is None:
        c = _quality(evaluate, patches, lad)
        train_s = NNUNET_EPOCHS * NNUNET_ITERS * c["step_s"]
        n_val = max(0, int(VAL_SHARE * train_s / max(c["val_s"], 1e-9)))
        val_every = max(1, math.ceil((NNUNET_EPOCHS - 1) / n_val)) if n_val else NNUNET_EPOCHS
        ctx.chosen = {**c, "steps": NNUNET_EPOCHS * NNUNET_ITERS, "ipe": NNUNET_ITERS, "epochs": NNUNET_EPOCHS,
                      "val_every": val_every, "passes": (NNUNET_EPOCHS - 1) // val_every}
        ctx.schedule = {"want": None, "avail": None}
        return
    budget_s = ctx.budget_s
    want = steps_wanted(budget_s)
    avail = budget_s - ctx.spent - startup - pre_s - MARGIN * budget_s
    chosen = _fit_budget(evaluate, patches, lad, avail, budget_s, want, 0.5)
    if chosen is None or chosen["final_val_s"] > VAL_SHARE * budget_s:  # fewer windows
        chosen = _fit_budget(evaluate, patches, lad, avail, budget_s, want, 0.25) or chosen
    if chosen is None:
        chosen = _smallest(evaluate, patches, lad, avail, budget_s)
    if chosen["steps"] < 20:
        need = ctx.spent + startup + pre_s + chosen["final_val_s"] + 20 * chosen["step_s"]
        raise MedsegError(f"a budget of {budget_s:.0f} s is too small for {fp.get('root', 'this dataset')} on "
                          f"{costs.name}: startup, preprocessing and the final validation alone take about "
                          f"{need - 20 * chosen['step_s']:.0f} s; give at least {math.ceil(need / 0.9):.0f} s")
    ctx.chosen = chosen
    ctx.schedule = {"want": want, "avail": avail}


def _plan_training(ctx: _Planning) -> None:
    """The decisions of the chosen candidate: network, steps, optimiser, validation, augmentation, budget."""
    c, costs, budget_s, est = ctx.chosen, ctx.costs, ctx.budget_s, ctx.est
    dims = ctx.setting.dims
    iters, ipe, epochs, passes, val_every = c["steps"], c["ipe"], c["epochs"], c["passes"], c["val_every"]
    est.update(training=iters * c["step_s"], validation=passes * c["val_s"], final_validation=c["final_val_s"],
               epoch_overhead=epochs * c["overhead_s"])
    est["total"] = sum(est.values())
    if ctx.spent:
        est["spent"] = ctx.spent
        est["total"] += ctx.spent
    if budget_s is None:
        ctx.schedule["lr"] = ("sgd", 0.01, "nnU-Net's SGD (momentum 0.99, Nesterov) with poly decay over "
                              f"{NNUNET_EPOCHS} epochs x {NNUNET_ITERS} iterations")
        steps_because = f"nnU-Net's {NNUNET_EPOCHS} epochs x {NNUNET_ITERS} iterations (no budget)"
    else:
        short = iters <= 2000
        ctx.schedule["lr"] = ("adam", 3e-3 if short else 1e-3, f"{iters} steps: Adam "
                              f"{'3e-3 (a short schedule needs large early steps)' if short else '1e-3'} "
                              f"with poly decay to 0 at the last planned step")
        want, avail = ctx.schedule["want"], ctx.schedule["avail"]
        steps_because = (f"{budget_s:.0f} s budget: {avail - est['validation'] - est['epoch_overhead']:.0f} s "
                         f"for training at {c['step_s']:.3f} s/step ({_step_how(ctx.costs, c['batch'])}); the "
                         f"plan wanted >= {want}")
        if iters < want:
            steps_because += f" (the budget is too small for {want}; this is the smallest candidate)"
    patch, base, depth, batch = c["patch"], c["base"], c["depth"], c["batch"]
    ctx.add("patch", list(patch), f"{c['coverage']:.0%} of the median image "
            f"{'x'.join(f'{m:.0f}' for m in ctx.plane_median)} at the target spacing"
            + ("" if budget_s is None else f"; score 2 log2(coverage)+0.5 log2(width)+log2(steps/wanted)+0.25 log2(batch) = "
               f"{c['score']:.2f}, best that reaches the wanted steps"), "train.patch_size")
    ctx.add("depth", depth, f"pool while the smallest patch axis ({min(patch)}) is >= 8 (bottom "
            f"{min(patch) // 2 ** depth}), at most 512 bottom channels; divisor {2 ** depth}", "model.params.depth")
    ctx.add("width", base, f"{c['params'] / 1e6:.2f} M parameters; a step takes {c['step_s']:.3f} s on "
            f"{costs.name} (benchmark)" + (" (nnU-Net's 32)" if budget_s is None else ""),
            "model.params.base_filters")
    ctx.add("batch", batch, "nnU-Net's minimum of 2" if dims == 3 and batch == 2 else
            f"{batch} per step ({'slices' if dims == 2 else 'patches'})", "train.batch_size")
    if costs.device == "cpu":
        ctx.extras["train.threads"] = costs.threads
        ctx.add("threads", costs.threads, "fastest reference step: " + ", ".join(
            f"{k} thread{'s' if k != '1' else ''} {v:.3f} s" for k, v in costs.thread_seconds.items()),
            "train.threads")
    ctx.add("iterations", iters, steps_because, "train.iterations")
    ctx.add("epoch length", ipe, f"iterations per epoch: at least {MIN_EPOCH}, and enough that last.pt + "
            f"progress.png ({c['overhead_s']:.2f} s) stay under {EPOCH_OVERHEAD_SHARE:.0%} of an epoch"
            if budget_s is not None else "nnU-Net's 250", "train.iters_per_epoch")
    opt, lr, why = ctx.schedule["lr"]
    ctx.add("optimizer", opt, why, "train.optimizer")
    ctx.add("learning rate", lr, "poly (power 0.9) over the planned steps", "train.lr")
    share = f"{VAL_SHARE:.0%} of {'the budget' if budget_s is not None else 'training'}"
    n_val = len(ctx.val_ids)
    ctx.add("validation", val_every, (
        f"every {val_every} epoch(s): {passes} pass(es) of {c['val_s']:.1f} s over {n_val} validation case(s) = "
        f"{est['validation']:.0f} s <= {share}, then the final one") if passes else (
        f"only the final validation: a pass over {n_val} validation case(s) takes {c['val_s']:.1f} s and more "
        f"would exceed {share}"), "train.val_every")
    ctx.add("overlap", c["overlap"], f"a validation pass at this overlap takes {c['val_s']:.1f} s", "infer.overlap")
    ctx.add("windows per forward", ctx.sw_batch, f"default for a {'CPU' if costs.device == 'cpu' else 'GPU'} "
            f"({'slices' if dims == 2 else 'windows'} per network call)", "infer.sw_batch_size")
    _smallest_structure(ctx)
    spatial = c["spatial"]
    ctx.schedule["augment"] = aug = {
        "flip_prob": 0.5, "intensity_prob": 0.15, "gamma_prob": 0.0 if ctx.ct else 0.3, "noise_prob": 0.1,
        "rotate_prob": 0.2 if spatial else 0.0, "scale_prob": 0.2 if spatial else 0.0, "elastic_prob": 0.0}
    ctx.add("augmentation", ", ".join(k[:-5] for k, v in aug.items() if v),
            ("CT: Hounsfield units are calibrated, no gamma" if ctx.ct else "MRI: gamma for contrast differences")
            + ("; rotation and scaling (nnU-Net's p 0.2)" if spatial else
               f"; no rotation/scaling ({iters} steps < {SPATIAL_AUG_STEPS} or not affordable)"), "train.augment")
    if budget_s is not None:
        planning = f"planning so far {est['spent']:.0f} s + " if est.get("spent") else ""
        ctx.add("budget", f"{budget_s:.0f} s", f"{planning}startup {est['startup']:.0f} s (measured imports + 2 s) + "
                f"preprocessing {est['preprocess']:.1f} s + training {est['training']:.0f} s + validation "
                f"{est['validation']:.0f} s + final validation {est['final_validation']:.0f} s + epoch bookkeeping "
                f"{est['epoch_overhead']:.0f} s = {est['total']:.0f} s; train.budget {budget_s:.0f} s: the trainer "
                f"stops training early enough for everything to fit if a step is slower than planned", "train.budget")
    else:
        ctx.add("estimated time", _human(est["total"]), f"{iters} steps x {c['step_s']:.3f} s on {costs.name} "
                f"+ validation {est['validation']:.0f} s + preprocessing {est['preprocess']:.0f} s")


def _smallest_structure(ctx: _Planning) -> None:
    """The smallest structure at the target spacing (reported: what the spacing leaves of it)."""
    small = [(n, c) for n, c in (ctx.fp.get("classes") or {}).items() if c.get("object_ml_median")]
    if small:
        n, c = min(small, key=lambda nc: nc[1]["object_ml_median"])
        vox_ml = math.prod(ctx.geo["spacing"]) / 1000.0
        ctx.add("smallest structure", n, f"its median object is {c['object_ml_median']:.2g} ml = "
                f"{c['object_ml_median'] / vox_ml:.0f} voxels at the target spacing (smallest "
                f"{c['object_ml_min']:.2g} ml); median {c['fraction']:.2%} of an image")


def _plan_window(ctx: _Planning) -> None:
    """Sliding window: the training patch, with what a larger window would have cost (reported, not taken)."""
    c, s = ctx.chosen, ctx.setting
    bigger = _larger_window(s, c["patch"], c["depth"])
    if bigger is None or not s.val_shapes:
        return
    t_now = _val_pass(ctx.costs, s, c["patch"], c["base"], c["depth"], c["overlap"], ctx.sw_batch)
    t_big = _val_pass(ctx.costs, s, bigger, c["base"], c["depth"], c["overlap"], ctx.sw_batch)
    # the planned U-Net normalises per instance: its statistics, and so its outputs, depend on the window's size,
    # and a window larger than the training patch cost 0.06 mean Dice on the real-anatomy set (0.834 vs 0.894)
    ctx.add("inference window", list(c["patch"]),
            f"the training patch: windows of {list(bigger)} would take {t_big:.1f} s per validation pass vs "
            f"{t_now:.1f} s, but instance norm sees other statistics in a larger window", "infer.window_size")


def _config(ctx: _Planning, name: str | None, num_folds: int) -> dict[str, Any]:
    """The planned config (keys of today's schema; ``ctx.extras`` hold the rest)."""
    c, s, geo = ctx.chosen, ctx.setting, ctx.geo
    opt, lr, _ = ctx.schedule["lr"]
    model: dict[str, Any] = {"name": "unet", "spatial_dims": s.dims,
                             "params": unet_params(s.dims, c["base"], c["depth"])}
    if s.dims == 2:
        model.update(slice_axis=s.slice_axis, context_slices=s.context)
    train: dict[str, Any] = {
        "patch_size": list(c["patch"]), "batch_size": c["batch"], "iterations": int(c["steps"]),
        "iters_per_epoch": int(c["ipe"]), "budget": f"{int(ctx.budget_s)}s" if ctx.budget_s else None,
        "optimizer": opt, "lr": lr, "weight_decay": 3e-5 if ctx.budget_s is None else 1e-5, "scheduler": "poly",
        "poly_power": 0.9, "warmup_epochs": 0.0, "loss": "dice_ce", "fg_oversample": 0.33,
        "val_every": int(c["val_every"]), "grad_clip": 12.0, "augment": ctx.schedule["augment"]}
    if opt == "sgd":
        train["momentum"] = 0.99
    root = Path(ctx.fp.get("root", "."))
    return {
        "name": name or f"{root.name or 'dataset'}_plan",
        "data": {"root": str(root), "fold": 0, "num_folds": num_folds},
        "preprocess": {"orientation": "RAS", "spacing": geo["spacing"], "crop_foreground": True,
                       "normalize": ctx.normalize},
        "model": model, "train": train,
        "infer": {"overlap": c["overlap"], "sw_batch_size": ctx.sw_batch, "blend": "gaussian"},
    }


def _human(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _widths(lad: dict, fallback: bool) -> list[int]:
    return (lad["fallback_widths"] if fallback else []) + lad["widths"]


def _schedule(c: dict, avail: float, budget_s: float) -> dict:
    """Steps, epoch length, validation passes for candidate ``c`` in ``avail`` seconds (final validation
    included)."""
    t, over = c["step_s"], c["overhead_s"]
    ipe = int(min(250, max(MIN_EPOCH, math.ceil(over / (EPOCH_OVERHEAD_SHARE * max(t, 1e-9))))))
    room = avail - c["final_val_s"]
    val_allowed = int(VAL_SHARE * budget_s / max(c["val_s"], 1e-9))
    steps = int(max(0.0, room) / (t + over / ipe))
    for _ in range(3):  # validation passes take their share of the room, then the steps are recounted
        epochs = max(1, math.ceil(steps / ipe))
        val_every = max(1, math.ceil((epochs - 1) / val_allowed)) if val_allowed else epochs
        passes = (epochs - 1) // val_every if epochs > 1 else 0
        steps = int(max(0.0, room - passes * c["val_s"]) / (t + over / ipe))
    epochs = max(1, math.ceil(steps / ipe))
    val_every = max(1, math.ceil((epochs - 1) / val_allowed)) if val_allowed else epochs
    passes = (epochs - 1) // val_every if epochs > 1 else 0
    return {**c, "steps": steps, "ipe": ipe, "epochs": epochs, "val_every": val_every, "passes": passes}


def _fit_budget(evaluate, patches, lad, avail, budget_s, want, overlap) -> dict | None:
    """The best-scoring candidate that reaches ``want`` steps (ties: more steps), with rotation and scaling
    added when it keeps at least max(SPATIAL_AUG_STEPS, want) steps; None when nothing reaches ``want``."""
    best = None
    for base in lad["widths"]:
        for batch in lad["batches"]:
            for p in patches:
                c = _schedule(evaluate(p, base, batch, overlap, False), avail, budget_s)
                if c["steps"] >= want:
                    c["score"] += STEPS_WEIGHT * math.log2(min(c["steps"], 4 * want) / want)
                    if best is None or (c["score"], c["steps"]) > (best["score"], best["steps"]):
                        best = c
    if best is not None and best["steps"] >= max(SPATIAL_AUG_STEPS, want):
        sp = _schedule(evaluate(best["patch"], best["base"], best["batch"], overlap, True), avail, budget_s)
        if sp["steps"] >= max(SPATIAL_AUG_STEPS, want):
            best = sp
    return best


def _smallest(evaluate, patches, lad, avail, budget_s) -> dict:
    """The candidate with the most steps (tiny budgets)."""
    best = None
    for base in _widths(lad, True)[:2]:
        for overlap in (0.25,):
            c = _schedule(evaluate(patches[-1], base, lad["batches"][0], overlap, False), avail, budget_s)
            if best is None or c["steps"] > best["steps"]:
                best = c
    return best


def _quality(evaluate, patches, lad) -> dict:
    """nnU-Net-like: width 32, the largest patch up to the voxel cap, batch 2 (16 slices in 2D), spatial aug."""
    for p in patches:
        if math.prod(p) <= lad["quality_voxels"]:
            return evaluate(p, lad["quality_width"], lad["quality_batch"], 0.5, True)
    return evaluate(patches[-1], lad["quality_width"], lad["quality_batch"], 0.5, True)


def _larger_window(s: _Setting, patch: Sequence[int], depth: int) -> tuple[int, ...] | None:
    """A window about 1.5x the patch per axis (a multiple of the divisor), no larger than the median image."""
    div = 2 ** depth
    cap = [_roundup(m, div) for m in s.median]
    w = tuple(min(max(_roundup(p * 1.5, div), p), max(c, p)) for p, c in zip(patch, cap))
    return w if w != tuple(patch) else None
