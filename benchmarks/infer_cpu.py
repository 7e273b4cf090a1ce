"""Whole-volume CPU inference of the brats_nnn network (No New-Net, 128³ windows): MONAI's fp32 sliding window
over the whole volume vs medseg3d's Segmenter (foreground crop, the same window) with each window engine.

    python benchmarks/infer_cpu.py                    # BraTS size: 4 x 240 x 240 x 155 at 1 mm, 128³ windows
    python benchmarks/infer_cpu.py --quick            # 2 mm phantom (120 x 120 x 78), 64³ windows, ~1 min
    python benchmarks/infer_cpu.py --checkpoint runs/brats_nnn_…/best.pt --engines openvino/fp32,auto

Every variant runs in its own process (its peak RSS is its own), on the same volume (a BraTS-like phantom of
medseg3d.data.synthetic, seed 0) with the same weights: a checkpoint given with --checkpoint, else brats_nnn
trained for --train-iters steps on two other phantoms (with random weights the labels would be noise and
precision effects would be exaggerated by near-tie logits). The trained network is cached under
``$MEDSEG3D_CACHE/benchmarks`` (default ``~/.cache/medseg3d``): the first run trains it (200 steps of 64³
patches: about 30 min on 2 cores; 30 steps with --quick), later runs reuse it. Rows:

- ``monai``: NormalizeIntensity(nonzero) over the whole volume, MONAI ``sliding_window_inference`` (window
  ``train.patch_size``, overlap 0.5, gaussian, ``infer.sw_batch_size``), torch fp32, argmax;
- ``segmenter``: ``medseg3d.inference.segmenter.Segmenter`` (what ``medseg3d infer`` runs) with the engine
  pinned to PyTorch fp32;
- ``ENGINE/PRECISION``: the same Segmenter with that window engine (``infer.engine``/``infer.precision``), on
  all free cores (or ``--threads``); ``auto`` (the default of ``medseg3d infer``) measures engines, precisions
  and threads on its first window (a fresh cache), ``auto (cached)`` reuses that measurement.

Columns: ``setup`` (runner export/compile, outside ``infer``), ``infer`` (the whole inference call: reading
excluded, preprocessing, windows, stitching, inversion and postprocessing included; for ``auto`` also the
measurement), the ratio of ``infer`` to MONAI's, peak RSS, the percentage of voxels whose label equals the
torch fp32 Segmenter's (all voxels / inside the head, and the number that differ), the same against MONAI, and
Dice of the whole tumour against the phantom's truth.
Timings on a shared machine are noisy: the load (``uptime``) is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

DEFAULT_ENGINES = "torch/bf16,onnxruntime/fp32,openvino/fp32,openvino/bf16,auto"


# ------------------------------------------------------------------------------------------------- workers
def worker(args: argparse.Namespace) -> None:
    """One variant in this process; prints a JSON line."""
    import os

    import torch

    if args.cache:  # the engine choice is measured into this run's own cache (MEDSEG3D_CACHE/engines.json)
        os.environ["MEDSEG3D_CACHE"] = str(Path(args.cache).parent)
    threads = args.threads or C.free_cores()
    torch.set_num_threads(threads)
    cfg = C.brats_config([f"train.patch_size=[{args.window},{args.window},{args.window}]"])
    model = C.load_network(args.checkpoint, cfg)
    with np.load(args.volume) as z:
        image, affine = z["image"], z["affine"]
    values = np.asarray(C.label_values())
    info: dict = {"threads": threads}
    setup = 0.0
    if args.worker == "monai":
        from monai.inferers import sliding_window_inference

        t0 = time.perf_counter()
        x = torch.from_numpy(C.zscore_nonzero(image))[None]
        with torch.no_grad():
            logits = sliding_window_inference(x, (args.window,) * 3, cfg.infer.sw_batch_size, model,
                                              overlap=cfg.infer.overlap, mode=cfg.infer.blend)
        labels = values[logits[0].argmax(0).numpy()].astype(np.uint8)
        elapsed = time.perf_counter() - t0
    else:
        from medseg3d.data.synthetic import CHANNELS, LABELS
        from medseg3d.inference.segmenter import Segmenter

        engine, precision = ("torch", "fp32") if args.worker == "segmenter" else (
            ("auto", "auto") if args.engine == "auto" else tuple((args.engine.split("/") + ["auto"])[:2]))
        cfg.infer.threads = args.threads
        seg = Segmenter(model, cfg, list(CHANNELS), dict(LABELS), device="cpu", engine=engine, precision=precision)
        scan = seg.read((image, affine))
        t0 = time.perf_counter()
        runner = seg.predictor.window_fn(seg.members[0])  # the engine's export/compile, as infer's first window
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = seg.segment(scan).labels.astype(np.uint8)
        elapsed = time.perf_counter() - t0
        if args.worker == "runner":
            info["runner"] = runner.describe()
    np.save(args.out, labels)
    print(json.dumps({"infer_s": elapsed, "setup_s": setup, "peak_rss_mb": C.peak_rss_mb(), **info}))


# -------------------------------------------------------------------------------------------------- parent
def agreement(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> str:
    """Percent of equal labels over all voxels / inside the head, and the number of voxels that differ."""
    eq = a == b
    return f"{100 * eq.mean():.3f}/{100 * eq[mask].mean():.3f} ({int((~eq).sum())})"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 mm phantom (120 x 120 x 78) and 64³ windows")
    p.add_argument("--checkpoint", help="a brats_nnn checkpoint (medseg3d format); default: train briefly")
    p.add_argument("--train-iters", type=int, default=None,
                   help="training steps when no checkpoint is given (default 200; --quick 30)")
    p.add_argument("--engines", default=DEFAULT_ENGINES,
                   help=f"comma-separated ENGINE/PRECISION or auto (default {DEFAULT_ENGINES})")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per variant (default: all free cores; auto measures all against one)")
    p.add_argument("--window", type=int, default=None, help="window edge (default 128, --quick 64)")
    p.add_argument("--no-monai", action="store_true", help="skip the (slow) MONAI whole-volume baseline")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per variant")
    # internal: one variant in a child process
    p.add_argument("--worker", choices=("monai", "segmenter", "runner"), help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--volume", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.window = args.window or (64 if args.quick else 128)
    if args.train_iters is None:
        args.train_iters = 30 if args.quick else 200
    if args.worker:
        worker(args)
        return 0

    print(C.machine_line())
    print("before:", C.uptime())
    cfg = C.brats_config()
    ckpt = C.network(cfg, args.checkpoint, args.train_iters, 64)
    shape, spacing = ((120, 120, 78), 2.0) if args.quick else ((240, 240, 155), 1.0)
    image, truth, affine = C.phantom(shape, seed=0, spacing=spacing)
    head = image.any(0)
    print(f"volume 4 x {' x '.join(map(str, shape))} at {spacing:g} mm; window {args.window}³; "
          f"checkpoint {ckpt}")
    work = Path(tempfile.mkdtemp(prefix="medseg3d_infer_cpu_"))
    vol = work / "volume.npz"
    np.savez(vol, image=image, affine=affine)
    cache = work / "engines.json"

    variants: list[tuple[str, list[str]]] = []
    if not args.no_monai:
        variants.append(("monai", ["--worker", "monai"]))
    variants.append(("segmenter", ["--worker", "segmenter"]))
    for e in [e.strip() for e in args.engines.split(",") if e.strip()]:
        variants.append((e, ["--worker", "runner", "--engine", e]))
        if e == "auto":
            variants.append(("auto (cached)", ["--worker", "runner", "--engine", e]))
    results: dict[str, dict] = {}
    for name, extra in variants:
        out = work / f"{name.replace('/', '_').replace(' ', '_')}.npy"
        cmd = [str(Path(__file__).resolve()), *extra, "--checkpoint", str(ckpt), "--volume", str(vol),
               "--out", str(out), "--window", str(args.window), "--cache", str(cache)]
        if args.threads or (extra[1] == "runner" and not name.startswith("auto")):
            # requested engines run on all free cores unless told (so their rows hold no thread measurement);
            # auto measures the thread count as it would in use
            cmd += ["--threads", str(args.threads or C.free_cores())]
        print(f"  running {name} ...", flush=True)
        r = C.run_child(cmd, env={"OMP_NUM_THREADS": str(args.threads or C.free_cores())}, timeout=args.timeout)
        if "error" not in r:
            r["labels"] = np.load(out)
        results[name] = r
        if "runner" in r:
            d = r["runner"]
            print(f"    runner: {d['engine']}/{d['precision']} x{d['threads']} threads ({d['selection']}); "
                  f"measured {json.dumps(d['measured'])}; failed {json.dumps(d['failed'])}", flush=True)

    ref = results.get("segmenter", {}).get("labels")
    monai = results.get("monai", {}).get("labels")
    t_monai = results.get("monai", {}).get("infer_s")
    wt_truth = truth > 0
    print()
    print(f"{'variant':<16} {'engine':<22} {'setup s':>8} {'infer s':>8} {'/MONAI':>7} {'peak RSS':>9} "
          f"{'% = fp32 all/head (differ)':>28} {'% = MONAI all/head (differ)':>28} {'WT Dice':>8}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<16} error: {r['error']}")
            continue
        lab = r["labels"]
        d = r.get("runner")
        engine = f"{d['engine']}/{d['precision']} x{d['threads']}" if d else f"torch/fp32 x{r['threads']}"
        ratio = f"{r['infer_s'] / t_monai:.2f}" if t_monai else "-"
        agree_ref = agreement(lab, ref, head) if ref is not None else "-"
        agree_monai = agreement(lab, monai, head) if monai is not None else "-"
        print(f"{name:<16} {engine:<22} {r['setup_s']:>8.1f} {r['infer_s']:>8.1f} {ratio:>7} "
              f"{r['peak_rss_mb']:>6.0f} MB {agree_ref:>28} {agree_monai:>28} {dice(lab > 0, wt_truth):>8.3f}")
    print()
    print("after:", C.uptime())
    return 0


if __name__ == "__main__":
    sys.exit(main())
