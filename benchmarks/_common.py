"""Shared pieces of the CPU benchmarks: the machine's description, BraTS-size phantoms, the brats_nnn network
(from a checkpoint, or trained briefly on phantoms so its labels are not noise), and peak memory of a child
process.

Run the benchmarks from the repository root (``python benchmarks/infer_cpu.py``); they import medseg3d from
there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from medseg3d.config import Config, load_config
from medseg3d.data.synthetic import CHANNELS, LABELS, make_brats_phantom
from medseg3d.runtime import cpu_model, free_cores

BRATS_CONFIG = ROOT / "configs" / "brats_nnn.yaml"
CACHE = Path(os.environ.get("MEDSEG3D_CACHE", Path.home() / ".cache" / "medseg3d")) / "benchmarks"


# ---------------------------------------------------------------------------------------------- the machine
def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine_line() -> str:
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f} " in text)
    except OSError:
        pass
    return f"CPU: {cpu_model()} ({free_cores()} cores free to this process; {flags}); torch {torch.__version__}"


# ----------------------------------------------------------------------------------------------- the data
def brats_config(overrides: list[str] | None = None) -> Config:
    """configs/brats_nnn.yaml with a softmax over the BraTS labels (``data.target=labels``; the config trains
    one sigmoid per region): the same network and windows, and labels that compare voxel by voxel."""
    return load_config(BRATS_CONFIG, ["data.target=labels", *(overrides or [])])


def label_values() -> list[int]:
    return list(LABELS.values())


def phantom(shape: tuple[int, int, int], seed: int, spacing: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (4, X, Y, Z) float32, label (X, Y, Z) uint8 with BraTS values, affine) of a phantom, cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"phantom_{'x'.join(map(str, shape))}_{spacing:g}mm_seed{seed}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["image"], z["label"], z["affine"]
    image, label = make_brats_phantom(shape, seed=seed, spacing=(spacing,) * 3)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, image=image, label=label, affine=affine)
    os.replace(tmp, path)
    return image, label, affine


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """medseg3d's ``zscore_nonzero`` (MONAI NormalizeIntensity, nonzero, channel-wise) of a (C, ...) array."""
    from monai.transforms import NormalizeIntensity

    return np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(image)), dtype=np.float32)


# -------------------------------------------------------------------------------------------- the network
def build_network(cfg: Config) -> torch.nn.Module:
    from medseg3d.bundle import build_network as build

    return build(cfg, len(CHANNELS), len(LABELS))


def load_network(checkpoint: str | os.PathLike, cfg: Config) -> torch.nn.Module:
    """The network of a medseg3d checkpoint (or run folder)."""
    from medseg3d.bundle import load_model

    model, _ = load_model(checkpoint).build()
    return model.eval()


def save_network(model: torch.nn.Module, cfg: Config, path: Path) -> Path:
    from medseg3d.bundle import Head, ModelContract, save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    contract = ModelContract(cfg, {"": Head(list(CHANNELS), dict(LABELS))}, (0, 1, 2), model.state_dict())
    return save_checkpoint(contract, path)


def train_briefly(cfg: Config, iters: int, patch: int, seed: int = 0, log=print, device: str = "cpu",
                  seeds: tuple[int, ...] = (101, 102)) -> torch.nn.Module:
    """The config's network trained for ``iters`` Adam steps (batch 2, ``patch``³ patches, half of them centred
    on tumour, random flips, Dice + cross-entropy) on 1 mm BraTS-size phantoms (``seeds``; the benchmarks
    segment seed 0), on ``device``; returned on the CPU. A few hundred steps give a net whose labels are mostly
    right, which is what comparing engines needs (near-tie logits of a random net exaggerate precision
    effects)."""
    from medseg3d.engine.losses import build_loss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cases = []
    lut = np.zeros(max(LABELS.values()) + 1, dtype=np.int64)
    for i, v in enumerate(LABELS.values()):
        lut[v] = i
    for s in seeds:
        image, label, _ = phantom((240, 240, 155), s)
        cases.append((torch.from_numpy(zscore_nonzero(image)), torch.from_numpy(lut[label]),
                      np.argwhere(label > 0), np.argwhere(image.any(0))))
    model = build_network(cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = build_loss("dice_ce")
    t0 = time.perf_counter()
    for it in range(iters):
        xs, ys = [], []
        for b in range(2):
            img, lab, tumour, head = cases[rng.integers(len(cases))]
            centre = (tumour if b == 0 else head)[rng.integers(len(tumour if b == 0 else head))]
            lo = [int(np.clip(c - patch // 2, 0, s - patch)) for c, s in zip(centre, lab.shape)]
            sl = tuple(slice(a, a + patch) for a in lo)
            x, y = img[(slice(None),) + sl], lab[sl][None]
            for ax in range(3):
                if rng.random() < 0.5:
                    x, y = x.flip(ax + 1), y.flip(ax + 1)
            xs.append(x)
            ys.append(y)
        loss = loss_fn(model(torch.stack(xs).to(device)), torch.stack(ys).float().to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 10 == 0 or it == iters - 1:
            log(f"  train step {it + 1}/{iters}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    return model.cpu().eval()


def network(cfg: Config, checkpoint: str | None, train_iters: int, train_patch: int, log=print) -> Path:
    """A checkpoint path: ``checkpoint`` if given, else a cached briefly-trained network (trained on first
    use)."""
    if checkpoint:
        return Path(checkpoint)
    path = CACHE / f"brats_nnn_trained_{train_iters}it_{train_patch}.pt"
    if not path.is_file():
        log(f"training brats_nnn for {train_iters} steps on {train_patch}³ phantom patches (cached as {path})")
        save_network(train_briefly(cfg, train_iters, train_patch, log=log), cfg, path)
    return path


# ------------------------------------------------------------------------------------ child processes
def run_child(args: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run ``python args...`` in a fresh process whose last stdout line is a JSON object; returns that object
    (which holds the child's own ``peak_rss_mb``: RUSAGE_CHILDREN keeps only the maximum over all children so
    far, so each child reports its own), or ``{"error": ...}``."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=str(ROOT))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (err or out).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2 ** 20
