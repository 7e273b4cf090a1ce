"""Device micro-benchmark: how long a training step, a sliding-window forward, the augmentation of one sample,
the preprocessing of a voxel and the per-epoch bookkeeping take on the device at hand, and which intra-op
thread count is fastest here.

Everything is measured, on the real code paths: a medseg3d U-Net (:func:`medseg3d.models.build_model`) with
the ``dice_ce`` loss and Adam for a training step (forward + backward + optimiser step), the same net in eval
mode under ``no_grad`` for a window, :func:`medseg3d.data.transforms.augment_transforms` on a synthetic
preprocessed volume, :func:`medseg3d.data.transforms.preprocess_transforms` for resampling, and the trainer's
own checkpoint writer and progress plot for the per-epoch cost. Each timing is the fastest of a few repeats
after a warm-up (the fastest is the least disturbed by other processes).

:class:`DeviceCosts` keeps the measurements and answers for any size: a step costs its FLOPs (counted on the
``meta`` device, exact per voxel for a U-Net whose patch divides by its divisor) times a per-FLOP cost
interpolated between the measured sizes of that width, where each size's per-FLOP cost is capped by the
smaller sizes' (other processes only ever add time, and more work per call is at least as efficient); a
width that was not measured uses the per-FLOP cost of the nearest measured width (the widest one for wider
nets, which run at least as efficiently). :func:`verify` times one exact configuration and adds it, so a plan can be checked against a
real step and re-planned.

The results are cached per device name, torch version and CPU count in ``device_benchmark.json`` under
``$MEDSEG3D_CACHE`` (or ``~/.cache/medseg3d``). ``timer`` is injectable: ``timer(kind, spec) -> seconds``
replaces every real timing (tests give fake costs).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.fingerprint import cache_root
from ..errors import MedsegError
from ..io.scan import atomic_write
from ..runtime import cpu_model, free_cores, pick_device

Timer = Callable[[str, dict], float]

#: benchmark file version; a change re-measures
VERSION = 1


# ---- the network the planner builds ---------------------------------------------------------------------------
def unet_params(dims: int, base: int, depth: int) -> dict[str, Any]:
    """``model.params`` of the planned U-Net (instance norm, as nnU-Net)."""
    return {"base_filters": int(base), "depth": int(depth), "norm": "instance"}


@functools.lru_cache(maxsize=512)
def flops_per_voxel(dims: int, base: int, depth: int, in_ch: int, out_ch: int) -> float:
    """Forward FLOPs per input voxel of the planned U-Net (exact for sizes that divide by 2**depth)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import build_model

    side = 2 ** depth * 2
    with torch.device("meta"):
        model = build_model("unet", dims, in_ch, out_ch, **unet_params(dims, base, depth)).eval()
        x = torch.zeros((1, in_ch) + (side,) * dims)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    return counter.get_total_flops() / side ** dims


@functools.lru_cache(maxsize=512)
def parameter_count(dims: int, base: int, depth: int, in_ch: int, out_ch: int) -> int:
    from ..models import build_model

    with torch.device("meta"):
        model = build_model("unet", dims, in_ch, out_ch, **unet_params(dims, base, depth))
    return sum(p.numel() for p in model.parameters())


def step_flops(spec: dict) -> float:
    """Forward FLOPs of one batch of ``spec`` (dims, base_filters, depth, patch, batch, in/out channels)."""
    return flops_per_voxel(spec["dims"], spec["base_filters"], spec["depth"], spec["in_channels"],
                           spec["out_channels"]) * math.prod(spec["patch"]) * spec["batch"]


# ---- device ---------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "mps: Apple GPU"
    return f"cpu: {cpu_model()}"


def device_key(device: torch.device) -> str:
    return f"{device_name(device)} | torch {torch.__version__} | {free_cores()} cpus"


def thread_candidates(n: int) -> list[int]:
    """1..n; beyond 8 CPUs the powers of two and n (timing every count would take minutes)."""
    if n <= 8:
        return list(range(1, n + 1))
    out = [1]
    while out[-1] * 2 < n:
        out.append(out[-1] * 2)
    return out + [n]


# ---- the cost model -------------------------------------------------------------------------------------------
def _spec_key(kind: str, spec: dict) -> str:
    return kind + json.dumps(spec, sort_keys=True)


@dataclass
class DeviceCosts:
    """Measured costs on one device, and the model that extends them to other sizes (see the module)."""

    device: str                      # torch device type: cpu, cuda, mps
    name: str                        # what it is (CPU model or GPU name)
    torch: str
    cpus: int
    threads: int                     # the fastest intra-op thread count measured
    thread_seconds: dict[str, float] = field(default_factory=dict)  # threads -> reference step seconds
    measurements: list[dict] = field(default_factory=list)          # {"kind", "spec", "seconds"}
    load: float | None = None        # 1-minute load average while measuring (None where unknown)

    # -- bookkeeping --
    def add(self, kind: str, spec: dict, seconds: float, verified: bool = False) -> None:
        key = _spec_key(kind, spec)
        self.measurements = [m for m in self.measurements if _spec_key(m["kind"], m["spec"]) != key]
        self.measurements.append({"kind": kind, "spec": dict(spec), "seconds": float(seconds),
                                  **({"verified": True} if verified else {})})

    def get(self, kind: str, spec: dict) -> float | None:
        key = _spec_key(kind, spec)
        return next((m["seconds"] for m in self.measurements if _spec_key(m["kind"], m["spec"]) == key), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DeviceCosts":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    # -- network costs --
    def _curve(self, kind: str, dims: int, base: int) -> list[tuple[float, float]]:
        """(FLOPs, seconds per FLOP) of the measured sizes of a width, by FLOPs. A benchmark size's per-FLOP
        cost is capped by those of every smaller size (other processes only ever add time, and more work per
        call is at least as efficient, so the cheapest observation so far is the truest); a size timed by
        :func:`verify` (a planned configuration) is kept as measured."""
        pts = sorted((step_flops(m["spec"]), m["seconds"] / step_flops(m["spec"]), bool(m.get("verified")))
                     for m in self.measurements
                     if m["kind"] == kind and m["spec"]["dims"] == dims and m["spec"]["base_filters"] == base)
        out: list[tuple[float, float]] = []
        cheapest = math.inf
        for f, c, verified in pts:
            out.append((f, c if verified else min(c, cheapest)))
            cheapest = min(cheapest, c)
        return out

    @staticmethod
    def _per_flop(curve: list[tuple[float, float]], f: float) -> float:
        if f <= curve[0][0]:
            return curve[0][1]
        if f >= curve[-1][0]:
            return curve[-1][1]
        for (f1, c1), (f2, c2) in zip(curve, curve[1:]):
            if f1 <= f <= f2:
                w = math.log(f / f1) / math.log(f2 / f1) if f2 > f1 else 1.0
                return c1 + w * (c2 - c1)
        return curve[-1][1]  # pragma: no cover

    def _model(self, kind: str, spec: dict) -> float:
        """The measured time of ``spec``, else FLOPs x the per-FLOP cost of that width interpolated (in log
        FLOPs) between its measured sizes (the nearest measured size's outside them); a width never measured
        takes the per-FLOP cost of the nearest measured width (the widest one for wider nets, which run at
        least as efficiently)."""
        exact = self.get(kind, spec)
        if exact is not None:
            return exact
        dims, base = spec["dims"], spec["base_filters"]
        curve = self._curve(kind, dims, base)
        if not curve:
            widths = sorted({m["spec"]["base_filters"] for m in self.measurements
                             if m["kind"] == kind and m["spec"]["dims"] == dims})
            if not widths:
                raise MedsegError(f"no {kind} timing for {dims}D networks on {self.name}; run the benchmark "
                                  f"for {dims}D")
            near = min(widths, key=lambda w: abs(math.log(w / base))) if base < widths[-1] else widths[-1]
            curve = self._curve(kind, dims, near)
        f = step_flops(spec)
        return f * self._per_flop(curve, f)

    def step_seconds(self, dims: int, base: int, depth: int, patch: Sequence[int], batch: int, in_ch: int,
                     out_ch: int) -> float:
        """One training step (forward, backward, Adam step) of the planned U-Net."""
        return self._model("step", _net_spec(dims, base, depth, patch, batch, in_ch, out_ch))

    def forward_seconds(self, dims: int, base: int, depth: int, window: Sequence[int], batch: int, in_ch: int,
                        out_ch: int) -> float:
        """One forward pass (eval, no_grad) of ``batch`` windows."""
        return self._model("forward", _net_spec(dims, base, depth, window, batch, in_ch, out_ch))

    # -- data costs --
    def augment_seconds(self, dims: int, patch: Sequence[int], volume: Sequence[int], channels: int,
                        spatial: bool) -> float:
        """Sampling + augmenting one patch from a preprocessed volume: ``c_vol·volume_voxels +
        c_patch·patch_voxels·channels`` (+ the spatial resampling per patch voxel when ``spatial``), with the
        constants fitted from the measurements."""
        ms = [m for m in self.measurements if m["kind"] == "augment" and m["spec"]["dims"] == dims]
        if not ms:
            raise MedsegError(f"no augmentation timing for {dims}D on {self.name}; run the benchmark for {dims}D")
        plain = sorted((m for m in ms if not m["spec"]["spatial"]), key=lambda m: math.prod(m["spec"]["patch"]))
        vol = lambda m: math.prod(m["spec"]["volume"])
        pv = lambda m: math.prod(m["spec"]["patch"]) * m["spec"]["channels"]
        if len(plain) >= 2 and pv(plain[-1]) > pv(plain[0]) and vol(plain[-1]) == vol(plain[0]):
            c_patch = max((plain[-1]["seconds"] - plain[0]["seconds"]) / (pv(plain[-1]) - pv(plain[0])), 0.0)
            c_vol = max(plain[-1]["seconds"] - c_patch * pv(plain[-1]), 0.0) / vol(plain[-1])
        else:
            ref = plain[-1] if plain else ms[-1]
            c_patch, c_vol = ref["seconds"] / pv(ref), 0.0
        t = c_vol * math.prod(volume) + c_patch * math.prod(patch) * channels
        if spatial:
            sp = [m for m in ms if m["spec"]["spatial"]]
            if sp:
                ref = sp[-1]
                same = c_vol * vol(ref) + c_patch * pv(ref)
                t += max(ref["seconds"] - same, 0.0) / pv(ref) * math.prod(patch) * channels
        return t

    def preprocess_seconds(self, voxels_times_channels: float) -> float:
        """Reorientation, resampling, cropping and normalisation of that many input voxels (x channels)."""
        ms = [m for m in self.measurements if m["kind"] == "preprocess"]
        if not ms:
            return 0.0
        m = ms[-1]
        return m["seconds"] / (math.prod(m["spec"]["volume"]) * m["spec"]["channels"]) * voxels_times_channels

    def startup_seconds(self, default: float = 5.0) -> float:
        """Before a run's training loop: the measured import of the trainer in a fresh interpreter, plus 2 s
        for reading the case list, building the model and the first batch (``default`` when not measured)."""
        t = self.get("startup", {})
        return default if t is None else t + 2.0

    def epoch_overhead_seconds(self, parameters: int) -> float:
        """What the trainer does once per epoch besides training: writing last.pt (weights + Adam's two
        moments) and progress.png."""
        png = self.get("progress_png", {}) or 0.0
        ck = [m for m in self.measurements if m["kind"] == "checkpoint"]
        per_byte = ck[-1]["seconds"] / ck[-1]["spec"]["bytes"] if ck else 0.0
        return png + per_byte * parameters * 4 * 3


def _net_spec(dims, base, depth, patch, batch, in_ch, out_ch) -> dict:
    return {"dims": int(dims), "base_filters": int(base), "depth": int(depth), "patch": [int(p) for p in patch],
            "batch": int(batch), "in_channels": int(in_ch), "out_channels": int(out_ch)}


# ---- real timings ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _fastest(fn: Callable[[], Any], device: torch.device, min_total: float = 0.3, max_reps: int = 4) -> float:
    """Warm up once, then the fastest of 2..max_reps runs (more runs while the total is under min_total s);
    a call slower than a second gets one timed run after the warm-up (the warm-up counts as a run then)."""
    t0 = time.perf_counter()
    fn()
    _sync(device)
    warm = time.perf_counter() - t0
    times: list[float] = []
    if warm > 1.0:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return min(warm, time.perf_counter() - t0)
    while len(times) < 2 or (len(times) < max_reps and sum(times) < min_total):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def real_timer(device: torch.device) -> Timer:
    """The default timer: builds and runs the real code for each ``(kind, spec)``."""

    def timer(kind: str, spec: dict) -> float:
        threads = spec.get("threads")
        old = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            return _TIMINGS[kind](spec, device)
        finally:
            torch.set_num_threads(old)

    return timer


def _time_net(spec: dict, device: torch.device, train: bool) -> float:
    from ..engine.losses import build_loss
    from ..models import build_model

    torch.manual_seed(0)
    dims, b = spec["dims"], spec["batch"]
    model = build_model("unet", dims, spec["in_channels"], spec["out_channels"],
                        **unet_params(dims, spec["base_filters"], spec["depth"])).to(device)
    x = torch.randn((b, spec["in_channels"], *spec["patch"]), device=device)
    if not train:
        model.eval()

        def fwd():
            with torch.no_grad():
                model(x)

        return _fastest(fwd, device)
    y = torch.randint(0, spec["out_channels"], (b, 1, *spec["patch"]), device=device).float()
    loss_fn = build_loss("dice_ce")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y, x)
        loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        opt.step()

    return _fastest(step, device)


def _synthetic_case(channels: int, volume: Sequence[int], classes: int) -> dict:
    """A preprocessed-looking case: z-scored noise with a block of foreground labels."""
    from monai.data import MetaTensor

    g = torch.Generator().manual_seed(0)
    img = torch.randn((channels, *volume), generator=g)
    lab = torch.zeros((1, *volume))
    sl = tuple(slice(s // 4, max(s // 4 + 1, 3 * s // 4)) for s in volume)
    lab[(0, *sl)] = 1
    if classes > 2:
        inner = tuple(slice(s // 3, max(s // 3 + 1, 2 * s // 3)) for s in volume)
        lab[(0, *inner)] = classes - 1
    return {"image": MetaTensor(img), "label": MetaTensor(lab)}


def augment_config(dims: int, patch: Sequence[int], spatial: bool, slice_axis: int = 2, context: int = 0) -> dict:
    """The config dict whose augmentation is timed (and planned): mirroring, intensity, gamma, noise, plus
    rotation and scaling when ``spatial``."""
    aug = {"flip_prob": 0.5, "intensity_prob": 0.15, "gamma_prob": 0.3, "noise_prob": 0.1,
           "rotate_prob": 0.2 if spatial else 0.0, "scale_prob": 0.2 if spatial else 0.0}
    model = {"name": "unet", "spatial_dims": dims}
    if dims == 2:
        model.update(slice_axis=slice_axis, context_slices=context)
    return {"data": {"root": "."}, "model": model,
            "train": {"patch_size": list(patch), "fg_oversample": 0.33, "augment": aug}}


def _time_augment(spec: dict, device: torch.device) -> float:
    from monai import transforms as mt

    from ..config import load_config
    from ..data.transforms import augment_transforms

    cfg = load_config(augment_config(spec["dims"], spec["patch"], spec["spatial"], spec.get("slice_axis", 2),
                                     spec.get("context", 0)))
    aug = mt.Compose(augment_transforms(cfg))
    aug.set_random_state(seed=0)
    case = _synthetic_case(spec["channels"], spec["volume"], spec.get("classes", 3))
    n = 4
    return _fastest(lambda: [aug(case) for _ in range(n)], torch.device("cpu")) / n


def _time_preprocess(spec: dict, device: torch.device) -> float:
    from monai import transforms as mt
    from monai.data import MetaTensor

    from ..config import load_config
    from ..data.transforms import preprocess_transforms

    cfg = load_config({"data": {"root": "."}, "preprocess": {"spacing": [1.3, 1.3, 1.3],
                                                             "normalize": "zscore_nonzero"}})
    pre = mt.Compose(preprocess_transforms(cfg, label_values=None))
    case = _synthetic_case(spec["channels"], spec["volume"], 2)
    affine = torch.eye(4, dtype=torch.float64)
    return _fastest(lambda: pre({"image": MetaTensor(case["image"].as_tensor().clone(), affine=affine),
                                 "label": MetaTensor(case["label"].as_tensor().clone(), affine=affine)}),
                    torch.device("cpu"))


def _time_progress_png(spec: dict, device: torch.device) -> float:
    import tempfile

    from ..engine.plots import write_progress_png

    hist = [{"epoch": i + 1, "iterations": 10 * (i + 1), "train_loss": 1.0 / (i + 1), "val_loss": 1.0,
             "val_dice_mean": 0.5, "val_dice_a": 0.5, "lr": 1e-3} for i in range(20)]
    with tempfile.TemporaryDirectory() as d:
        return _fastest(lambda: write_progress_png(hist, Path(d) / "progress.png"), torch.device("cpu"),
                        min_total=0.0, max_reps=2)


def _time_startup(spec: dict, device: torch.device) -> float:
    """A fresh interpreter importing the trainer (torch, MONAI, medseg3d), once: what every run pays before
    its training loop starts."""
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import medseg3d.engine.trainer"], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def _time_checkpoint(spec: dict, device: torch.device) -> float:
    import tempfile

    from ..bundle import Head, ModelContract, save_checkpoint
    from ..config import load_config

    contract = ModelContract(load_config({"data": {"root": "."}}), {"": Head(["image"], {"background": 0})}, (),
                             {"w": torch.zeros(spec["bytes"] // 4)})
    with tempfile.TemporaryDirectory() as d:
        return _fastest(lambda: save_checkpoint(contract, Path(d) / "last.pt"), torch.device("cpu"),
                        min_total=0.0, max_reps=2)


_TIMINGS: dict[str, Callable[[dict, torch.device], float]] = {
    "step": lambda s, d: _time_net(s, d, True), "forward": lambda s, d: _time_net(s, d, False),
    "augment": _time_augment, "preprocess": _time_preprocess, "progress_png": _time_progress_png,
    "checkpoint": _time_checkpoint, "startup": _time_startup,
}


# ---- the benchmark --------------------------------------------------------------------------------------------
def _ladder(device: torch.device, dims: int) -> dict[str, Any]:
    """Widths and sizes timed per device type and spatial dims (small on a CPU: seconds, not minutes)."""
    gpu = device.type != "cpu"
    if dims == 3:
        return {"widths": [8, 16, 4, 32] if not gpu else [8, 16, 32],
                "sizes": [([32] * 3, 1), ([48] * 3, 1)] if not gpu else [([64] * 3, 2), ([96] * 3, 2)],
                "windows": [[48] * 3, [64] * 3] if not gpu else [[96] * 3, [128] * 3],
                "thread_ref": (8, [24] * 3, 1), "aug": ([24] * 3, [48] * 3), "volume": [96, 96, 96]}
    return {"widths": [16, 32, 64] if not gpu else [32, 64],  # the most useful first
            "sizes": [([96] * 2, 4), ([128] * 2, 8)] if not gpu else [([256] * 2, 16), ([384] * 2, 16)],
            "windows": [[128] * 2, [192] * 2] if not gpu else [[256] * 2, [512] * 2],
            "thread_ref": (16, [96] * 2, 4), "aug": ([64] * 2, [128] * 2), "volume": [160, 160, 48]}


def net_depth(patch: Sequence[int], base: int, dims: int | None = None, max_bottom_channels: int = 512,
              max_depth: int = 5) -> int:
    """Poolings of the planned U-Net: halve while the smallest axis is at least 8 (so the bottom keeps at least
    4 voxels, as nnU-Net), with at most ``max_bottom_channels`` at the bottom (base·2**depth, twice that in 3D
    where the U-Net doubles before pooling)."""
    dims = dims or len(patch)
    mult = 2 if dims == 3 else 1
    d, s = 0, min(patch)
    while s >= 8 and d < max_depth and mult * base * 2 ** (d + 1) <= max_bottom_channels:
        s //= 2
        d += 1
    return max(d, 1)


def measure_device(device: str | torch.device = "auto", dims: Sequence[int] = (3,), in_channels: int = 1,
                   out_channels: int = 2, volume: Sequence[int] | None = None, context_slices: int = 0,
                   timer: Timer | None = None,
                   cache: bool = True, cache_dir: str | Path | None = None, max_seconds: float = 20.0,
                   log: Callable[[str], None] | None = None, refresh: bool = False) -> DeviceCosts:
    """Time the device (see the module). Cached measurements are reused; only what is missing is measured,
    within about ``max_seconds`` (what does not fit is extrapolated by the cost model). ``in_channels`` are
    the image channels (a 2.5D net gets ``in_channels·(2·context_slices + 1)``), ``volume`` the size of a
    typical preprocessed case (the augmentation crops patches from it). ``refresh`` measures anew (replacing
    this device's cached entry), e.g. after the machine's load changed."""
    dev = pick_device(str(device))
    timer = timer or real_timer(dev)
    path = cache_root(cache_dir) / "device_benchmark.json"
    key = device_key(dev)
    stored: dict = {}
    if cache and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}
    entry = stored.get(key) if stored.get("version") == VERSION and not refresh else None
    load_now = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if entry and entry.get("load") is not None and load_now is not None and abs(entry["load"] - load_now) > 1.0:
        entry = None  # measured under another load (threads and step costs shift with it): measure again
    costs = DeviceCosts.from_dict(entry) if entry else None
    deadline = time.monotonic() + max_seconds
    say = log or (lambda s: None)
    measured = 0

    def run(kind: str, spec: dict, force: bool = False) -> float | None:
        nonlocal measured
        have = costs.get(kind, spec) if costs else None
        if have is not None:
            return have
        if not force and time.monotonic() > deadline:
            return None
        t = float(timer(kind, {**spec, "threads": costs.threads} if costs and kind in ("step", "forward")
                      else spec))
        measured += 1
        say(f"  {kind} {json.dumps({k: v for k, v in spec.items() if k not in ('in_channels', 'out_channels')})}"
            f": {t:.3f} s")
        if costs is not None:
            costs.add(kind, spec, t)
        return t

    if costs is None:  # the thread sweep: interleaved rounds, the fastest of each count
        ref = _ladder(dev, dims[0])["thread_ref"]
        n_in = in_channels * (2 * context_slices + 1) if dims[0] == 2 else in_channels
        spec = _net_spec(dims[0], ref[0], net_depth(ref[1], ref[0]), ref[1], ref[2], n_in, out_channels)
        counts = thread_candidates(free_cores())
        best: dict[int, float] = {}
        for _ in range(2):
            for n in counts:
                t = float(timer("threads", {**spec, "threads": n}))
                best[n] = min(best.get(n, math.inf), t)
        fastest = min(best.values())
        threads = min(n for n in counts if best[n] <= fastest * 1.05)  # fewer threads when as fast
        say(f"threads: {', '.join(f'{n}: {best[n]:.3f}s' for n in counts)} -> {threads}")
        costs = DeviceCosts(dev.type, device_name(dev), torch.__version__, free_cores(), threads,
                            {str(n): best[n] for n in counts}, [], load_now)
        costs.add("step", spec, best[threads])
    for d in dims:
        lad = _ladder(dev, d)
        ch_in = in_channels * (2 * context_slices + 1) if d == 2 else in_channels
        # steps, most useful width first, both sizes; a width whose small step is slow skips its larger size
        # and every wider width (extrapolated by FLOPs); the first width's forward comes right after
        limit = 1.0 if dev.type == "cpu" else 0.5
        slow = math.inf
        first = True
        for w in lad["widths"]:
            if w >= slow:
                continue
            for size, batch in lad["sizes"]:
                spec = _net_spec(d, w, net_depth(size, w), size, batch, ch_in, out_channels)
                t = run("step", spec, force=first)
                first = False
                if t is None:
                    break
                if t > limit:
                    slow = w
                    break
            if w == lad["widths"][0]:
                for window in lad["windows"]:
                    run("forward", _net_spec(d, w, net_depth(window, w), window, 1, ch_in, out_channels),
                        force=window == lad["windows"][0])
        for w in lad["widths"][1:]:
            if w >= slow:
                continue
            for window in lad["windows"]:
                if run("forward", _net_spec(d, w, net_depth(window, w), window, 1, ch_in, out_channels)) is None:
                    break
        vol = list(volume) if volume is not None else lad["volume"]
        if d == 2:
            vol = vol if len(vol) == 3 else lad["volume"]
        small, big = lad["aug"]
        for patch, spatial in ((small, False), (big, False), (big, True)):
            spec = {"dims": d, "patch": list(patch), "volume": [int(v) for v in vol], "channels": in_channels,
                    "spatial": spatial, "classes": out_channels}
            if d == 2:
                spec.update(slice_axis=int(np.argmin(vol)), context=context_slices)
            run("augment", spec, force=True)
    run("preprocess", {"volume": [64, 64, 64], "channels": in_channels}, force=True)
    run("progress_png", {}, force=True)
    run("checkpoint", {"bytes": 8_000_000}, force=True)
    run("startup", {}, force=True)
    if cache and measured:
        save_costs(costs, path)
    return costs


def save_costs(costs: DeviceCosts, path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Merge ``costs`` into the benchmark file (one entry per device key), atomically."""
    path = Path(path) if path else cache_root(cache_dir) / "device_benchmark.json"
    stored: dict = {}
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}
    if stored.get("version") != VERSION:
        stored = {"version": VERSION}
    stored[f"{costs.name} | torch {costs.torch} | {costs.cpus} cpus"] = costs.to_dict()
    text = json.dumps(stored, indent=1)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def verify(costs: DeviceCosts, specs: Sequence[tuple[str, dict]], timer: Timer | None = None,
           cache: bool = True, cache_dir: str | Path | None = None) -> list[tuple[float, float]]:
    """Time exact (kind, spec) configurations (a planned step and window) and add them to ``costs``; returns
    (predicted, measured) seconds per spec."""
    dev = torch.device(costs.device)
    timer = timer or real_timer(dev)
    out = []
    for kind, spec in specs:
        predicted = costs._model(kind, spec)
        if costs.get(kind, spec) is None:
            costs.add(kind, spec, float(timer(kind, {**spec, "threads": costs.threads})), verified=True)
        out.append((predicted, costs.get(kind, spec)))
    if cache:
        save_costs(costs, cache_dir=cache_dir)
    return out


_TIMINGS["threads"] = _TIMINGS["step"]
