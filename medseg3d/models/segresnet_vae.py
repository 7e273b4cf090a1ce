"""The autoencoder-regularised segmentation net (Myronenko 2018), "SegResNet-VAE".

Myronenko A. "3D MRI brain tumor segmentation using autoencoder regularization", BrainLes (MICCAI) 2018,
LNCS 11384 (arXiv:1810.11654). Winner of BraTS 2018.

The paper's Tables 1 and 2:

- Encoder: InitConv (3³, 32 filters) → spatial dropout 0.2 → ResNet-like pre-activation blocks (GN(8), ReLU,
  3³ conv, GN, ReLU, 3³ conv, + identity), 1, 2, 2, 4 of them at 32, 64, 128, 256 filters, each level after
  the first entered by a 3³ stride-2 convolution doubling the filters.
- Decoder (light): per level a 1³ convolution halving the filters, ×2 (tri)linear upsampling, the encoder's
  output at that level added, one block; 1³ conv to the 3 regions (WT, TC, ET) + sigmoid. This net returns
  the logits.
- VAE branch from the encoder's end: VD = GN, ReLU, 3³ stride-2 conv to 16 filters, flatten, dense to 256;
  VDraw = the first 128 values are the mean, the last 128 the spread, sample; VU = dense back to
  16×(size/16), ReLU, 1³ conv to 256 filters, ×2 upsampling; then the decoder's structure *without* the skip
  additions and with its own weights (VUp2/VBlock2 … VUp0/VBlock0), and a 1³ conv to the input's channels.
- Loss Dice + 0.1·L2(reconstruction) + 0.1·KL (see ``medseg3d.engine.losses.ae_reg``), crops 160×192×128.

Departures, all where the paper is silent or where a common implementation departs from the paper:

- The 128 "std" values are parametrised as a log-variance (``logvar``; σ = exp(logvar / 2)) so that the KL
  term is defined for any network output; the paper does not say how σ is kept positive.
- MONAI's ``SegResNetVAE`` differs from the paper: its VAE decoder re-uses the segmentation decoder's weights
  (the paper's VAE decoder has its own), its mean and its σ layers are two separate 256-wide dense layers (the
  paper: one dense layer to 256 = 128 mean + 128 σ) and by default σ is a fixed 0.3, it adds GN+ReLU after the
  VD conv, after the VU upsampling and before both 1³ output convs (the paper has none there). Our
  segmentation path equals MONAI's ``SegResNet(init_filters=32)`` minus that final GN (64 parameters).
- Convolutions have no bias except the 1³ heads and the VD conv (as in MONAI; every 3³ conv but the first
  and the strided ones is preceded by GN, and the paper does not say).

Sizes: the segmentation path works at any input size (padded to the divisor, 16). The VAE's dense layers need
the training patch size, ``input_image_size`` (every entry a multiple of 16); in training mode the padded
input must have exactly that size. In eval mode, or when called with ``vae=False``, only the segmentation
logits are computed and returned.

The encoder and both decoders are the shared :class:`~medseg3d.models.parts.Encoder` and
:class:`~medseg3d.models.parts.Decoder` (skips added; the VAE decoder without skips); the weights of
checkpoints written before load under the new names.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..registry import MODELS
from .base import KeyRule, SegNet, check_choice, check_dropout, check_positive_int
from .blocks import LayerSpec, PreActResidualBlock, act_layer, conv, norm_layer, upsample
from .blocks import dropout as channel_dropout
from .parts import Decoder, Encoder


class _Up(nn.Module):
    """1³ conv halving the channels → ×2 upsampling (a decoder level before its skip addition)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, up_mode: str):
        super().__init__()
        self.reduce = conv(spatial_dims, in_ch, out_ch, 1, bias=False)
        self.up = upsample(spatial_dims, out_ch, out_ch, mode=up_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.reduce(x))


@MODELS.register("segresnet_vae")
class SegResNetVAE(SegNet):
    """Myronenko 2018's encoder-decoder with the VAE regulariser; 3D (the paper) or 2D.

    Args:
        spatial_dims: 3 (default, the paper) or 2.
        in_channels, out_channels: 4 and 3 by default (BraTS modalities → WT, TC, ET).
        input_image_size: the training patch size (required; the paper's 160×192×128), each a multiple of 16.
        base_filters: 32 (a multiple of the GN group count).
        blocks_down: residual blocks per encoder level, (1, 2, 2, 4).
        blocks_up: residual blocks per decoder level, deepest first, (1, 1, 1); the VAE decoder mirrors it.
        norm: ``("group", {"num_groups": 8})``.
        act: ``"relu"``.
        dropout: spatial (channel) dropout after the initial conv, 0.2.
        vae_latent: latent size, 128 (the dense layer is ``2 * vae_latent`` = 256 wide).
        vae_channels: filters of the VAE's reduced map, 16.
        up_mode: ``"linear"`` (the paper's trilinear), ``"nearest"`` or ``"transpose"``.

    Output: training mode ``{"seg", "recon", "mu", "logvar"}`` (``recon`` has ``in_channels``; ``mu`` and
    ``logvar`` are (N, vae_latent)); eval mode or ``forward(x, vae=False)``: the segmentation logits.

    Parameters with defaults at the paper's crop: the segmentation path 18,798,563 (14.2 M of it in the four
    256-filter blocks) and the VAE branch 7,234,324 (dense layers 15,360→256: 3,932,416 and 128→15,360:
    1,981,440; its own decoder 1,205,120; VD conv 110,608; rest 4,740). MONAI's ``SegResNetVAE(init_filters=32)``
    has 30,726,935; see the module docstring for why.

        3D, 4 in / 3 out, input_image_size=(160, 192, 128): 26,032,887
    """

    paper = "Myronenko. 3D MRI brain tumor segmentation using autoencoder regularization. BrainLes 2018"
    dims = (2, 3)

    def __init__(self, spatial_dims: int = 3, in_channels: int = 4, out_channels: int = 3, *,
                 input_image_size: Sequence[int] | None = None, base_filters: int = 32,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                 norm: LayerSpec = ("group", {"num_groups": 8}), act: LayerSpec = "relu", dropout: float = 0.2,
                 vae_latent: int = 128, vae_channels: int = 16, up_mode: Literal["linear", "nearest", "transpose"] = "linear"):
        super().__init__(spatial_dims, in_channels, out_channels)
        sd = spatial_dims
        base = check_positive_int("base_filters", base_filters)
        down = _positive_ints("blocks_down", blocks_down)
        up = _positive_ints("blocks_up", blocks_up)
        if len(down) < 2:
            raise ValueError(f"blocks_down needs at least 2 levels, got {tuple(down)}")
        if len(up) != len(down) - 1:
            raise ValueError(f"blocks_up must have len(blocks_down) - 1 = {len(down) - 1} entries, got {tuple(up)}")
        groups = _num_groups(norm)
        if groups and base % groups:
            raise ValueError(f"base_filters must be a multiple of the group norm's num_groups ({groups}), got {base}")
        dropout = check_dropout("dropout", dropout)
        check_choice("up_mode", up_mode, ("linear", "nearest", "transpose"))
        self.vae_latent = check_positive_int("vae_latent", vae_latent)
        self.vae_channels = check_positive_int("vae_channels", vae_channels)
        if groups and self.vae_channels % groups:
            raise ValueError(f"vae_channels must be a multiple of the group norm's num_groups ({groups}), "
                             f"got {self.vae_channels}")
        n_down = len(down) - 1
        self.divisor = 2 ** (n_down + 1)  # the VAE halves once more
        if input_image_size is None:
            raise ValueError("input_image_size (the training patch size, e.g. (160, 192, 128)) is required: "
                             "the VAE branch's dense layers depend on it")
        size = _positive_ints("input_image_size", input_image_size)
        if len(size) != sd:
            raise ValueError(f"input_image_size must have {sd} entries for spatial_dims={sd}, got {tuple(size)}")
        if any(s % self.divisor for s in size):
            raise ValueError(f"input_image_size must be a multiple of {self.divisor} along every axis, "
                             f"got {tuple(size)}")
        self.input_image_size = tuple(size)
        self.latent_grid = tuple(s // self.divisor for s in size)

        chans = [base * 2 ** i for i in range(len(down))]

        def blocks(n: int, ch: int) -> nn.Sequential:
            return nn.Sequential(*[PreActResidualBlock(sd, ch, norm=norm, act=act) for _ in range(n)])

        # encoder: initial conv + dropout, then per level a 3³ stride-2 conv doubling the filters and the blocks
        self.init_conv = conv(sd, in_channels, base, 3, bias=False)
        self.init_drop = channel_dropout(sd, dropout)
        self.encoder = Encoder(sd, base, chans, lambda i, cin, cout: blocks(down[i], cout),
                               down=lambda i, cin, cout: conv(sd, cin, cout, 3, stride=2, bias=False))

        # decoder level i: 1³ conv halving, ×2 upsampling, + the encoder's output at that level, the blocks
        def decoder(merge: str) -> Decoder:
            return Decoder(self.encoder, lambda i, cin, cout: _Up(sd, cin, cout, up_mode),
                           lambda i, cin, cout: blocks(up[n_down - 1 - i], cout), merge=merge)

        self.decoder = decoder("add")
        self.head = conv(sd, base, out_channels, 1)

        # VAE branch
        top = chans[-1]
        flat = self.vae_channels * math.prod(self.latent_grid)
        self.vae_down = nn.Sequential(norm_layer(norm, sd, top), act_layer(act, top),
                                      conv(sd, top, self.vae_channels, 3, stride=2, bias=True))
        self.vae_fc_in = nn.Linear(flat, 2 * self.vae_latent)
        self.vae_fc_out = nn.Linear(self.vae_latent, flat)
        self.vae_fc_act = act_layer(act, None)
        self.vae_up = nn.Sequential(conv(sd, self.vae_channels, top, 1, bias=False),
                                    upsample(sd, top, top, mode=up_mode))
        self.vae_decoder = decoder("none")  # the decoder's structure without the skips, its own weights
        self.vae_end = conv(sd, base, in_channels, 1)

    def legacy_keys(self) -> list[KeyRule]:
        return [
            (r"^enc\.0\.", "encoder.blocks.0."),
            (r"^enc\.(\d+)\.0\.", lambda m: f"encoder.downs.{int(m.group(1)) - 1}."),
            (r"^enc\.(\d+)\.(\d+)\.", lambda m: f"encoder.blocks.{m.group(1)}.{int(m.group(2)) - 1}."),
            (r"^(dec|vae_dec)\.(\d+)\.(reduce|up)\.",
             lambda m: f"{'decoder' if m.group(1) == 'dec' else 'vae_decoder'}.ups.{m.group(2)}.{m.group(3)}."),
            (r"^(dec|vae_dec)\.(\d+)\.blocks\.",
             lambda m: f"{'decoder' if m.group(1) == 'dec' else 'vae_decoder'}.blocks.{m.group(2)}."),
        ]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(self.init_drop(self.init_conv(x)))

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.decoder(feats)[0])

    def vae(self, top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar) from the encoder's last feature map."""
        z = self.vae_fc_in(torch.flatten(self.vae_down(top), 1))
        mu, logvar = z[:, : self.vae_latent], z[:, self.vae_latent:]
        sample = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        y = self.vae_fc_act(self.vae_fc_out(sample))
        y = self.vae_up(y.view((y.shape[0], self.vae_channels) + self.latent_grid))
        y = self.vae_decoder([y] * len(self.encoder.channels))[0]  # no skips: only the last entry is read
        return self.vae_end(y), mu, logvar

    def _forward(self, x: torch.Tensor, vae: bool = True, **_: Any) -> Any:
        vae = vae and self.training
        if vae and tuple(x.shape[2:]) != self.input_image_size:  # checked before any work is done
            raise ValueError(f"in training mode the (padded) input must have input_image_size "
                             f"{self.input_image_size}, got {tuple(x.shape[2:])}; call with vae=False or in "
                             f"eval mode for other sizes")
        feats = self.encode(x)
        seg = self.decode(feats)
        if not vae:
            return seg
        recon, mu, logvar = self.vae(feats[-1])
        return {"seg": seg, "recon": recon, "mu": mu, "logvar": logvar}


def _positive_ints(name: str, value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}")
    return [check_positive_int(name, v) for v in value]


def _num_groups(norm: LayerSpec) -> int:
    spec = tuple(norm) if isinstance(norm, list) else norm
    if isinstance(spec, tuple) and len(spec) == 2 and str(spec[0]).lower() == "group":
        return int(spec[1].get("num_groups", 0))
    return 0
