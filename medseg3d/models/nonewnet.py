"""No New-Net (Isensee et al. 2018): a well-trained 3D U-Net for BraTS 2018.

Isensee F., Kickingereder P., Wick W., Bendszus M., Maier-Hein K. H. "No New-Net", MICCAI BrainLes workshop
2018, LNCS 11384 (arXiv:1809.10483).

The paper keeps the 3D U-Net (Çiçek 2016) and changes only details: instance normalisation instead of batch
norm, leaky ReLU (negative slope 1e-2), 30 base filters doubled per level over 4 poolings (30, 60, 120, 240,
480 feature maps at 128³ → 8³), the number of feature maps reduced before upsampling (the second convolution of
each decoder level, and of the bottleneck, outputs half its input's filters), trilinear upsampling instead of
transposed convolutions, zero-padded 3³ convolutions, a 1³ head (sigmoid per region in the paper's
region-based training; this net returns logits). 128³ patches, batch 2.

Deep supervision: the BraTS 2018 network has none (the element-wise-summed segmentation layers of Isensee et
al.'s 2017 BraTS entry were dropped; NiftyNet's reimplementation, ``niftynet.network.no_new_net``, has a single
head too), so ``deep_supervision=False`` is the default. With ``deep_supervision=True`` a 1³ head is added to each
decoder level below full resolution (scales 1/2 … 1/2^(depth-1)); in training mode the net then returns
``[full_res, 1/2, 1/4, ...]`` logits, every one upsampled (trilinearly) to the input's size.

Instance norm is affine (learned scale and shift), as in the authors' code (nnU-Net lineage); MONAI's plain
``"instance"`` is not affine, so the default norm here is ``("instance", {"affine": True})``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import SegNet, check_positive_int
from .blocks import LayerSpec, StackedConvs, conv, max_pool, upsample

_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


@MODELS.register("nonewnet")
class NoNewNet(SegNet):
    """No New-Net (Isensee et al. 2018): 3D (the paper) or 2D U-Net with IN, leaky ReLU and linear upsampling.

    Args:
        spatial_dims: 3 (default, the paper) or 2.
        in_channels, out_channels: 4 and 3 by default (BraTS: T1, T1c, T2, FLAIR → WT, TC, ET regions).
        base_filters: 30.
        depth: number of poolings, 4 (feature maps 30, 60, 120, 240, 480).
        norm: ``("instance", {"affine": True})``.
        act: ``("leakyrelu", {"negative_slope": 0.01})``.
        up_mode: ``"linear"`` (trilinear/bilinear, the paper), ``"nearest"`` or ``"transpose"``.
        deep_supervision: ``False`` (the paper); see the module docstring.
        dropout: channel dropout in the bottleneck convolutions (0, the paper has none).

    Divisor ``2**depth`` (16). Parameters with defaults: 14,490,753 (4 in, 3 out); with ``deep_supervision``
    another 639 for the three extra 1³ heads (on 120, 60 and 30 channels).
    """

    paper = "Isensee et al. No New-Net. BrainLes (MICCAI) 2018"
    dims = (2, 3)

    def __init__(self, spatial_dims: int = 3, in_channels: int = 4, out_channels: int = 3, *,
                 base_filters: int = 30, depth: int = 4, norm: LayerSpec = ("instance", {"affine": True}),
                 act: LayerSpec = ("leakyrelu", {"negative_slope": 0.01}), up_mode: str = "linear",
                 deep_supervision: bool = False, dropout: float = 0.0):
        super().__init__(spatial_dims, in_channels, out_channels)
        base = check_positive_int("base_filters", base_filters)
        depth = check_positive_int("depth", depth)
        if up_mode not in ("linear", "nearest", "transpose"):
            raise ValueError(f"up_mode must be 'linear', 'nearest' or 'transpose', got {up_mode!r}")
        if not isinstance(deep_supervision, bool):
            raise ValueError(f"deep_supervision must be True or False, got {deep_supervision!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.divisor = 2 ** depth
        self.depth = depth
        self.deep_supervision = deep_supervision
        sd = spatial_dims
        chans = [base * 2 ** i for i in range(depth + 1)]

        self.pool = max_pool(sd, 2)
        self.enc = nn.ModuleList()
        ch = in_channels
        for i in range(depth):
            self.enc.append(StackedConvs(sd, ch, chans[i], n=2, norm=norm, act=act))
            ch = chans[i]
        # bottleneck: chans[depth] filters, then halved before upsampling
        self.bottleneck = StackedConvs(sd, ch, chans[depth - 1], n=2, mid_ch=chans[depth], norm=norm, act=act,
                                       dropout_p=dropout)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        self.ds_heads = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(upsample(sd, chans[i], chans[i], mode=up_mode))
            out = chans[i - 1] if i > 0 else chans[0]
            self.dec.append(StackedConvs(sd, 2 * chans[i], out, n=2, mid_ch=chans[i], norm=norm, act=act))
            if deep_supervision and 0 < i < depth:
                self.ds_heads.append(conv(sd, out, out_channels, 1))
        self.head = conv(sd, chans[0], out_channels, 1)
        self._interp = _INTERP[sd]

    def _forward(self, x: torch.Tensor, **_: Any) -> Any:
        size = x.shape[2:]
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.bottleneck(self.pool(x))
        ds_feats = []  # decoder outputs, kept only when the deep-supervision heads will read them
        keep = self.training and self.deep_supervision
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            if keep:
                ds_feats.append(x)
        main = self.head(x)
        if not keep:
            return main
        # ds_heads[j] sits on dec[j] (deepest first); outputs go full-res first, then 1/2, 1/4, ...
        outs = [main]
        for j in range(len(self.ds_heads) - 1, -1, -1):
            logits = self.ds_heads[j](ds_feats[j])
            outs.append(F.interpolate(logits, size=size, mode=self._interp, align_corners=False))
        return outs
