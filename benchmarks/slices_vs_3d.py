"""2D vs 2.5D vs 3D on the same data in the same wall-clock budget.

Each row trains on data_samples/ (5 training cases, 1 validation case: fold 0 of 6) for ``--budget`` seconds of
wall clock, with the same preprocessing (the demo's: RAS, 4 mm isotropic, crop to foreground, z-score; cached
once before any clock starts), the same optimiser (Adam, lr 3e-3, no decay) and nets of similar width; then
segments the two held-out scans (data_samples/imagesTs, never trained on) with the Segmenter and reports the
Dice per class against data_samples/labelsTs and the inference time per scan (preprocessing, network,
inversion to the scan's grid; a warm-up scan first, then the fastest of three runs per scan). Ratios are against the 3D row of the same run.

    python benchmarks/slices_vs_3d.py [--budget 120] [--threads 1] [--out /tmp/slices_vs_3d]

One intra-op thread by default: on a small machine shared with other processes, two threads made small nets
many times slower and the timings unstable.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"

COMMON = ["preprocess.spacing=[4.0, 4.0, 4.0]", "data.num_folds=6", "data.fold=0", "train.optimizer=adam",
          "train.lr=0.003", "train.scheduler=none", "train.epochs=100000", "train.iters_per_epoch=25",
          "train.val_every=100000", "train.fg_oversample=0.5",
          "train.augment={flip_prob: 0.5, intensity_prob: 0.15, noise_prob: 0.1}"]
UNET2D = ["model.params={base_filters: 16, depth: 3, norm: instance}", "train.patch_size=[48, 48]",
          "train.batch_size=16", "infer.sw_batch_size=16", "infer.overlap=0.25"]
ROWS = [  # (label, config, overrides)
    ("3D U-Net (demo)", "demo.yaml", ["model.params={base_filters: 8, depth: 3, norm: instance}",
                                      "train.patch_size=[48, 48, 48]", "train.batch_size=2"]),
    ("2D U-Net", "slices2d_unet.yaml", UNET2D + ["model.context_slices=0"]),
    ("2.5D U-Net (k=2)", "slices2d_unet.yaml", UNET2D + ["model.context_slices=2"]),
    ("2D UNet++ (deep sup.)", "slices2d_unetpp.yaml",
     ["model.params={base_filters: 16, depth: 3, norm: instance, deep_supervision: true}",
      "train.patch_size=[48, 48]", "train.batch_size=16", "infer.sw_batch_size=16", "infer.overlap=0.25"]),
]


def warm_cache(cfg) -> None:
    """Preprocess every training case into the cache, so no row's clock pays for it."""
    from monai import transforms as mt
    from monai.data import PersistentDataset

    from medseg3d.data.datasets import load_dataset
    from medseg3d.data.transforms import LoadCased, preprocess_transforms
    from medseg3d.engine.trainer import cache_dir_for

    d = cfg.data
    info = load_dataset(d.root, d.layout, d.dataset_json, d.channels, d.labels)
    pre = mt.Compose([LoadCased(("image", "label"), channels=len(info.channels)),
                      *preprocess_transforms(cfg, list(info.labels.values()))])
    cache = cache_dir_for(cfg, info)
    cache.mkdir(parents=True, exist_ok=True)
    for _ in PersistentDataset(info.training, transform=pre, cache_dir=cache):
        pass


def evaluate(run_dir: Path, repeats: int = 3) -> tuple[list[float], float]:
    """Mean Dice per class over the test scans, and seconds per scan (the fastest of ``repeats`` runs of each
    scan, averaged over the scans: the machine is shared, so the minimum is the least noisy)."""
    import medseg3d
    from medseg3d.engine.metrics import dice_per_class
    from medseg3d.io.nifti import read_label

    seg = medseg3d.Segmenter.from_checkpoint(run_dir, device="cpu")
    values = [v for v in seg.labels.values() if v != 0]
    scans = sorted((SAMPLES / "imagesTs").glob("*.nii.gz"))
    seg.predict_scan(seg.read(scans[0]))  # warm-up
    dices, times = [], []
    for p in scans:
        scan, runs = seg.read(p), []
        for _ in range(repeats):
            pred = seg.predict_scan(scan)
            runs.append(seg.last_runtime)
        times.append(min(runs))
        dices.append(dice_per_class(np.asarray(pred.dataobj), read_label(SAMPLES / "labelsTs" / p.name), values))
    return list(np.nanmean(np.array(dices, float), axis=0)), float(np.mean(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds per row (default 120)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--out", default=None, help="run folders and cache (default: a temporary folder)")
    ap.add_argument("--rows", default=None, help="comma-separated row numbers to run (default all; 0 = 3D)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="slices_vs_3d_"))

    import medseg3d
    from medseg3d.engine.trainer import Trainer

    rows = ROWS if args.rows is None else [ROWS[int(i)] for i in args.rows.split(",")]
    results = []
    for label, config, extra in rows:
        sets = COMMON + extra + [f"train.budget={args.budget}s", f"output_dir={out / 'runs'}",
                                 f"data.cache_dir={out / 'cache'}", f"name={label.split()[0].lower()}"]
        cfg = medseg3d.load_config(REPO / "configs" / config, sets)
        warm_cache(cfg)
        trainer = Trainer(cfg)
        t0 = time.perf_counter()
        run_dir = trainer.fit()
        train_s = time.perf_counter() - t0
        ck = torch.load(run_dir / "last.pt", weights_only=True)
        params = sum(v.numel() for k, v in ck["model"].items() if not k.endswith(("running_mean", "running_var",
                                                                                   "num_batches_tracked")))
        dice, infer_s = evaluate(run_dir)
        names = [n for n in ck["labels"] if n != "background"]
        results.append(dict(label=label, params=params, iters=ck["iteration"], train_s=train_s, dice=dice,
                            mean=float(np.nanmean(dice)), infer_s=infer_s, names=names))
        print(f"{label}: {ck['iteration']} iterations in {train_s:.0f}s, Dice {np.nanmean(dice):.3f}, "
              f"{infer_s:.2f}s per scan", flush=True)

    ref = next((r for r in results if r["label"].startswith("3D")), results[0])
    names = results[0]["names"]
    print(f"\nbudget {args.budget:.0f}s per row, {args.threads} thread(s), torch {torch.__version__}\n")
    print("| config | parameters | iterations | Dice " + " | Dice ".join(names) +
          " | Dice mean | vs 3D | inference s/scan | vs 3D |")
    print("|---|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['label']} | {r['params'] / 1e6:.2f} M | {r['iters']} | " +
              " | ".join(f"{d:.3f}" for d in r["dice"]) +
              f" | {r['mean']:.3f} | {r['mean'] / ref['mean']:.2f}× | {r['infer_s']:.2f} | "
              f"{r['infer_s'] / ref['infer_s']:.2f}× |")


if __name__ == "__main__":
    main()
