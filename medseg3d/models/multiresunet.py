"""MultiResUNet: MultiRes blocks and Res paths (2D and 3D).

Ibtehaz N., Rahman M. S. "MultiResUNet: Rethinking the U-Net architecture for multimodal biomedical image
segmentation", Neural Networks 121 (2020) 74–87, arXiv:1902.04049.

- **MultiRes block** (replaces the two convolutions of a U-Net level; ``U`` = the U-Net's filter count,
  ``W = α·U``, ``α = 1.67``): three chained 3×3 conv + BN + ReLU with ``⌊W/6⌋, ⌊W/3⌋, ⌊W/2⌋`` filters (a cheap
  stand-in for 3×3, 5×5 and 7×7 receptive fields), their outputs concatenated and batch-normalised, plus a 1×1
  conv + BN shortcut, added, ReLU, BN.
- **Res path** on each skip connection: ``length`` steps of (3×3 conv + BN + ReLU) + (1×1 conv + BN)
  shortcut, added, ReLU, BN; lengths 4, 3, 2, 1 from the top level down.
- ``U`` = 32, 64, 128, 256, 512; 2×2 max pooling; 2×2 transposed convolutions (to ``U`` of the target level)
  going up; 1×1 head. 3D: every 3×3 becomes 3×3×3 (the paper's 3D variant).

Where the paper and the authors' code differ: the code computes the three widths as ``int(W·0.167)``,
``int(W·0.333)``, ``int(W·0.5)``; the paper's ``W/6, W/3, W/2`` are used here (the two agree for U ≤ 256; at
U = 512 the middle convolution has 285 filters here, 284 in the code). The code's conv-BN units use BN without
a scale (γ); here BN has both γ and β. The code's head is conv + BN + sigmoid; here it is a plain 1×1 conv with
bias that returns logits.

Built from the shared :class:`~medseg3d.models.parts.Encoder` and :class:`~medseg3d.models.parts.Decoder` (the
Res paths transform the skips in between); the weights of checkpoints written before load under the new names.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from ..registry import MODELS
from .base import KeyRule, SegNet, check_choice, check_positive_int
from .blocks import ConvNormAct, LayerSpec, act_layer, conv, norm_layer, upsample
from .parts import Decoder, Encoder


def multires_widths(u: int, alpha: float = 1.67) -> tuple[int, int, int]:
    """The three convolution widths of a MultiRes block for U-Net width ``u``: ⌊W/6⌋, ⌊W/3⌋, ⌊W/2⌋, W = α·u."""
    w = alpha * u
    # a tiny epsilon keeps e.g. 1.67*300/6 = 83.5 from flooring to 83.49999
    widths = tuple(int(math.floor(w / d + 1e-9)) for d in (6, 3, 2))
    if min(widths) < 1:
        raise ValueError(f"base_filters·alpha is too small for a MultiRes block (U={u}, alpha={alpha}): "
                         f"widths {widths} must all be ≥ 1")
    return widths  # type: ignore[return-value]


class MultiResBlock(nn.Module):
    """Three chained k-conv+norm+act (W/6, W/3, W/2 filters) concatenated, + 1-conv+norm shortcut, act, norm."""

    def __init__(self, spatial_dims: int, in_ch: int, u: int, alpha: float = 1.67, norm: LayerSpec = "batch",
                 act: LayerSpec = "relu"):
        super().__init__()
        w1, w2, w3 = multires_widths(u, alpha)
        self.out_channels = w1 + w2 + w3
        self.conv1 = ConvNormAct(spatial_dims, in_ch, w1, 3, norm=norm, act=act)
        self.conv2 = ConvNormAct(spatial_dims, w1, w2, 3, norm=norm, act=act)
        self.conv3 = ConvNormAct(spatial_dims, w2, w3, 3, norm=norm, act=act)
        self.cat_norm = norm_layer(norm, spatial_dims, self.out_channels)
        self.shortcut = ConvNormAct(spatial_dims, in_ch, self.out_channels, 1, norm=norm, act=None)
        self.act = act_layer(act, self.out_channels)
        self.out_norm = norm_layer(norm, spatial_dims, self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        b = self.conv2(a)
        c = self.conv3(b)
        out = self.cat_norm(torch.cat([a, b, c], dim=1)) + self.shortcut(x)
        return self.out_norm(self.act(out))


class ResPath(nn.Module):
    """``length`` residual steps: act(k-conv+norm+act (x) + 1-conv+norm (x)) followed by norm."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, length: int, norm: LayerSpec = "batch",
                 act: LayerSpec = "relu"):
        super().__init__()
        self.steps = nn.ModuleList()
        for i in range(length):
            c_in = in_ch if i == 0 else out_ch
            self.steps.append(nn.ModuleDict({
                "conv": ConvNormAct(spatial_dims, c_in, out_ch, 3, norm=norm, act=act),
                "shortcut": ConvNormAct(spatial_dims, c_in, out_ch, 1, norm=norm, act=None),
                "act": act_layer(act, out_ch),
                "norm": norm_layer(norm, spatial_dims, out_ch),
            }))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step["norm"](step["act"](step["conv"](x) + step["shortcut"](x)))
        return x


@MODELS.register("multiresunet")
class MultiResUNet(SegNet):
    """MultiResUNet (Ibtehaz & Rahman, Neural Networks 2020), 2D and 3D.

    ``MultiResUNet(spatial_dims=3, in_channels=1, out_channels=2, *, base_filters=32, depth=4, alpha=1.67,
    norm="batch", act="relu", up_mode="transpose")``

    Defaults are the paper's: ``U = 32·2^i`` (32…512), ``α = 1.67``, Res paths of length ``depth - i``
    (4, 3, 2, 1), batch norm, ReLU, 2×2 transposed-conv up-sampling. MultiRes block widths (⌊W/6⌋+⌊W/3⌋+⌊W/2⌋)
    per level: 8+17+26 = 51, 17+35+53 = 105, 35+71+106 = 212, 71+142+213 = 426, 142+285+427 = 854.
    ``divisor`` = 2^depth.

    Parameters with defaults:

        2D, 1 in / 2 out: 7,251,159
        3D, 4 in / 4 out: 18,657,714
    """

    paper = "Ibtehaz 2020, MultiResUNet (Neural Networks)"
    dims = (2, 3)

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, *,
                 base_filters: int = 32, depth: int = 4, alpha: float = 1.67, norm: LayerSpec = "batch",
                 act: LayerSpec = "relu", up_mode: Literal["transpose", "linear", "nearest"] = "transpose"):
        super().__init__(spatial_dims, in_channels, out_channels)
        base = check_positive_int("base_filters", base_filters)
        depth = check_positive_int("depth", depth)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        check_choice("up_mode", up_mode, ("transpose", "linear", "nearest"))
        self.depth = depth
        self.divisor = 2 ** depth
        sd = spatial_dims
        us = [base * 2 ** i for i in range(depth + 1)]
        widths = [sum(multires_widths(u, alpha)) for u in us]

        def block(i: int, cin: int, cout: int) -> MultiResBlock:
            return MultiResBlock(sd, cin, us[i], alpha, norm=norm, act=act)

        self.encoder = Encoder(sd, in_channels, widths, block, down="max")
        self.res_paths = nn.ModuleList([ResPath(sd, widths[i], us[i], depth - i, norm=norm, act=act)
                                        for i in range(depth)])
        # up-sampling to U of the target level, concatenated with that level's Res path (U channels)
        self.decoder = Decoder(self.encoder, lambda i, cin, cout: upsample(sd, cin, cout, mode=up_mode), block,
                               skip_channels=us[:-1], stage_channels=widths[:-1])
        self.head = conv(sd, widths[0], out_channels, 1)

    def legacy_keys(self) -> list[KeyRule]:
        return [(r"^encoder\.(\d+)\.", r"encoder.blocks.\1."), (r"^ups\.", "decoder.ups."),
                (r"^decoder\.(\d+)\.", r"decoder.blocks.\1.")]

    def _forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        feats = self.encoder(x)
        skips = [path(f) for path, f in zip(self.res_paths, feats)] + [feats[-1]]
        return self.head(self.decoder(skips)[0])
