"""UNet++: a U-Net with nested, dense skip pathways (2D and 3D).

Zhou Z., Rahman Siddiquee M. M., Tajbakhsh N., Liang J. "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation", DLMIA 2018 (MICCAI workshop), arXiv:1807.10165.

Node ``X(i, j)`` (level ``i`` = 0…depth from the top, column ``j``) is two 3×3 conv + norm + ReLU. Its input is
the concatenation of all earlier nodes of its level ``X(i, 0..j-1)`` and the up-sampled node below
``up(X(i+1, j-1))``; the backbone column ``X(i, 0)`` gets the max-pooled ``X(i-1, 0)``. Filters per level are
32, 64, 128, 256, 512. A 1×1 head sits on each top-row node ``X(0, 1..depth)``; with deep supervision all of
them are trained, which lets the net be *pruned* at inference: UNet++ L\\ :sub:`k` runs only the nodes
``X(i, j)`` with ``i + j ≤ k`` and answers with the head of ``X(0, k)``.

Inference (the paper, Sec. 2): with deep supervision the net "can be operated in two modes: (1) accurate
mode wherein the outputs from all segmentation branches are averaged; (2) fast mode wherein the final
segmentation map is selected from only one of the segmentation branches, the choice of which determines the
extent of model pruning and speed gain". ``inference_mode="accurate"`` (the default) returns the mean of the
heads ``X(0, 1..L)`` in eval mode; ``"fast"`` returns the head of ``X(0, L)`` alone and runs only the nodes it
needs; ``L = inference_depth`` (default ``depth``). The paper averages the heads' sigmoid outputs; a net that
returns logits averages the logits (for a softmax, the normalised geometric mean of the heads'
probabilities). Without deep supervision there is one head and both modes return it.

Units: ``unit="conv_norm_act"`` (default): two 3×3 conv + norm + act. ``unit="zhou2018"``: the authors' Keras
``standard_unit`` (github.com/MrGiovanni/UNetPlusPlus): two 3×3 conv (with bias) + ELU, each followed by
dropout 0.5, no normalisation. The authors' 2D ``Nest_Net`` (one input channel, one sigmoid output, no deep
supervision) has 9,041,601 parameters; so has ``UNetPlusPlus(2, 1, 1, unit="zhou2018",
deep_supervision=False)`` (and with ``norm=None``: the same convolutions and heads).

Choices where the paper is silent or the common implementations differ:

- Up-sampling is a 2×2 transposed convolution from ``f[i+1]`` to ``f[i]`` channels (the authors' Keras code);
  MONAI's ``BasicUNetPlusPlus`` halves the channels instead, except into level 0 where it keeps them.
- With ``unit="conv_norm_act"`` convolutions carry no bias (a norm follows); the norm is batch norm by default.
- A node concatenates ``[X(i, 0..j-1), up]``; the authors' code puts ``up`` first (the same net up to the order
  of the first convolution's input channels).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..registry import MODELS
from .base import SegNet, check_bool, check_choice, check_positive_int
from .blocks import LayerSpec, StackedConvs, conv, max_pool, upsample

UNITS = ("conv_norm_act", "zhou2018")
INFERENCE_MODES = ("accurate", "fast")


def zhou2018_unit(spatial_dims: int, in_ch: int, out_ch: int, dropout: float = 0.5) -> nn.Sequential:
    """The authors' ``standard_unit``: (3×3 conv with bias → ELU → dropout) twice."""
    return nn.Sequential(
        conv(spatial_dims, in_ch, out_ch, 3), nn.ELU(), nn.Dropout(dropout),
        conv(spatial_dims, out_ch, out_ch, 3), nn.ELU(), nn.Dropout(dropout),
    )


@MODELS.register("unetpp")
class UNetPlusPlus(SegNet):
    """UNet++ (Zhou et al., DLMIA 2018) with deep supervision, accurate/fast inference and pruning.

    Args:
        spatial_dims: 3 (default) or 2.
        in_channels, out_channels: 1 and 2 by default.
        base_filters: 32; filters ``base_filters · 2^i`` for ``i = 0..depth`` (paper: 32, 64, 128, 256, 512).
        depth: 4 (poolings; nodes ``X(i, j)`` with ``i + j ≤ depth``).
        unit: ``"conv_norm_act"`` (two conv + ``norm`` + ``act``) or ``"zhou2018"`` (the authors' units: conv
            with bias + ELU + dropout 0.5, twice; ``norm``/``act`` must then keep their defaults or say the
            same, i.e. ``norm=None``, ``act="elu"``).
        norm: ``"batch"``.
        act: ``"relu"``.
        deep_supervision: True (paper): in training mode the output is a list of the top-row heads, **deepest
            first**: ``[X(0,4), X(0,3), X(0,2), X(0,1)]``, all at full resolution. With False only the
            ``X(0,depth)`` head exists and is returned.
        inference_mode: ``"accurate"`` (mean of the heads, the default) or ``"fast"`` (one head; pruning).
        inference_depth: L (1…depth; default ``depth``): eval mode runs only the sub-network up to ``X(0, L)``
            and answers with the mean of the heads ``X(0, 1..L)`` (accurate) or the head ``X(0, L)`` (fast,
            UNet++ L1…L4; :meth:`prune` sets it). ``L < depth`` needs ``deep_supervision=True``.
        up_mode: ``"transpose"`` (the authors' code), ``"linear"`` or ``"nearest"``.

    ``divisor`` = 2^depth. Parameters with defaults, and of the authors' 2D Nest_Net:

        2D, 1 in / 2 out: 9,045,480
        3D, 4 in / 4 out: 26,205,008
        2D, 1 in / 1 out, unit="zhou2018", deep_supervision=False: 9,041,601
        2D, 1 in / 1 out, norm=None, deep_supervision=False: 9,041,601
    """

    paper = "Zhou 2018, UNet++ (DLMIA)"
    dims = (2, 3)
    variants = {"authors' units": {"unit": "zhou2018"}}

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, *,
                 base_filters: int = 32, depth: int = 4, unit: Literal["conv_norm_act", "zhou2018"] = "conv_norm_act", norm: LayerSpec = "batch",
                 act: LayerSpec = "relu", deep_supervision: bool = True, inference_mode: Literal["accurate", "fast"] = "accurate",
                 inference_depth: int | None = None, up_mode: Literal["transpose", "linear", "nearest"] = "transpose"):
        super().__init__(spatial_dims, in_channels, out_channels)
        base = check_positive_int("base_filters", base_filters)
        depth = check_positive_int("depth", depth)
        check_choice("up_mode", up_mode, ("transpose", "linear", "nearest"))
        self.unit = check_choice("unit", unit, UNITS)
        if unit == "zhou2018":
            if norm not in ("batch", None, "none"):
                raise ValueError(f"norm must be left out (or None) with unit='zhou2018', which has no norm, "
                                 f"got {norm!r}")
            if act not in ("relu", "elu"):
                raise ValueError(f"act must be left out (or 'elu') with unit='zhou2018', which uses ELU, got {act!r}")
        self.depth = depth
        self.deep_supervision = check_bool("deep_supervision", deep_supervision)
        self.divisor = 2 ** depth
        self.filters = [base * 2 ** i for i in range(depth + 1)]
        f = self.filters
        sd = spatial_dims

        def node(cin: int, cout: int) -> nn.Module:
            if unit == "zhou2018":
                return zhou2018_unit(sd, cin, cout)
            return StackedConvs(sd, cin, cout, n=2, norm=norm, act=act)

        self.pool = max_pool(sd, 2)
        # nodes[f"{i}_{j}"], ups[f"{i}_{j}"] brings X(i+1, j-1) up to level i for node X(i, j)
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i in range(depth + 1):
            self.nodes[f"{i}_0"] = node(in_channels if i == 0 else f[i - 1], f[i])
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.ups[f"{i}_{j}"] = upsample(sd, f[i + 1], f[i], mode=up_mode)
                self.nodes[f"{i}_{j}"] = node(f[i] * (j + 1), f[i])
        head_cols = range(1, depth + 1) if self.deep_supervision else [depth]
        self.heads = nn.ModuleDict({f"0_{j}": conv(sd, f[0], out_channels, 1) for j in head_cols})
        self.inference_mode = check_choice("inference_mode", inference_mode, INFERENCE_MODES)
        self.inference_depth = depth
        if inference_depth is not None:
            self.inference_depth = self._check_depth(inference_depth)

    def _check_depth(self, inference_depth: Any) -> int:
        if (isinstance(inference_depth, bool) or not isinstance(inference_depth, int)
                or not 1 <= inference_depth <= self.depth):
            raise ValueError(f"inference_depth must be an integer in 1..{self.depth}, got {inference_depth!r}")
        if inference_depth < self.depth and not self.deep_supervision:
            raise ValueError("inference_depth < depth (pruning) needs the deep-supervision heads: "
                             "set deep_supervision=True")
        return inference_depth

    def prune(self, inference_depth: int) -> "UNetPlusPlus":
        """Fast mode at depth L (1…depth): eval mode runs only the sub-network up to ``X(0, L)`` and returns its
        head (UNet++ L1…L4)."""
        self.inference_depth = self._check_depth(inference_depth)
        self.inference_mode = "fast"
        return self

    def set_inference(self, mode: str, inference_depth: int | None = None) -> "UNetPlusPlus":
        """Choose the inference mode (``"accurate"`` or ``"fast"``) and, optionally, the depth L."""
        self.inference_mode = check_choice("inference_mode", mode, INFERENCE_MODES)
        if inference_depth is not None:
            self.inference_depth = self._check_depth(inference_depth)
        return self

    def _forward(self, x: torch.Tensor, **_: Any) -> Any:
        last = self.depth if self.training else self.inference_depth
        grid: list[list[torch.Tensor]] = [[] for _ in range(last + 1)]  # grid[i][j] = X(i, j)
        for k in range(last + 1):  # anti-diagonal by anti-diagonal: X(k,0), X(k-1,1), …, X(0,k)
            grid[k].append(self.nodes[f"{k}_0"](x if k == 0 else self.pool(grid[k - 1][0])))
            for j in range(1, k + 1):
                i = k - j
                up = self.ups[f"{i}_{j}"](grid[i + 1][j - 1])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat(grid[i][:j] + [up], dim=1)))
        if self.training and self.deep_supervision:
            return [self.heads[f"0_{j}"](grid[0][j]) for j in range(last, 0, -1)]
        if self.inference_mode == "accurate" and self.deep_supervision:
            return torch.stack([self.heads[f"0_{j}"](grid[0][j]) for j in range(1, last + 1)]).mean(0)
        return self.heads[f"0_{last}"](grid[0][last])
