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

Built from the shared :class:`~medseg3d.models.parts.Encoder` (the bottleneck is its last stage) and
:class:`~medseg3d.models.parts.Decoder`; the weights of checkpoints written before (keys ``enc.*``,
``bottleneck.*``, ``up.*``, ``dec.*``) load under the new names.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import KeyRule, SegNet, check_bool, check_choice, check_dropout, check_positive_int
from .blocks import LayerSpec, StackedConvs, conv, upsample
from .parts import Decoder, Encoder

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

    Divisor ``2**depth`` (16). Parameters with defaults, and with deep supervision (another 639 for the three
    extra 1³ heads on 120, 60 and 30 channels):

        3D, 4 in / 3 out: 14,490,753
        3D, 4 in / 3 out, deep_supervision=True: 14,491,392
    """

    paper = "Isensee et al. No New-Net. BrainLes (MICCAI) 2018"
    dims = (2, 3)

    def __init__(self, spatial_dims: int = 3, in_channels: int = 4, out_channels: int = 3, *,
                 base_filters: int = 30, depth: int = 4, norm: LayerSpec = ("instance", {"affine": True}),
                 act: LayerSpec = ("leakyrelu", {"negative_slope": 0.01}), up_mode: Literal["linear", "nearest", "transpose"] = "linear",
                 deep_supervision: bool = False, dropout: float = 0.0):
        super().__init__(spatial_dims, in_channels, out_channels)
        base = check_positive_int("base_filters", base_filters)
        depth = check_positive_int("depth", depth)
        check_choice("up_mode", up_mode, ("linear", "nearest", "transpose"))
        self.deep_supervision = check_bool("deep_supervision", deep_supervision)
        dropout = check_dropout("dropout", dropout)
        self.divisor = 2 ** depth
        self.depth = depth
        sd = spatial_dims
        c = [base * 2 ** i for i in range(depth + 1)]

        def block(i: int, cin: int, cout: int) -> StackedConvs:
            if i < depth:
                return StackedConvs(sd, cin, cout, n=2, norm=norm, act=act)
            # bottleneck: c[depth] filters, then halved before upsampling
            return StackedConvs(sd, cin, cout, n=2, mid_ch=c[depth], norm=norm, act=act, dropout_p=dropout)

        self.encoder = Encoder(sd, in_channels, c[:depth] + [c[depth - 1]], block, down="max")
        # decoder level i: (2·c_i → c_i) then c_i → c_(i-1): the feature maps are halved before upsampling
        self.decoder = Decoder(
            self.encoder, lambda i, cin, cout: upsample(sd, cin, cout, mode=up_mode),
            lambda i, cin, cout: StackedConvs(sd, cin, cout, n=2, mid_ch=cin // 2, norm=norm, act=act),
            up_channels="below", stage_channels=[c[max(i - 1, 0)] for i in range(depth)],
        )
        # ds_heads[j] sits on decoder stage j (deepest first), levels depth-1 … 1
        self.ds_heads = nn.ModuleList(
            [conv(sd, c[i - 1], out_channels, 1) for i in reversed(range(1, depth))] if deep_supervision else [])
        self.head = conv(sd, c[0], out_channels, 1)
        self._interp = _INTERP[sd]

    def legacy_keys(self) -> list[KeyRule]:
        return [(r"^enc\.", "encoder.blocks."), (r"^bottleneck\.", f"encoder.blocks.{self.depth}."),
                (r"^up\.", "decoder.ups."), (r"^dec\.", "decoder.blocks.")]

    def _forward(self, x: torch.Tensor, **_: Any) -> Any:
        keep = self.training and self.deep_supervision
        feats = self.decoder(self.encoder(x), levels=self.depth if keep else 1)
        main = self.head(feats[0])
        if not keep:
            return main
        # outputs full-res first, then 1/2, 1/4, ...; ds_heads are stored deepest first
        outs = [main]
        for level in range(1, self.depth):
            logits = self.ds_heads[self.depth - 1 - level](feats[level])
            outs.append(F.interpolate(logits, size=x.shape[2:], mode=self._interp, align_corners=False))
        return outs
