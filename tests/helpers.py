"""Shared test fixtures: a fixed Threshold model (no training), affines in any orientation, a phantom, tiny
random-initialised checkpoints saved as real medseg3d checkpoints."""

from pathlib import Path

import numpy as np
import torch

from medseg3d.config import load_config
from medseg3d.bundle import Head, ModelContract, save_checkpoint
from medseg3d.inference.segmenter import Segmenter
from medseg3d.models import build_model

LEVEL = 120.0


class Threshold(torch.nn.Module):
    """logit(background) = 0, logit(foreground) = intensity - LEVEL (preprocessing leaves intensities as
    they are): foreground = brighter than LEVEL."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1] - LEVEL], dim=1)


def make_affine(codes: str, spacing, oblique_deg: float = 0.0, origin=(12.0, -30.0, 7.5)) -> np.ndarray:
    axes = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    a = np.zeros((4, 4))
    for col, code in enumerate(codes):
        row, sign = axes[code]
        a[row, col] = sign * spacing[col]
    if oblique_deg:
        t = np.deg2rad(oblique_deg)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        a[:3, :3] = rot @ a[:3, :3]
    a[:3, 3] = origin
    a[3, 3] = 1
    return a


def phantom(shape) -> np.ndarray:
    """A smooth, asymmetric object inside a zero background (so a flip or shift would show)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt((grids[0] - 0.2) ** 2 + (grids[1] + 0.1) ** 2 + (grids[2] / 1.2) ** 2)
    img = np.where(r < 0.9, 100 + 80 * np.cos(3 * grids[0]) + 40 * grids[1] + 30 * grids[2], 0)
    return img.astype(np.float32)


def segmenter(spacing=(1.5, 1.5, 1.5)) -> Segmenter:
    cfg = load_config({"data": {"root": "."}, "preprocess": {"spacing": list(spacing) if spacing else None,
                                                             "normalize": "none"},
                       "train": {"patch_size": [32, 32, 32]}, "infer": {"overlap": 0.25}})
    return Segmenter(Threshold(), cfg, ["T1"], {"background": 0, "object": 3}, device="cpu")




BRATS_CHANNELS = ["T1", "T1ce", "T2", "FLAIR"]
BRATS_LABELS = {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 4}


def tiny_checkpoint(path: Path, channels=("T1",), labels=None, seed: int = 0, spacing=(3.0, 3.0, 3.0)) -> Path:
    """A random-initialised 3D U-Net (4 base filters, depth 2) saved as a real checkpoint with its config."""
    labels = dict(labels or {"background": 0, "object": 3})
    cfg = load_config({"data": {"root": "."}, "preprocess": {"spacing": list(spacing)},
                       "model": {"name": "unet", "params": {"base_filters": 4, "depth": 2, "norm": "instance"}},
                       "train": {"patch_size": [16, 16, 16]}, "infer": {"overlap": 0.25, "sw_batch_size": 4}})
    torch.manual_seed(seed)
    model = build_model("unet", 3, len(channels), len(labels), base_filters=4, depth=2, norm="instance")
    return save_checkpoint(ModelContract(cfg, {"": Head(list(channels), labels)}, (0, 1, 2), model.state_dict()),
                           path)
