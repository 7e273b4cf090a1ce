"""Losses, selected by name in the config (``train.loss``).

Every loss is called as ``loss(output, target, image)`` where ``output`` is whatever the net returned in
training mode (a tensor, a deep-supervision list, or the AE-regularised net's dict), ``target`` is the label
map (N, 1, *spatial) of class indices for softmax training or the region masks (N, R, *spatial) for sigmoid
training, and ``image`` the input (the AE-regularised loss reconstructs it).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from ..registry import LOSSES


class _SegLoss(nn.Module):
    """Applies a segmentation criterion to a tensor or to each deep-supervision output.

    Deep-supervision outputs are weighted 1, 1/2, 1/4, ... and normalised, as in nnU-Net.
    """

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion

    def seg(self, out: Any, target: torch.Tensor) -> torch.Tensor:
        if isinstance(out, (list, tuple)):
            weights = torch.tensor([0.5 ** i for i in range(len(out))])
            weights = weights / weights.sum()
            return sum(w * self.criterion(o, target) for w, o in zip(weights.tolist(), out))
        if isinstance(out, dict):
            out = out["seg"]
        return self.criterion(out, target)

    def forward(self, out: Any, target: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return self.seg(out, target)


class DiceBCELoss(nn.Module):
    """Soft Dice on sigmoid outputs + binary cross-entropy per region channel (nnU-Net's region-based loss).
    MONAI's DiceCELoss is not used here: with several channels it applies a softmax cross-entropy, which treats
    overlapping region masks (WT contains TC contains ET) as one class distribution."""

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, **dice_kwargs):
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, **dice_kwargs)
        self.bce = nn.BCEWithLogitsLoss()
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape != target.shape:
            raise ValueError(f"region outputs {tuple(input.shape)} and masks {tuple(target.shape)} differ")
        out = self.lambda_ce * self.bce(input, target.float())
        return out + self.lambda_dice * self.dice(input, target) if self.lambda_dice else out


def _dice_kwargs(multilabel: bool) -> dict:
    if multilabel:
        return dict(sigmoid=True)
    return dict(softmax=True, to_onehot_y=True)


@LOSSES.register("dice_ce")
def dice_ce(multilabel: bool = False, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> nn.Module:
    """Soft Dice + cross-entropy (binary cross-entropy per region when ``multilabel``), batch Dice as nnU-Net."""
    if multilabel:
        return _SegLoss(DiceBCELoss(lambda_dice, lambda_ce, batch=True, smooth_nr=1e-5, smooth_dr=1e-5))
    return _SegLoss(DiceCELoss(**_dice_kwargs(multilabel), batch=True, smooth_nr=1e-5, smooth_dr=1e-5,
                               lambda_dice=lambda_dice, lambda_ce=lambda_ce))


@LOSSES.register("dice")
def dice(multilabel: bool = False) -> nn.Module:
    """Soft Dice alone (V-Net's loss; Myronenko's segmentation term)."""
    return _SegLoss(DiceLoss(**_dice_kwargs(multilabel), batch=True, smooth_nr=1e-5, smooth_dr=1e-5))


@LOSSES.register("ce")
def ce(multilabel: bool = False) -> nn.Module:
    """Cross-entropy (binary per region when ``multilabel``)."""
    if multilabel:
        return _SegLoss(DiceBCELoss(lambda_dice=0.0, lambda_ce=1.0))
    return _SegLoss(_CrossEntropy())


class _CrossEntropy(nn.Module):
    """Softmax cross-entropy of logits (N, C, ...) against a label map of class indices (N, 1, ...)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(input, target[:, 0].long())


class AERegLoss(_SegLoss):
    """Myronenko 2018: L = L_dice + w_l2 · L_L2 + w_kl · L_KL.

    L_L2 is the mean squared error between the VAE's reconstruction and the input; L_KL is
    ``1/N Σ (μ² + σ² − log σ² − 1)`` over the latent (N voxels of the input, as in the paper). Outside training
    (no ``recon`` in the output) it is the Dice term alone.
    """

    def __init__(self, multilabel: bool, w_l2: float = 0.1, w_kl: float = 0.1):
        super().__init__(DiceLoss(**_dice_kwargs(multilabel), batch=True, smooth_nr=1e-5, smooth_dr=1e-5))
        self.w_l2, self.w_kl = w_l2, w_kl

    def forward(self, out: Any, target: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.seg(out, target)
        if isinstance(out, dict) and "recon" in out:
            if image is None:
                raise ValueError("the ae_reg loss needs the input image to score the reconstruction")
            l2 = torch.mean((out["recon"] - image) ** 2)
            mu, logvar = out["mu"], out["logvar"]
            n_vox = image[0].numel()
            kl = torch.sum(mu ** 2 + logvar.exp() - logvar - 1) / (n_vox * image.shape[0])
            loss = loss + self.w_l2 * l2 + self.w_kl * kl
        return loss


@LOSSES.register("ae_reg")
def ae_reg(multilabel: bool = True, w_l2: float = 0.1, w_kl: float = 0.1) -> nn.Module:
    """Dice + 0.1·L2 + 0.1·KL for the autoencoder-regularised net (Myronenko 2018)."""
    return AERegLoss(multilabel, w_l2, w_kl)


def build_loss(name: str, multilabel: bool = False, **params: Any) -> nn.Module:
    return LOSSES.get(name)(multilabel=multilabel, **params)
