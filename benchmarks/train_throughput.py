"""Can the CPU feed the network? brats_nnn's augmentation pipeline (patches per second on one core) against the
network's training-step rate on the same machine, and the convolution throughput a training step achieves
against a large conv3d's on this machine.

    python benchmarks/train_throughput.py             # 128³ patches, batch 2 (configs/brats_nnn.yaml)
    python benchmarks/train_throughput.py --quick     # 64³ patches, fewer samples and steps (~1 min)

- augmentation: ``medseg3d.data.transforms.augment_transforms`` of configs/brats_nnn.yaml (patch sampling with
  foreground oversampling, rotation, scaling, elastic deformation, mirroring, gamma) on a preprocessed
  BraTS-size phantom (1 mm, 240 x 240 x 155, cropped to the head and z-scored as in training), one torch
  thread: patches per second per core;
- training step: forward, Dice + cross-entropy, backward and an Adam step of brats_nnn at the config's batch
  and patch, with all free cores: seconds per step and patches per second;
- FLOPs of a step: :class:`torch.utils.flop_counter.FlopCounterMode` on the ``meta`` device (forward and
  backward; convolutions and matrix products, 2 FLOPs per multiply-add), divided by the measured step time;
- conv3d peak: the best forward + backward throughput of large 3³ conv3d layers (64 and 128 channels) with the
  same threads.

The machine's load (``uptime``) is printed before and after: timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def augmentation_rate(cfg, samples: int, seed: int = 0) -> tuple[float, float]:
    """(patches per second on one core, seconds of preprocessing) of the config's augmentation."""
    import torch
    from monai import transforms as mt
    from monai.data import MetaTensor

    from medseg3d.data.transforms import augment_transforms, preprocess_transforms

    torch.set_num_threads(1)
    image, label, affine = C.phantom((240, 240, 155), seed=seed)
    t0 = time.perf_counter()
    aff = torch.as_tensor(affine, dtype=torch.float64)
    case = {"image": MetaTensor(torch.from_numpy(image), affine=aff),
            "label": MetaTensor(torch.from_numpy(label[None].astype(np.float32)), affine=aff)}
    case = mt.Compose(preprocess_transforms(cfg, label_values=C.label_values()))(case)
    t_pre = time.perf_counter() - t0
    aug = mt.Compose(augment_transforms(cfg))
    aug.set_random_state(seed)
    out = aug(case)  # warm-up (first calls allocate)
    t0 = time.perf_counter()
    for _ in range(samples):
        out = aug(case)
    elapsed = time.perf_counter() - t0
    patch = out[0] if isinstance(out, list) else out
    assert tuple(patch["image"].shape[1:]) == tuple(cfg.train.patch_size), patch["image"].shape
    return samples / elapsed, t_pre


def training_step_time(cfg, steps: int, threads: int) -> float:
    """Seconds per training step (forward, loss, backward, Adam) at the config's batch and patch size."""
    import torch

    from medseg3d.engine.losses import build_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = C.build_network(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    loss_fn = build_loss(cfg.train.loss)
    b, patch = cfg.train.batch_size, list(cfg.train.patch_size)
    x = torch.randn(b, 4, *patch)
    y = torch.randint(0, 4, (b, 1, *patch)).float()

    def step():
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def training_step_flops(cfg) -> float:
    """FLOPs of one training step's forward and backward (meta device: nothing is computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = C.build_network(cfg).train()
        x = torch.zeros(cfg.train.batch_size, 4, *cfg.train.patch_size, requires_grad=False)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        (out[0] if isinstance(out, (list, tuple)) else out).sum().backward()
    return float(counter.get_total_flops())


def conv3d_peak(threads: int, quick: bool) -> tuple[float, str]:
    """Best forward + backward GFLOP/s of a large 3³ conv3d (bias-free, batch 1) and the shape that gave it."""
    import torch

    torch.set_num_threads(threads)
    shapes = [(64, 64)] if quick else [(64, 64), (128, 48)]  # (channels, edge)
    best, best_shape = 0.0, ""
    for ch, edge in shapes:
        conv = torch.nn.Conv3d(ch, ch, 3, padding=1, bias=False)
        x = torch.randn(1, ch, edge, edge, edge, requires_grad=True)
        flops = 3 * 2 * ch * ch * 27 * edge ** 3  # forward + grad input + grad weight
        for rep in range(2 if quick else 3):
            t0 = time.perf_counter()
            conv(x).sum().backward()
            dt = time.perf_counter() - t0
            if rep:  # the first run is a warm-up
                rate = flops / dt / 1e9
                if rate > best:
                    best, best_shape = rate, f"{ch}->{ch} ch, {edge}³"
    return best, best_shape


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64³ patches, 8 samples, 1 step")
    p.add_argument("--samples", type=int, default=None, help="augmented patches to time (default 20, quick 8)")
    p.add_argument("--steps", type=int, default=None, help="training steps to time (default 2, quick 1)")
    p.add_argument("--threads", type=int, default=None, help="threads of the training step (default: free cores)")
    args = p.parse_args(argv)
    samples = args.samples or (8 if args.quick else 20)
    steps = args.steps or (1 if args.quick else 2)
    threads = min(args.threads or C.free_cores(), C.free_cores())
    overrides = ["train.patch_size=[64,64,64]"] if args.quick else []
    cfg = C.brats_config(overrides)
    patch = "x".join(map(str, cfg.train.patch_size))

    print(C.machine_line())
    print("before:", C.uptime())
    aug_rate, t_pre = augmentation_rate(cfg, samples)
    print(f"augmentation: {aug_rate:.2f} patches/s on one core ({samples} patches of {patch}; "
          f"preprocessing the case took {t_pre:.1f} s, cached in training)", flush=True)
    t_step = training_step_time(cfg, steps, threads)
    net_rate = cfg.train.batch_size / t_step
    print(f"training step: {t_step:.2f} s (batch {cfg.train.batch_size} x {patch}, {threads} threads) = "
          f"{net_rate:.2f} patches/s", flush=True)
    flops = training_step_flops(cfg)
    achieved = flops / t_step / 1e9
    peak, peak_shape = conv3d_peak(threads, args.quick)
    cores = net_rate / aug_rate
    print()
    print(f"{'augmentation patches/s per core':<44} {aug_rate:10.2f}")
    print(f"{'network patches/s (training)':<44} {net_rate:10.2f}")
    print(f"{'cores of augmentation to feed the network':<44} {cores:10.2f}   (of {C.free_cores()} free)")
    print(f"{'training step GFLOP (forward + backward)':<44} {flops / 1e9:10.1f}")
    print(f"{'achieved GFLOP/s in a training step':<44} {achieved:10.1f}")
    print(f"{'conv3d peak GFLOP/s (' + peak_shape + ')':<44} {peak:10.1f}")
    print(f"{'training step / conv3d peak':<44} {achieved / peak:10.1%}")
    print()
    print("after:", C.uptime())
    return 0


if __name__ == "__main__":
    sys.exit(main())
