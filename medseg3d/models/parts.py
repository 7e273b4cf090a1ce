"""The encoder and the decoder: the shared parts of the U-shaped nets.

As in MIC-DKFZ's dynamic-network-architectures, an :class:`Encoder` is a stack of stages at halving
resolutions, and a :class:`Decoder` is built *from* an encoder: it reads the encoder's per-stage channels
(``encoder.channels``) and mirrors its stages, deepest first. What differs from paper to paper is handed to
these parts as small factories, so each net's own file keeps only what is its paper's:

============  ====================================  =====================  =================================
net           stage block                           down / up              decoder stage output
============  ====================================  =====================  =================================
U-Net         two conv-norm-act                     max pool / up-conv     the skip's channels
No New-Net    two conv-IN-lReLU                     max pool / trilinear   the next skip's (halved before up)
V-Net         1-3 5³ convs + residual               2³ s2 conv / up-conv   twice the skip's (cat, residual)
MultiResUNet  MultiRes block (Res path on skips)    max pool / up-conv     the MultiRes block's width
3D U²-Net     per-domain separable residual unit    s2 conv / nearest+conv the skip's channels
============  ====================================  =====================  =================================

A factory is called ``factory(level, in_channels, out_channels)`` and returns a module; ``level`` is 0 at full
resolution. Blocks may take extra forward arguments (the 3D U²-Net's ``domain``): ``Encoder.forward(x,
*context)`` and ``Decoder.forward(skips, *context)`` hand ``context`` to every block and resampling step.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch
from torch import nn

from .blocks import max_pool

#: ``factory(level, in_channels, out_channels) -> module``
Factory = Callable[[int, int, int], nn.Module]
#: per-level channels (full resolution first), or a rule: ``"skip"`` (the skip's channels at that level) or
#: ``"below"`` (the channels coming from the level below)
ChannelRule = Union[str, Sequence[int]]


class _Pool(nn.Module):
    """2× max pooling that ignores the forward context (it has no domain-specific weights)."""

    def __init__(self, spatial_dims: int):
        super().__init__()
        self.pool = max_pool(spatial_dims, 2)

    def forward(self, x: torch.Tensor, *context: Any) -> torch.Tensor:
        return self.pool(x)


class Encoder(nn.Module):
    """Stages at full, 1/2, 1/4 … resolution: stage ``s > 0`` is a 2× down-sampling step then a block.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input.
        channels: each stage's output channels, full resolution first (the last stage is the bottleneck).
        block: ``block(s, in_ch, out_ch)``, stage ``s``'s block.
        down: ``"max"`` (2× max pooling; the block then maps the previous stage's channels to
            ``channels[s]``) or a factory ``down(s, in_ch, out_ch)`` of a 2× down-sampling step that already
            maps to ``channels[s]`` (the block then keeps them).

    ``forward(x, *context)`` returns every stage's output, full resolution first: the skips, and last the
    bottleneck. The decoder reads ``spatial_dims``, ``channels`` and ``strides``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int], block: Factory,
                 down: str | Factory = "max"):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"an encoder needs at least 2 stages, got channels {tuple(channels)}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = [int(c) for c in channels]
        self.strides = [1] + [2] * (len(self.channels) - 1)
        self.downs = nn.ModuleList()
        self.blocks = nn.ModuleList()
        ch = in_channels
        for s, c in enumerate(self.channels):
            if s == 0:
                self.blocks.append(block(0, ch, c))
            elif down == "max":
                self.downs.append(_Pool(spatial_dims))
                self.blocks.append(block(s, ch, c))
            elif callable(down):
                self.downs.append(down(s, ch, c))
                self.blocks.append(block(s, c, c))
            else:
                raise ValueError(f"down must be 'max' or a factory, got {down!r}")
            ch = c

    def forward(self, x: torch.Tensor, *context: Any) -> list[torch.Tensor]:
        x = self.blocks[0](x, *context)
        out = [x]
        for down, block in zip(self.downs, self.blocks[1:]):
            x = block(down(x, *context), *context)
            out.append(x)
        return out


class Decoder(nn.Module):
    """The encoder mirrored: for each skip level, deepest first, ``up`` (2×), merge with the skip, ``block``.

    Args:
        encoder: the :class:`Encoder` whose skips this decoder consumes.
        up: ``up(level, below_ch, up_ch)``: the 2× up-sampling step into ``level``.
        block: ``block(level, in_ch, out_ch)``: the block after the merge.
        up_channels: channels after ``up``: ``"skip"`` (the skip's, as DNA's transposed convolutions),
            ``"below"`` (unchanged) or a sequence per level.
        stage_channels: each decoder stage's output channels: ``"skip"`` or a sequence per level.
        skip_channels: the skips' channels when the net transforms them before the decoder (MultiResUNet's Res
            paths); default ``encoder.channels[:-1]``.
        merge: ``"cat"`` (concatenate ``[up, skip]``, the U-Net), ``"add"`` (sum; ``up_ch`` must equal the
            skip's channels) or ``"none"`` (no skips: an auto-encoder's decoder, which reads only the last
            entry of ``skips``).

    ``forward(skips, *context, levels=1)`` takes the encoder's outputs (possibly with transformed skips) and
    returns the outputs of the top ``levels`` decoder stages, full resolution first (more than one for deep
    supervision). ``out_channels`` lists each stage's output channels, full resolution first.
    """

    def __init__(self, encoder: Encoder, up: Factory, block: Factory, *, up_channels: ChannelRule = "skip",
                 stage_channels: ChannelRule = "skip", skip_channels: Sequence[int] | None = None,
                 merge: str = "cat"):
        super().__init__()
        if merge not in ("cat", "add", "none"):
            raise ValueError(f"merge must be 'cat', 'add' or 'none', got {merge!r}")
        skips = list(encoder.channels[:-1]) if skip_channels is None else [int(c) for c in skip_channels]
        n = len(encoder.channels) - 1
        if len(skips) != n:
            raise ValueError(f"skip_channels must have {n} entries (one per encoder stage above the bottleneck), "
                             f"got {tuple(skips)}")
        self.merge = merge
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        out_channels = [0] * n
        below = encoder.channels[-1]
        for i in reversed(range(n)):
            up_ch = _channels(up_channels, i, skips[i], below, "up_channels")
            self.ups.append(up(i, below, up_ch))
            if merge != "cat" and up_ch != skips[i]:
                raise ValueError(f"merge={merge!r} needs up_channels equal to the skip's ({skips[i]}) at level {i}, "
                                 f"got {up_ch}")
            out = _channels(stage_channels, i, skips[i], below, "stage_channels")
            self.blocks.append(block(i, up_ch + skips[i] if merge == "cat" else up_ch, out))
            out_channels[i] = out
            below = out
        self.out_channels = out_channels

    def forward(self, skips: Sequence[torch.Tensor], *context: Any, levels: int = 1) -> list[torch.Tensor]:
        x = skips[-1]
        n = len(self.blocks)
        outs: list[torch.Tensor] = []
        for k, (up, block) in enumerate(zip(self.ups, self.blocks)):
            skip = skips[n - 1 - k] if self.merge != "none" else None
            x = up(x, *context)
            if self.merge == "cat":
                x = torch.cat([x, skip], dim=1)
            elif self.merge == "add":
                x = x + skip
            x = block(x, *context)
            if k >= n - levels:
                outs.append(x)
        return outs[::-1]


def _channels(rule: ChannelRule, level: int, skip: int, below: int, name: str) -> int:
    if rule == "skip":
        return skip
    if rule == "below":
        return below
    if isinstance(rule, str):
        raise ValueError(f"{name} must be 'skip', 'below' or a sequence of channels, got {rule!r}")
    return int(rule[level])


__all__ = ["Encoder", "Decoder", "Factory"]
