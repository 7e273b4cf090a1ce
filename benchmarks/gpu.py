"""The GPU path, measured on a CUDA device: brats_nnn training steps, the loader against them, whole-volume
inference of a BraTS-size volume with and without TTA against MONAI's sliding window, and a planned run end to
end.

    python benchmarks/gpu.py                  # everything (about 6 minutes on one H200)
    python benchmarks/gpu.py --parts train,infer --out gpu.json
    python benchmarks/gpu.py --device cpu --quick   # a smoke run of the script itself (64³, 2 mm, no timings)

Parts (each prints a table; ``--out`` also writes every number as JSON):

- ``train``: one brats_nnn iteration as configs/brats_nnn.yaml has it (batch 2, 128³ patches, one sigmoid per
  BraTS region, Dice + BCE, grad clip 12) through medseg3d's own ``train_step`` (autocast + GradScaler), fp32
  and AMP (the trainer's default on CUDA), with cuDNN deterministic (what the trainer sets, through MONAI's
  ``set_determinism``) and in cuDNN benchmark mode: seconds per iteration after warm-up steps, the GPU's
  utilisation sampled through NVML while the timed steps run, peak GPU memory, and the TFLOP/s the step
  achieves (FLOPs counted on the meta device).
- ``loader``: patches per second of the brats_nnn augmentation on one CPU core of this machine, times the
  cores, against the patches per second the GPU step consumes (the loader must reach 2x).
- ``trainer``: ``medseg3d train configs/brats_nnn.yaml`` on four BraTS-size phantoms for two short epochs, with
  the default loader workers and with none: iterations per second against the bare step.
- ``infer``: a BraTS-size 4 x 240 x 240 x 155 phantom (seed 0) through MONAI ``sliding_window_inference``
  (128³, overlap 0.5, gaussian, fp32, everything on the GPU) and through medseg3d's Segmenter (what
  ``medseg3d infer`` runs: foreground crop, windows and stitching on the GPU, inversion) with torch fp32 and
  with ``auto`` (bf16 or fp32, measured), each without and with TTA (8 mirrorings); weights: brats_nnn trained
  here for a few hundred steps on another phantom so the labels are not noise. Each variant after one
  untimed warm-up pass; labels compared with MONAI's inside the head; whole-tumour Dice against the truth.
- ``cli``: ``medseg3d train data_samples --budget 90s --device cuda`` (plan, preprocess, train, validate) then
  ``medseg3d infer`` and ``medseg3d evaluate`` on the held-out scans, each a subprocess, timed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

ROOT = C.ROOT
DEV = torch.device("cuda")
QUICK = False


# ------------------------------------------------------------------------------------------------ helpers
class GpuUtilisation:
    """Mean GPU utilisation (NVML, percent) over a ``with`` block, sampled every 20 ms; ``None`` without NVML."""

    def __init__(self, index: int = 0):
        self.samples: list[int] = []
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetUtilizationRates(self.handle)
        except Exception as e:  # noqa: BLE001 - reported as n/a
            self.error = f"{type(e).__name__}: {e}"
            self.handle = None

    def __enter__(self):
        self._stop = threading.Event()
        if self.handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        if self.handle is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def reset_peak():
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if DEV.type == "cuda" else float("nan")


def empty_cache():
    if DEV.type == "cuda":
        torch.cuda.empty_cache()


def brats(labels: bool = False):
    """configs/brats_nnn.yaml (``labels``: a softmax over the labels, for comparing label maps); --quick: 64³."""
    sets = ["train.patch_size=[64,64,64]"] if QUICK else []
    return C.brats_config(sets) if labels else C.load_config(C.BRATS_CONFIG, sets)


def fmt(v, spec=".3f", none="n/a"):
    return none if v is None else format(v, spec)


# ------------------------------------------------------------------------------------------------ train
def step_flops(cfg, n_out: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from medseg3d.bundle import build_network

    with torch.device("meta"):
        net = build_network(cfg, 4, n_out).train()
        x = torch.zeros(cfg.train.batch_size, 4, *cfg.train.patch_size)
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        (out[0] if isinstance(out, (list, tuple)) else out).sum().backward()
    return float(counter.get_total_flops())


def bench_train(steps: int, warmup: int) -> list[dict]:
    from medseg3d.bundle import build_network
    from medseg3d.engine.loop import train_step
    from medseg3d.engine.losses import build_loss

    cfg = brats()  # as shipped: one sigmoid per region
    t = cfg.train
    n_out = 3
    flops = step_flops(cfg, n_out)
    rows = []
    for amp in (False, True) if DEV.type == "cuda" else (False,):
        for mode in ("deterministic", "benchmark"):
            torch.backends.cudnn.deterministic = mode == "deterministic"
            torch.backends.cudnn.benchmark = mode == "benchmark"
            torch.manual_seed(0)
            dev = DEV
            net = build_network(cfg, 4, n_out).to(dev).train()
            opt = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
            scaler = torch.amp.GradScaler("cuda", enabled=amp)
            loss_fn = build_loss(t.loss, multilabel=True, **t.loss_params)
            b, patch = t.batch_size, list(t.patch_size)
            batch = {"image": torch.randn(b, 4, *patch), "label": (torch.rand(b, n_out, *patch) > 0.7).float()}
            if dev.type == "cuda":
                batch = {k: v.pin_memory() for k, v in batch.items()}

            one = functools.partial(train_step, net, batch, loss_fn, opt, sched, scaler, device=dev, amp=amp,
                                    grad_clip=t.grad_clip)

            for _ in range(warmup):
                one()
            sync()
            reset_peak()
            with GpuUtilisation() as util:
                t0 = time.perf_counter()
                for _ in range(steps):
                    one()
                sync()
                dt = (time.perf_counter() - t0) / steps
            rows.append({"precision": "AMP (fp16 autocast)" if amp else "fp32", "cudnn": mode,
                         "s_per_iteration": dt, "gpu_util_percent": util.mean,
                         "peak_gpu_gb": peak_gb(),
                         "tflops": flops / dt / 1e12, "patches_per_s": b / dt})
            del one, net, opt, scaler, batch
            empty_cache()
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, False
    print(f"\n## train: brats_nnn iteration (batch {t.batch_size}, {t.patch_size} patches, regions, "
          f"{flops / 1e12:.2f} TFLOP per step; {steps} timed after {warmup} warm-up)")
    print(f"{'precision':<22}{'cuDNN':<15}{'s/iteration':>12}{'GPU util %':>12}{'peak GB':>9}{'TFLOP/s':>9}")
    for r in rows:
        print(f"{r['precision']:<22}{r['cudnn']:<15}{r['s_per_iteration']:>12.3f}"
              f"{fmt(r['gpu_util_percent'], '.0f'):>12}{r['peak_gpu_gb']:>9.1f}{r['tflops']:>9.1f}")
    return rows


# ------------------------------------------------------------------------------------------------ loader
def bench_loader(train_rows: list[dict], samples: int) -> dict:
    import train_throughput as T

    cfg = brats()
    per_core, _ = T.augmentation_rate(cfg, samples)
    torch.set_num_threads(C.free_cores())
    cores = C.free_cores()
    gpu = {r["precision"] + "/" + r["cudnn"]: r["patches_per_s"] for r in train_rows}
    need = max(gpu.values()) if gpu else float("nan")
    out = {"patches_per_s_per_core": per_core, "cores": cores, "loader_patches_per_s": per_core * cores,
           "gpu_patches_per_s_fastest": need, "ratio": per_core * cores / need,
           "workers_for_2x": int(np.ceil(2 * need / per_core)) if gpu else None}
    print(f"\n## loader: augmentation {per_core:.2f} patches/s per core x {cores} cores = "
          f"{per_core * cores:.1f} patches/s; the fastest GPU step takes {need:.1f} patches/s: ratio "
          f"{out['ratio']:.2f} (target >= 2; {out['workers_for_2x']} workers reach 2x)")
    return out


# ------------------------------------------------------------------------------------------------ infer
def bench_infer(train_iters: int) -> list[dict]:
    from monai.inferers import sliding_window_inference

    from medseg3d.data.synthetic import CHANNELS, LABELS
    from medseg3d.inference.segmenter import Segmenter

    cfg = brats(labels=True)
    t0 = time.perf_counter()
    image, truth, affine = C.phantom((120, 120, 78), 0, 2.0) if QUICK else C.phantom((240, 240, 155), 0)
    print(f"\n(phantom made in {time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    model = C.train_briefly(cfg, train_iters, 64, log=lambda s: None, device=str(DEV), seeds=(101,))
    print(f"(brats_nnn trained {train_iters} steps of 64³ on {DEV.type} in {time.perf_counter() - t0:.0f} s)")
    values = np.asarray(C.label_values())
    head = image.any(0)
    dev = DEV
    rows: list[dict] = []

    def monai_once():
        x = torch.from_numpy(C.zscore_nonzero(image))[None].to(dev)
        with torch.no_grad():
            logits = sliding_window_inference(x, tuple(cfg.train.patch_size), cfg.infer.sw_batch_size, net,
                                              overlap=cfg.infer.overlap, mode=cfg.infer.blend)
        return values[logits[0].argmax(0).cpu().numpy()].astype(np.uint8)

    net = model.to(dev).eval()
    monai_once()  # warm-up
    sync()
    reset_peak()
    with GpuUtilisation() as util:
        t0 = time.perf_counter()
        ref = monai_once()
        sync()
        t_monai = time.perf_counter() - t0
    rows.append({"variant": "MONAI sliding window", "tta": False, "infer_s": t_monai, "gpu_util_percent": util.mean,
                 "peak_gpu_gb": peak_gb(), "labels": ref})
    net = net.cpu()
    empty_cache()
    for tta in (False, True):
        for engine, precision in (("torch", "fp32"), ("auto", "auto")):
            seg = Segmenter(model, cfg, list(CHANNELS), dict(LABELS), device=str(DEV), tta=tta, engine=engine,
                            precision=precision)
            scan = seg.read((image, affine))
            seg.segment(scan)  # warm-up (and, for auto, the measurement)
            sync()
            reset_peak()
            with GpuUtilisation() as util:
                t0 = time.perf_counter()
                labels = seg.segment(scan).labels.astype(np.uint8)
                sync()
                dt = time.perf_counter() - t0
            runner = seg.predictor.window_fn(seg.members[0]).describe()
            rows.append({"variant": f"medseg3d Segmenter {engine}", "tta": tta, "infer_s": dt,
                         "engine": f"{runner.get('engine')}/{runner.get('precision')}",
                         "gpu_util_percent": util.mean, "peak_gpu_gb": peak_gb(), "labels": labels})
            del seg
            empty_cache()
    wt_truth = truth > 0
    print(f"\n## infer: {'x'.join(map(str, image.shape))} phantom, {cfg.train.patch_size} windows, overlap {cfg.infer.overlap}, "
          f"{cfg.infer.blend}; after one warm-up pass each")
    print(f"{'variant':<30}{'TTA':>5}{'engine':>15}{'infer s':>9}{'/MONAI':>8}{'GPU util %':>11}{'peak GB':>9}"
          f"{'% = MONAI (head)':>18}{'WT Dice':>9}")
    for r in rows:
        lab = r.pop("labels")
        r["ratio_to_monai"] = r["infer_s"] / t_monai
        r["equal_to_monai_in_head_percent"] = float((lab[head] == ref[head]).mean() * 100)
        wt = lab > 0
        r["wt_dice"] = float(2 * (wt & wt_truth).sum() / max(wt.sum() + wt_truth.sum(), 1))
        print(f"{r['variant']:<30}{'yes' if r['tta'] else 'no':>5}{r.get('engine', 'torch/fp32'):>15}"
              f"{r['infer_s']:>9.2f}{r['ratio_to_monai']:>8.2f}{fmt(r['gpu_util_percent'], '.0f'):>11}"
              f"{r['peak_gpu_gb']:>9.1f}{r['equal_to_monai_in_head_percent']:>18.3f}{r['wt_dice']:>9.3f}")
    return rows


# ------------------------------------------------------------------------------------------------ trainer
def bench_trainer(iters_per_epoch: int, step_rows: list[dict]) -> list[dict]:
    """``medseg3d train configs/brats_nnn.yaml`` on four BraTS-size phantoms (3 training, 1 validation) for two
    epochs, with the default loader workers and with none: iterations per second of the second epoch (its
    validation pass included) against the bare AMP step of the ``train`` part."""
    import nibabel as nib

    from medseg3d.data.synthetic import CHANNELS, LABELS

    exe = [sys.executable, "-m", "medseg3d"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "brats"
        meta = {"name": "phantoms", "modality": {str(i): c for i, c in enumerate(CHANNELS)},
                "labels": {str(v): k for k, v in LABELS.items()}, "training": [], "test": []}
        t0 = time.perf_counter()
        for seed in (0, 101, 102, 103):
            image, label, affine = C.phantom((120, 120, 78), seed, 2.0) if QUICK else C.phantom((240, 240, 155), seed)
            for folder, data in (("imagesTr", np.moveaxis(image, 0, -1)), ("labelsTr", label)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(data, affine), str(root / folder / f"case{seed}.nii"))
            meta["training"].append({"image": f"./imagesTr/case{seed}.nii", "label": f"./labelsTr/case{seed}.nii"})
        (root / "dataset.json").write_text(json.dumps(meta))
        print(f"\n(4 phantom cases written in {time.perf_counter() - t0:.0f} s)")
        for workers in ("default", 0):
            run = Path(tmp) / f"run_{workers}"
            sets = [f"data.root={root}", f"data.cache_dir={Path(tmp) / 'cache'}", "data.num_folds=4", "train.epochs=2",
                    f"train.iters_per_epoch={iters_per_epoch}", "train.budget=null", "train.tensorboard=false"]
            if QUICK:
                sets.append("train.patch_size=[64,64,64]")
            if workers != "default":
                sets.append(f"train.num_workers={workers}")
            cmd = [*exe, "train", str(ROOT / "configs" / "brats_nnn.yaml"), "--run-dir", str(run),
                   *[a for x in sets for a in ("--set", x)]]
            t0 = time.perf_counter()
            with GpuUtilisation() as util:
                p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), check=False)
            wall = time.perf_counter() - t0
            text = (p.stdout + p.stderr).strip().splitlines()
            row: dict = {"workers": workers, "exit": p.returncode, "wall_s": wall, "gpu_util_whole_run": util.mean,
                         "model_line": next((x for x in text if x.startswith("model ")), None)}
            log = run / "log.csv"
            if p.returncode == 0 and log.is_file():
                import csv

                epochs = list(csv.DictReader(log.open()))
                sec = float(epochs[-1]["epoch_seconds"])
                row.update(epoch2_s=sec, it_per_s=iters_per_epoch / sec)
            else:
                row["tail"] = text[-8:]
            rows.append(row)
    amp = [r for r in step_rows if r["precision"].startswith("AMP") and r["cudnn"] == "deterministic"]
    step_rate = 1 / amp[0]["s_per_iteration"] if amp else None
    print(f"\n## trainer: medseg3d train configs/brats_nnn.yaml, {iters_per_epoch} iterations per epoch; the "
          f"second epoch (with its validation pass); bare AMP step: {fmt(step_rate, '.2f')} it/s")
    for r in rows:
        r["ratio_to_bare_step"] = r["it_per_s"] / step_rate if step_rate and "it_per_s" in r else None
        print(f"workers {str(r['workers']):<8} exit {r['exit']}  {fmt(r.get('it_per_s'), '.2f')} it/s "
              f"({fmt(r['ratio_to_bare_step'], '.2f')} of the bare step), run {r['wall_s']:.0f} s, GPU util over "
              f"the whole run {fmt(r['gpu_util_whole_run'], '.0f')} %; {r['model_line']}")
        if "tail" in r:
            print("  " + "\n  ".join(r["tail"]))
    return rows


# ------------------------------------------------------------------------------------------------ cli
def bench_cli(budget: str) -> dict:
    out: dict = {"budget": budget}
    exe = [sys.executable, "-m", "medseg3d"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MEDSEG3D_CACHE": tempfile.mkdtemp(prefix="medseg3d-cache-")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = [("train", [*exe, "train", str(ROOT / "data_samples"), "--budget", budget, "--device", DEV.type,
                            "--run-dir", str(tmp / "run"), "--set", f"data.cache_dir={tmp / 'cache'}"]),
                 ("infer", [*exe, "infer", str(ROOT / "data_samples" / "imagesTs"), "-m", str(tmp / "run"),
                            "-o", str(tmp / "pred"), "--no-preview"]),
                 ("evaluate", [*exe, "evaluate", str(tmp / "pred"), str(ROOT / "data_samples" / "labelsTs"),
                               "-o", str(tmp / "table.csv")])]
        for name, cmd in steps:
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), check=False)
            out[f"{name}_s"] = time.perf_counter() - t0
            out[f"{name}_exit"] = p.returncode
            tail = (p.stdout + p.stderr).strip().splitlines()
            out[f"{name}_tail"] = tail[-12:]
            if p.returncode != 0:
                break
        plan = tmp / "run" / "plan.txt"
        out["plan"] = plan.read_text() if plan.is_file() else None
        log = tmp / "run" / "log.csv"
        out["log_tail"] = log.read_text().strip().splitlines()[-3:] if log.is_file() else None
    print(f"\n## cli: medseg3d train data_samples --budget {budget} --device {DEV.type}; infer; evaluate")
    for name in ("train", "infer", "evaluate"):
        if f"{name}_s" in out:
            print(f"{name}: {out[f'{name}_s']:.1f} s, exit {out[f'{name}_exit']}")
            print("  " + "\n  ".join(out[f"{name}_tail"]))
    if out["plan"]:
        print(out["plan"])
    if out["log_tail"]:
        print("log.csv:\n  " + "\n  ".join(out["log_tail"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="train,loader,trainer,infer,cli")
    p.add_argument("--trainer-iters", type=int, default=40, help="iterations per epoch of the trainer part")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per setting")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--samples", type=int, default=6, help="augmented patches timed for the loader")
    p.add_argument("--train-iters", type=int, default=300, help="steps that train the inference weights")
    p.add_argument("--budget", default="90s", help="budget of the cli part")
    p.add_argument("--out", help="JSON file for every number")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test the script")
    p.add_argument("--quick", action="store_true", help="64³ patches and windows, a 2 mm phantom")
    args = p.parse_args(argv)
    global DEV, QUICK
    DEV, QUICK = torch.device(args.device), args.quick
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures the GPU path", file=sys.stderr)
        return 1
    parts = args.parts.split(",")
    res: dict = {"gpu": torch.cuda.get_device_name(0) if DEV.type == "cuda" else "none", "torch": torch.__version__,
                 "cuda": torch.version.cuda,
                 "cpu": C.machine_line(), "uptime_before": C.uptime()}
    print(f"GPU: {res['gpu']}; torch {res['torch']} (CUDA {res['cuda']})\n{res['cpu']}\nbefore: {res['uptime_before']}")
    runs = {"train": lambda: bench_train(args.steps, args.warmup),
            "loader": lambda: bench_loader(res.get("train", []), args.samples),
            "trainer": lambda: bench_trainer(args.trainer_iters, res.get("train", [])),
            "infer": lambda: bench_infer(args.train_iters), "cli": lambda: bench_cli(args.budget)}
    for name in parts:
        try:
            res[name] = runs[name]()
        except Exception as e:  # noqa: BLE001 - the other parts still run
            import traceback

            traceback.print_exc()
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        if args.out:  # after every part, so a run cut short keeps what it measured
            Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    res["uptime_after"] = C.uptime()
    print(f"\nafter: {res['uptime_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
