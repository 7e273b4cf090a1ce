"""Fully convolutional networks, FCN-32s/16s/8s (Long, Shelhamer, Darrell 2015).

Long J., Shelhamer E., Darrell T. "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
(arXiv:1411.4038).

The paper's net: the VGG-16 convolutions (blocks of 2, 2, 3, 3, 3 3×3 conv + ReLU at 64, 128, 256, 512, 512
filters, each followed by 2×2 max pooling), the fully connected fc6 (7×7, 4096) and fc7 (1×1, 4096) recast as
convolutions with dropout 0.5, a 1×1 ``score_fr`` to the classes, then:

- FCN-32s: upsample the stride-32 scores ×32 to the input;
- FCN-16s: upsample them ×2 and add ``score_pool4`` (a 1×1 conv on pool4, zero-initialised), then ×16;
- FCN-8s: upsample that sum ×2 again, add ``score_pool3`` (1×1 on pool3, zero-initialised), then ×8.

Upsampling is by transposed convolution (kernel 2f, stride f) initialised to bilinear interpolation. The
paper learns the ×2 ones and keeps the final ×8/×16/×32 one *fixed* to bilinear ("the final layer
deconvolutional filters are fixed to bilinear interpolation, while intermediate upsampling layers are
initialised to bilinear upsampling and then learned"); ``learn_final_upsample=True`` learns it too, as most
PyTorch ports do. The fixed one is a buffer (a per-class bilinear kernel), not a parameter.

Departures from the paper, all forced by training here from scratch on volumes:

- no ImageNet weights: the convolutions are He-initialised (the paper fine-tunes VGG-16); ``base_filters``
  (64) scales every width, fc6/fc7 having ``fc_channels`` (default ``64 * base_filters`` = 4096);
- "same" zero padding instead of the paper's 100-pixel input padding and crop layers (the output is aligned
  with the input; sizes are padded to a multiple of 32 by :class:`SegNet`);
- 3D works the same way (7³ fc6, trilinear kernels) but with the paper's widths fc6 alone has 719 M
  parameters: use a small ``base_filters``/``fc_channels``/``fc_kernel`` in 3D.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import SegNet, check_positive_int
from .blocks import LayerSpec, StackedConvs, conv, max_pool
from .blocks import dropout as channel_dropout

_VGG16 = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))  # (convs, width multiplier) per block


def bilinear_kernel(spatial_dims: int, size: int) -> torch.Tensor:
    """The separable (bi/tri)linear interpolation kernel of side ``size`` (FCN's ``upsample_filt``)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    k1 = 1 - (og - center).abs() / factor
    k = k1
    for _ in range(spatial_dims - 1):
        k = k.unsqueeze(-1) * k1
    return k.float()


class BilinearUpsample(nn.Module):
    """×``factor`` upsampling by a transposed convolution (kernel 2f, stride f, padding f/2) with a bilinear
    kernel: learned (a full C→C kernel initialised to per-channel bilinear, as FCN's ``upscore`` layers) or fixed
    (a per-channel bilinear buffer)."""

    def __init__(self, spatial_dims: int, channels: int, factor: int, learned: bool = True):
        super().__init__()
        if factor < 2 or factor % 2:
            raise ValueError(f"factor must be an even integer >= 2, got {factor}")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.factor = factor
        self.learned = learned
        kernel = bilinear_kernel(spatial_dims, 2 * factor)
        if learned:
            convt = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
            self.convt = convt(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
            with torch.no_grad():
                self.convt.weight.zero_()
                for c in range(channels):
                    self.convt.weight[c, c] = kernel
            self.register_buffer("kernel", torch.zeros(0), persistent=False)
        else:
            self.convt = nn.Identity()
            self.register_buffer("kernel", kernel.expand((channels, 1) + kernel.shape).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.learned:
            return self.convt(x)
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[self.spatial_dims]
        return fn(x, self.kernel.to(x.dtype), stride=self.factor, padding=self.factor // 2, groups=self.channels)


@MODELS.register("fcn")
class FCN(SegNet):
    """FCN-32s/16s/8s (Long et al. 2015) with a VGG-16-style encoder trained from scratch; 2D (default) or 3D.

    Args:
        spatial_dims: 2 (default, the paper) or 3.
        in_channels, out_channels: 3 and 21 by default (RGB → PASCAL VOC's 21 classes, the paper's setting).
        variant: ``"8s"`` (default), ``"16s"`` or ``"32s"``.
        base_filters: VGG's first width, 64; the blocks have 1, 2, 4, 8, 8 times it.
        fc_channels: width of fc6/fc7, ``64 * base_filters`` (4096) by default.
        fc_kernel: fc6's kernel, 7.
        dropout: channel dropout after fc6 and fc7, 0.5.
        norm: ``None`` (the paper); a norm name adds normalisation to every encoder conv (not in the paper).
        learn_final_upsample: ``False`` (the paper fixes the last upsampling to bilinear).

    Divisor 32. Parameters with defaults (FCN-8s) = VGG-16's 14,714,688 convolution parameters + fc6 102,764,544
    + fc7 16,781,312 + score_fr 86,037 + score_pool4 10,773 + score_pool3 5,397 + two learned ×2 upsamplings
    2 × 7,056 (the fixed ×8 kernel is a buffer):

        2D, 3 in / 21 out: 134,376,863
        2D, 3 in / 21 out, variant="16s": 134,364,410
        2D, 3 in / 21 out, variant="32s": 134,346,581
    """

    paper = "Long, Shelhamer, Darrell. Fully Convolutional Networks for Semantic Segmentation. CVPR 2015"
    dims = (2, 3)
    divisor = 32

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 21, *,
                 variant: Literal["8s", "16s", "32s"] = "8s", base_filters: int = 64, fc_channels: int | None = None, fc_kernel: int = 7,
                 dropout: float = 0.5, norm: LayerSpec = None, learn_final_upsample: bool = False):
        super().__init__(spatial_dims, in_channels, out_channels)
        if variant not in ("8s", "16s", "32s"):
            raise ValueError(f"variant must be '8s', '16s' or '32s', got {variant!r}")
        base = check_positive_int("base_filters", base_filters)
        fc = check_positive_int("fc_channels", fc_channels if fc_channels is not None else 64 * base)
        fc_kernel = check_positive_int("fc_kernel", fc_kernel)
        if fc_kernel % 2 == 0:
            raise ValueError(f"fc_kernel must be odd, got {fc_kernel}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(learn_final_upsample, bool):
            raise ValueError(f"learn_final_upsample must be True or False, got {learn_final_upsample!r}")
        self.variant = variant
        sd = spatial_dims

        self.blocks = nn.ModuleList()
        ch = in_channels
        for n, mult in _VGG16:
            self.blocks.append(StackedConvs(sd, ch, base * mult, n=n, norm=norm, act="relu"))
            ch = base * mult
        self.pool = max_pool(sd, 2)
        self.fc6 = nn.Sequential(conv(sd, ch, fc, fc_kernel), nn.ReLU(inplace=True), channel_dropout(sd, dropout))
        self.fc7 = nn.Sequential(conv(sd, fc, fc, 1), nn.ReLU(inplace=True), channel_dropout(sd, dropout))
        self.score_fr = conv(sd, fc, out_channels, 1)

        final = {"32s": 32, "16s": 16, "8s": 8}[variant]
        self.score_pool4 = conv(sd, base * 8, out_channels, 1) if variant in ("16s", "8s") else None
        self.score_pool3 = conv(sd, base * 4, out_channels, 1) if variant == "8s" else None
        self.up_fr = BilinearUpsample(sd, out_channels, 2) if variant in ("16s", "8s") else None
        self.up_pool4 = BilinearUpsample(sd, out_channels, 2) if variant == "8s" else None
        self.up_final = BilinearUpsample(sd, out_channels, final, learned=learn_final_upsample)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in (self.score_pool4, self.score_pool3):  # the paper zero-initialises the skip scores
            if m is not None:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def _forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        pools = []
        for block in self.blocks:
            x = self.pool(block(x))
            pools.append(x)
        score = self.score_fr(self.fc7(self.fc6(x)))
        if self.score_pool4 is not None and self.up_fr is not None:
            score = self.up_fr(score) + self.score_pool4(pools[3])
        if self.score_pool3 is not None and self.up_pool4 is not None:
            score = self.up_pool4(score) + self.score_pool3(pools[2])
        return self.up_final(score)
