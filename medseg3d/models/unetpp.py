"""UNet++: a U-Net with nested, dense skip pathways (2D and 3D).

Zhou Z., Rahman Siddiquee M. M., Tajbakhsh N., Liang J. "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation", DLMIA 2018 (MICCAI workshop), arXiv:1807.10165.

Node ``X(i, j)`` (level ``i`` = 0…depth from the top, column ``j``) is two 3×3 conv + norm + ReLU. Its input is
the concatenation of all earlier nodes of its level ``X(i, 0..j-1)`` and the up-sampled node below
``up(X(i+1, j-1))``; the backbone column ``X(i, 0)`` gets the max-pooled ``X(i-1, 0)``. Filters per level are
32, 64, 128, 256, 512. A 1×1 head sits on each top-row node ``X(0, 1..depth)``; with deep supervision all of
them are trained, which lets the net be *pruned* at inference: UNet++ L\\ :sub:`k` runs only the nodes
``X(i, j)`` with ``i + j ≤ k`` and answers with the head of ``X(0, k)``.

Choices where the paper is silent or the common implementations differ:

- Up-sampling is a 2×2 transposed convolution from ``f[i+1]`` to ``f[i]`` channels (the authors' Keras code);
  MONAI's ``BasicUNetPlusPlus`` halves the channels instead, except into level 0 where it keeps them.
- Convolutions carry no bias (a norm follows); the norm is batch norm by default (the brief/common practice;
  the 2018 Keras code used dropout and no norm).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import MODELS
from .base import SegNet, check_positive_int
from .blocks import LayerSpec, StackedConvs, conv, max_pool, upsample


@MODELS.register("unetpp")
class UNetPlusPlus(SegNet):
    """UNet++ (Zhou et al., DLMIA 2018) with deep supervision and inference-time pruning.

    ``UNetPlusPlus(spatial_dims=3, in_channels=1, out_channels=2, *, base_filters=32, depth=4, norm="batch",
    act="relu", deep_supervision=True, inference_depth=None, up_mode="transpose")``

    - filters ``base_filters · 2^i`` for ``i = 0..depth`` (paper: 32, 64, 128, 256, 512);
    - ``deep_supervision=True`` (paper): in training mode the output is a list of the four top-row heads,
      **deepest first**: ``[X(0,4), X(0,3), X(0,2), X(0,1)]`` (``[X(0,depth), …, X(0,1)]``), all at full
      resolution. With ``deep_supervision=False`` only the ``X(0,depth)`` head exists and is returned.
    - ``inference_depth`` (1…depth, default ``depth``; also :meth:`prune`): in eval mode only the
      sub-network up to ``X(0, inference_depth)`` runs and that head is returned (UNet++ L1…L4). Pruning
      needs the heads of deep supervision, so ``inference_depth < depth`` requires ``deep_supervision=True``.
    - ``divisor`` = 2^depth.

    Parameters with defaults: 2D, 1 in / 2 out: 9,045,480 (9.05 M); 3D, 4 in / 4 out: 26,205,008 (26.2 M).
    """

    paper = "Zhou 2018, UNet++ (DLMIA)"
    dims = (2, 3)

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, *,
                 base_filters: int = 32, depth: int = 4, norm: LayerSpec = "batch", act: LayerSpec = "relu",
                 deep_supervision: bool = True, inference_depth: int | None = None, up_mode: str = "transpose"):
        super().__init__(spatial_dims, in_channels, out_channels)
        base = check_positive_int("base_filters", base_filters)
        depth = check_positive_int("depth", depth)
        if up_mode not in ("transpose", "linear", "nearest"):
            raise ValueError(f"up_mode must be 'transpose', 'linear' or 'nearest', got {up_mode!r}")
        self.depth = depth
        self.deep_supervision = bool(deep_supervision)
        self.divisor = 2 ** depth
        self.filters = [base * 2 ** i for i in range(depth + 1)]
        f = self.filters
        sd = spatial_dims
        self.pool = max_pool(sd, 2)
        # nodes[f"{i}_{j}"], ups[f"{i}_{j}"] brings X(i+1, j-1) up to level i for node X(i, j)
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i in range(depth + 1):
            self.nodes[f"{i}_0"] = StackedConvs(sd, in_channels if i == 0 else f[i - 1], f[i], n=2, norm=norm, act=act)
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.ups[f"{i}_{j}"] = upsample(sd, f[i + 1], f[i], mode=up_mode)
                self.nodes[f"{i}_{j}"] = StackedConvs(sd, f[i] * (j + 1), f[i], n=2, norm=norm, act=act)
        head_cols = range(1, depth + 1) if self.deep_supervision else [depth]
        self.heads = nn.ModuleDict({f"0_{j}": conv(sd, f[0], out_channels, 1) for j in head_cols})
        self.inference_depth = depth
        if inference_depth is not None:
            self.prune(inference_depth)

    def prune(self, inference_depth: int) -> "UNetPlusPlus":
        """Set the depth L (1…depth) of the sub-network run in eval mode (UNet++ L1…L4)."""
        if (isinstance(inference_depth, bool) or not isinstance(inference_depth, int)
                or not 1 <= inference_depth <= self.depth):
            raise ValueError(f"inference_depth must be an integer in 1..{self.depth}, got {inference_depth!r}")
        if inference_depth < self.depth and not self.deep_supervision:
            raise ValueError("inference_depth < depth (pruning) needs the deep-supervision heads: "
                             "set deep_supervision=True")
        self.inference_depth = inference_depth
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
        return self.heads[f"0_{last}"](grid[0][last])
