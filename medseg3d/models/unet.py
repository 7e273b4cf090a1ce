"""U-Net: 2D (Ronneberger et al. 2015) and 3D (Çiçek et al. 2016).

- Ronneberger O., Fischer P., Brox T. "U-Net: Convolutional Networks for Biomedical Image Segmentation",
  MICCAI 2015. 4 poolings, 64 base filters doubled per level, two 3×3 conv + ReLU per level (no
  normalisation), 2×2 up-convolution halving the channels, 1×1 head.
- Çiçek Ö. et al. "3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation", MICCAI 2016.
  3 poolings, two 3³ conv + BN + ReLU per level with the channels doubled *before* pooling
  (32,64 | 64,128 | 128,256 | 256,512), 2³ up-convolution keeping the channels, 1³ head.

Both papers use unpadded ("valid") convolutions and crop the skips; here convolutions are zero-padded so that
the output has the input's size (as MONAI and nnU-Net do), which sliding-window inference needs.

Built from the shared :class:`~medseg3d.models.parts.Encoder` and :class:`~medseg3d.models.parts.Decoder`; the
weights of checkpoints written before (keys ``down.*``, ``up.*``, ``dec.*``) load under the new names.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from ..registry import MODELS
from .base import KeyRule, SegNet, check_choice, check_dropout, check_positive_int
from .blocks import LayerSpec, StackedConvs, conv, upsample
from .parts import Decoder, Encoder


@MODELS.register("unet")
class UNet(SegNet):
    """U-Net with the 2D article's defaults for ``spatial_dims=2`` and the 3D paper's for ``spatial_dims=3``.

    Args:
        spatial_dims: 3 (default) or 2; the defaults of the other arguments follow the paper of that dimension.
        in_channels, out_channels: 1 and 2 by default.
        base_filters: ``None`` = 64 in 2D, 32 in 3D.
        depth: number of poolings; ``None`` = 4 in 2D, 3 in 3D.
        norm: ``"default"`` = no norm in 2D, ``"batch"`` in 3D; or any norm spec (``None`` for none).
        act: ``"relu"``.
        double_before_pool: ``None`` = False in 2D, True in 3D (Çiçek: a level's second conv doubles the
            channels, and the up-convolution keeps them).
        up_mode: ``"transpose"`` (the papers) or ``"linear"``/``"nearest"`` (+ 1-conv when channels change).
        dropout: channel dropout in the bottleneck convolutions (0).

    Divisor ``2**depth``. Parameters with defaults:

        2D, 1 in / 2 out: 31,030,658
        3D, 1 in / 3 out: 19,071,459
    """

    paper = "Ronneberger 2015 (2D); Çiçek 2016 (3D)"
    dims = (2, 3)

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, *,
                 base_filters: int | None = None, depth: int | None = None, norm: LayerSpec | str = "default",
                 act: LayerSpec = "relu", double_before_pool: bool | None = None, up_mode: Literal["transpose", "linear", "nearest"] = "transpose",
                 dropout: float = 0.0):
        super().__init__(spatial_dims, in_channels, out_channels)
        is3d = spatial_dims == 3
        base = check_positive_int("base_filters", base_filters if base_filters is not None else (32 if is3d else 64))
        depth = check_positive_int("depth", depth if depth is not None else (3 if is3d else 4))
        if norm == "default":
            norm = "batch" if is3d else None
        double = is3d if double_before_pool is None else bool(double_before_pool)
        check_choice("up_mode", up_mode, ("transpose", "linear", "nearest"))
        dropout = check_dropout("dropout", dropout)
        self.divisor = 2 ** depth
        self.depth = depth
        sd = spatial_dims

        # level i: two convs to (c, c), or (c, 2c) when the channels double before pooling
        chans = [base * 2 ** i * (2 if double else 1) for i in range(depth + 1)]

        def block(i: int, cin: int, cout: int) -> StackedConvs:
            return StackedConvs(sd, cin, cout, n=2, mid_ch=cout // 2 if double else cout, norm=norm, act=act,
                                dropout_p=dropout if i == depth else 0.0)

        self.encoder = Encoder(sd, in_channels, chans, block, down="max")
        # up-convolution: keeps the channels in Çiçek's layout, halves them (to the skip's) in Ronneberger's
        self.decoder = Decoder(
            self.encoder, lambda i, cin, cout: upsample(sd, cin, cout, mode=up_mode),
            lambda i, cin, cout: StackedConvs(sd, cin, cout, n=2, norm=norm, act=act),
            up_channels="below" if double else "skip",
        )
        self.head = conv(sd, chans[0], out_channels, 1)

    def legacy_keys(self) -> list[KeyRule]:
        return [(r"^down\.", "encoder.blocks."), (r"^up\.", "decoder.ups."), (r"^dec\.", "decoder.blocks.")]

    def _forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x))[0])
