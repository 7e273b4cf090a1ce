"""V-Net (Milletari, Navab, Ahmadi 2016).

Milletari F., Navab N., Ahmadi S.-A. "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
Segmentation", 3DV 2016 (arXiv:1606.04797); authors' Caffe model: github.com/faustomilletari/VNet
(``Prototxt/train_noPooling_ResNet_cinque.prototxt``).

The paper's network (its Fig. 1): five compression stages with 16, 32, 64, 128, 256 channels and 1, 2, 3, 3, 3
convolutions of 5³; each stage learns a residual function (the stage's input is added to the output of its last
convolution; stage 1's one-channel input is broadcast to 16 channels); 2³ stride-2 convolutions go down and
double the channels; the decompression path mirrors it with 2³ stride-2 de-convolutions, concatenation of the
"fine-grained features" forwarded from the compression path, and stages of 3, 3, 2, 1 convolutions at 256,
128, 64, 32 channels; PReLU everywhere; a 1³ convolution produces the output channels (softmax + Dice loss in
the paper; this net returns logits).

The residual add comes *before* the PReLU, as in the authors' Caffe model: a stage is conv-PReLU … conv, then
the sum with the stage input, then PReLU (``outBlock = PReLU(conv + input)``). The released Caffe model differs
from the paper's figure in its stage depths and its output: compression stages of 1, 1, 2, 3, 3 convolutions,
decompression stages of 3, 2, 1, 1, and a 5³ convolution to the output channels + PReLU before the 1³ one; it
has 61,982,682 parameters (1 in, 2 out) where the figure's layout has 65,175,314. ``variant`` picks one:
``"paper"`` (the figure, the default) or ``"caffe"`` (the released model); ``encoder_convs`` and
``decoder_convs`` override the stage depths of either.

Where the paper and the common implementations disagree we follow the paper:

- MONAI's ``VNet`` (after mattmacy/vnet.pytorch) adds batch norm after every convolution, uses ELU, has 1, 1, 2,
  3, 2 (not 1, 2, 3, 3, 3) convolutions in the compression stages and 2, 2, 1, 1 (not 3, 3, 2, 1) in the
  decompression stages, and ends with an extra 5³ convolution (+BN+act) before the 1³ one. It has 45,597,898
  parameters (1 in, 2 out). Built with MONAI's layout (``encoder_convs=(1, 1, 2, 3, 2), decoder_convs=(2, 2,
  1, 1), norm="batch", act="elu"``) this net has 45,589,714: 8,184 fewer, namely MONAI's extra 5³ output conv
  + BN + 1³ conv (8,000 + 4 + 6) minus our 32→2 head (66), and the biases MONAI keeps on its up-convolutions
  before BN (128 + 64 + 32 + 16 = 240). ``tests/models/test_vnet.py`` checks this side by side.
- ``norm`` (default ``None``, as in the paper) may be set to ``"batch"``/``"instance"`` for a normalised
  variant; convolutions then drop their bias, and the norm of a stage's last convolution comes before the
  residual add.

Convolutions are zero-padded ("same"), so the output has the input's size.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..registry import MODELS
from .base import SegNet, check_choice, check_dropout, check_positive_int
from .blocks import ConvNormAct, LayerSpec, act_layer, conv, conv_transpose, is_norm, norm_layer
from .blocks import dropout as channel_dropout
from .parts import Decoder, Encoder

#: stage depths per variant: (compression stages, decompression stages deepest first)
STAGES = {"paper": ((1, 2, 3, 3, 3), (3, 3, 2, 1)), "caffe": ((1, 1, 2, 3, 3), (3, 2, 1, 1))}


class VStage(nn.Module):
    """A V-Net stage: ``n`` conv(k)-norm units, each but the last followed by the activation; the stage input
    is added to the last one's output, then the activation (the authors' Caffe model: PReLU after the sum).

    ``in_ch`` may differ from ``out_ch`` (V-Net's first stage): the residual is then the input repeated along
    the channels when ``out_ch`` is a multiple of ``in_ch`` (the paper's broadcast of the 1-channel input to 16
    channels), else a 1-convolution.
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, n: int, kernel_size: int = 5,
                 norm: LayerSpec = None, act: LayerSpec = "prelu"):
        super().__init__()
        self.convs = nn.Sequential(*[
            ConvNormAct(spatial_dims, in_ch if i == 0 else out_ch, out_ch, kernel_size, norm=norm,
                        act=act if i < n - 1 else None)
            for i in range(n)
        ])
        self.act = act_layer(act, out_ch)
        self.repeat = out_ch // in_ch if out_ch % in_ch == 0 else 0
        self.proj = conv(spatial_dims, in_ch, out_ch, 1) if self.repeat == 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            res = torch.cat([x] * self.repeat, dim=1)
        else:
            res = self.proj(x)
        return self.act(self.convs(x) + res)


@MODELS.register("vnet")
class VNet(SegNet):
    """V-Net (Milletari et al. 2016), 3D (the paper) or 2D.

    Args:
        spatial_dims: 3 (default, the paper) or 2.
        in_channels, out_channels: input channels; output logits.
        variant: ``"paper"`` (the paper's Fig. 1, default) or ``"caffe"`` (the authors' released Caffe model:
            stages 1, 1, 2, 3, 3 / 3, 2, 1, 1 and a 5³ conv + PReLU before the 1³ head).
        base_filters: channels of the first stage (16), doubled by every down-convolution.
        encoder_convs: 5^k convolutions per compression stage, the last being the bottom stage; ``None`` = the
            variant's ((1, 2, 3, 3, 3) for the paper).
        decoder_convs: convolutions per decompression stage, deepest first, one per down step; ``None`` = the
            variant's ((3, 3, 2, 1) for the paper).
        kernel_size: stage convolution size (5).
        norm: ``None`` (the paper) or a norm name / ``(name, kwargs)``.
        act: ``"prelu"`` (one learned slope per channel, the paper) or any activation spec.
        dropout: channel dropout after each down/up convolution (0; the paper does not use it).

    Divisor 16 (4 down steps). Parameters with defaults (24.6 M of the paper's in the bottom stage and 24.6 M in
    the first decoder stage: three 256→256 5³ convolutions each):

        3D, 1 in / 2 out: 65,175,314
        3D, 1 in / 2 out, variant="caffe": 61,982,682
    """

    paper = "Milletari, Navab, Ahmadi. V-Net. 3DV 2016"
    dims = (2, 3)
    variants = {"Caffe model": {"variant": "caffe"}}

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, *,
                 variant: Literal["paper", "caffe"] = "paper", base_filters: int = 16, encoder_convs: Sequence[int] | None = None,
                 decoder_convs: Sequence[int] | None = None, kernel_size: int = 5, norm: LayerSpec = None,
                 act: LayerSpec = "prelu", dropout: float = 0.0):
        super().__init__(spatial_dims, in_channels, out_channels)
        self.variant = check_choice("variant", variant, tuple(STAGES))
        base = check_positive_int("base_filters", base_filters)
        enc_default, dec_default = STAGES[variant]
        enc = [check_positive_int("encoder_convs", n)
               for n in _as_list("encoder_convs", enc_default if encoder_convs is None else encoder_convs)]
        dec = [check_positive_int("decoder_convs", n)
               for n in _as_list("decoder_convs", dec_default if decoder_convs is None else decoder_convs)]
        if len(enc) < 2:
            raise ValueError(f"encoder_convs needs at least 2 stages, got {tuple(enc)}")
        if len(dec) != len(enc) - 1:
            raise ValueError(f"decoder_convs must have len(encoder_convs) - 1 = {len(enc) - 1} entries, "
                             f"got {tuple(dec)}")
        kernel_size = check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        dropout = check_dropout("dropout", dropout)
        depth = len(enc) - 1
        self.divisor = 2 ** depth
        sd = spatial_dims
        k = kernel_size
        chans = [base * 2 ** i for i in range(depth + 1)]

        def down(i: int, cin: int, cout: int) -> nn.Module:
            return nn.Sequential(ConvNormAct(sd, cin, cout, kernel_size=2, stride=2, norm=norm, act=act),
                                 channel_dropout(sd, dropout))

        def up(i: int, cin: int, cout: int) -> nn.Module:
            return nn.Sequential(conv_transpose(sd, cin, cout, kernel_size=2, stride=2, bias=not is_norm(norm)),
                                 norm_layer(norm, sd, cout), act_layer(act, cout), channel_dropout(sd, dropout))

        self.encoder = Encoder(sd, in_channels, chans, lambda i, cin, cout: VStage(sd, cin, cout, enc[i], k, norm, act),
                               down=down)
        # a decompression stage keeps the concatenation's channels (twice the skip's) for its residual
        self.decoder = Decoder(self.encoder, up,
                               lambda i, cin, cout: VStage(sd, cin, cout, dec[depth - 1 - i], k, norm, act),
                               stage_channels=[2 * c for c in chans[:-1]])
        top = 2 * chans[0]
        if variant == "caffe":  # 5³ conv to the output channels + PReLU, then the 1³ conv
            self.head = nn.Sequential(ConvNormAct(sd, top, out_channels, k, norm=norm, act=act),
                                      conv(sd, out_channels, out_channels, 1))
        else:
            self.head = conv(sd, top, out_channels, 1)

    def _forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x))[0])


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}")
    return list(value)

