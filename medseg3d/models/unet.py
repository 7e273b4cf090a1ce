"""U-Net: 2D (Ronneberger et al. 2015) and 3D (Çiçek et al. 2016).

- Ronneberger O., Fischer P., Brox T. "U-Net: Convolutional Networks for Biomedical Image Segmentation",
  MICCAI 2015. 4 poolings, 64 base filters doubled per level, two 3×3 conv + ReLU per level (no
  normalisation), 2×2 up-convolution halving the channels, 1×1 head.
- Çiçek Ö. et al. "3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation", MICCAI 2016.
  3 poolings, two 3³ conv + BN + ReLU per level with the channels doubled *before* pooling
  (32,64 | 64,128 | 128,256 | 256,512), 2³ up-convolution keeping the channels, 1³ head.

Both papers use unpadded ("valid") convolutions and crop the skips; here convolutions are zero-padded so that
the output has the input's size (as MONAI and nnU-Net do), which sliding-window inference needs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import MODELS
from .base import SegNet, check_positive_int
from .blocks import LayerSpec, StackedConvs, conv, max_pool, upsample


@MODELS.register("unet")
class UNet(SegNet):
    """U-Net with the 2D article's defaults for ``spatial_dims=2`` and the 3D paper's for ``spatial_dims=3``.

    Defaults: 2D — ``base_filters=64, depth=4, norm=None, double_before_pool=False``;
    3D — ``base_filters=32, depth=3, norm="batch", double_before_pool=True``. ``up_mode`` is ``"transpose"``
    (the papers) or ``"linear"`` (bilinear/trilinear + 1-conv). Parameters with defaults: 2D 31.0 M (1 in, 2 out),
    3D 19.1 M (1 in, 3 out).
    """

    paper = "Ronneberger 2015 (2D); Çiçek 2016 (3D)"
    dims = (2, 3)

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, *,
                 base_filters: int | None = None, depth: int | None = None, norm: LayerSpec | str = "default",
                 act: LayerSpec = "relu", double_before_pool: bool | None = None, up_mode: str = "transpose",
                 dropout: float = 0.0):
        super().__init__(spatial_dims, in_channels, out_channels)
        is3d = spatial_dims == 3
        base = check_positive_int("base_filters", base_filters if base_filters is not None else (32 if is3d else 64))
        depth = check_positive_int("depth", depth if depth is not None else (3 if is3d else 4))
        if norm == "default":
            norm = "batch" if is3d else None
        double = is3d if double_before_pool is None else bool(double_before_pool)
        if up_mode not in ("transpose", "linear", "nearest"):
            raise ValueError(f"up_mode must be 'transpose', 'linear' or 'nearest', got {up_mode!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.divisor = 2 ** depth
        self.depth = depth

        # encoder: level i has convs (mid_i -> out_i)
        self.down = nn.ModuleList()
        self.pool = max_pool(spatial_dims, 2)
        skip_ch: list[int] = []
        ch = in_channels
        for i in range(depth + 1):
            c = base * 2 ** i
            mid, out = (c, 2 * c) if double else (c, c)
            self.down.append(StackedConvs(spatial_dims, ch, out, n=2, mid_ch=mid, norm=norm, act=act,
                                          dropout_p=dropout if i == depth else 0.0))
            skip_ch.append(out)
            ch = out

        # decoder: up (keep channels in 3D, halve in 2D), concat skip, two convs
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            up_ch = ch if double else ch // 2
            self.up.append(upsample(spatial_dims, ch, up_ch, mode=up_mode))
            target = base * 2 ** (i + 1) if double else base * 2 ** i
            self.dec.append(StackedConvs(spatial_dims, up_ch + skip_ch[i], target, n=2, norm=norm, act=act))
            ch = target
        self.head = conv(spatial_dims, ch, out_channels, 1)

    def _forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)
