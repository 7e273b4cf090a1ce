"""3D U²-Net: one universal U-Net for many data sets (domains).

Huang C., Han H., Yao Q., Zhu S., Zhou S. K. "3D U²-Net: A 3D Universal U-Net for Multi-Domain Medical Image
Segmentation", MICCAI 2019 (arXiv:1909.06012); authors' code: github.com/huangmozhilv/u2net_torch.

The idea: images from different domains have domain-specific *spatial* correlations, probed by channel-wise
(depthwise) 3³ convolutions, and share *cross-channel* correlations, modelled by pointwise 1³ convolutions. So
every 3³ convolution of the backbone is a separable convolution whose depthwise filters and normalisations
belong to one domain while its pointwise filters are shared by all. With ``T`` domains a layer costs
``27·c_in·T + c_in·c_out`` weights instead of ``27·c_in·c_out·T`` for ``T`` separate U-Nets, so a new domain
adds only depthwise filters, norms, an input adapter and a head (:meth:`U2Net3D.add_domain`).

Layout (as in the paper's figure and the authors' code, ``levels=5``, ``base_filters=16``):

- per-domain input adapter: 3³ conv (in → 16) + norm + act;
- encoder level ``i`` (16, 32, 64, 128, 256 filters): a residual unit
  ``act(x + SepNorm(act(SepNorm(x))))`` where ``SepNorm`` = depthwise 3³ (domain) → norm (domain) → act →
  pointwise 1³ (shared) → norm (domain);
- down-sampling: a shared stride-2 3³ convolution doubling the channels, with a per-domain norm + act;
- decoder level ``i``: nearest ×2 up-sampling → SepNorm (c_{i+1} → c_i) + act, concatenation with the skip,
  SepNorm (2c_i → c_i) + act, SepNorm (c_i → c_i) + act;
- per-domain 1³ head.

Where this differs from the authors' code: convolutions followed by a norm carry no bias (the paper's cost
formula counts none; a bias before a norm is redundant); the stride-2 convolution pads symmetrically instead
of TensorFlow-style "same" padding on the far side only; optional deep supervision returns the auxiliary
per-domain logits of decoder levels 1 and 2 (nearest-upsampled to full size) as separate outputs, as the
medseg3d contract asks, where the authors add them into the main logits.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import SegNet, check_positive_int
from .blocks import LayerSpec, ConvNormAct, act_layer, conv, norm_layer

_DEFAULT_NORM: LayerSpec = ("instance", {"affine": True})
_DEFAULT_ACT: LayerSpec = ("leakyrelu", {"negative_slope": 0.01})


class PerDomain(nn.ModuleDict):
    """A ModuleDict keyed by domain name whose entries are built by ``factory()`` (domain-specific weights)."""

    def __init__(self, domains: Iterable[str], factory: Any):
        super().__init__()
        self.factory = factory
        for d in domains:
            self[d] = factory()

    def add_domain(self, name: str) -> None:
        ref = next(iter(self.values()), None)
        module = self.factory()
        if ref is not None:
            p = next(iter(ref.parameters()), None)
            if p is not None:
                module = module.to(device=p.device, dtype=p.dtype)
        self[name] = module


class DomainSeparableConv(nn.Module):
    """Separable k-convolution + norm: depthwise filters and both norms per domain, pointwise filters shared.

    ``forward(x, domain)``: depthwise k³ (domain) → norm (domain) → act → pointwise 1³ (shared) → norm (domain).
    The activation after the second norm is left to the caller (it may follow a residual addition).
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, domains: Iterable[str], kernel_size: int = 3,
                 norm: LayerSpec = _DEFAULT_NORM, act: LayerSpec = _DEFAULT_ACT):
        super().__init__()
        domains = list(domains)
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.depthwise = PerDomain(domains, partial(conv, spatial_dims, in_ch, in_ch, kernel_size, groups=in_ch,
                                                    bias=False))
        self.dw_norm = PerDomain(domains, partial(norm_layer, norm, spatial_dims, in_ch))
        self.act = act_layer(act)
        self.pointwise = conv(spatial_dims, in_ch, out_ch, 1, bias=False)
        self.pw_norm = PerDomain(domains, partial(norm_layer, norm, spatial_dims, out_ch))

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        x = self.act(self.dw_norm[domain](self.depthwise[domain](x)))
        return self.pw_norm[domain](self.pointwise(x))


class _ResidualUnit(nn.Module):
    """Encoder level: two separable conv+norm units with a residual addition (1³ shared projection if needed)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, domains, norm, act):
        super().__init__()
        self.sep1 = DomainSeparableConv(spatial_dims, in_ch, out_ch, domains, norm=norm, act=act)
        self.sep2 = DomainSeparableConv(spatial_dims, out_ch, out_ch, domains, norm=norm, act=act)
        self.proj = nn.Identity() if in_ch == out_ch else conv(spatial_dims, in_ch, out_ch, 1, bias=False)
        self.act1 = act_layer(act)
        self.act2 = act_layer(act)

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        out = self.sep2(self.act1(self.sep1(x, domain)), domain)
        return self.act2(out + self.proj(x))


class _Down(nn.Module):
    """Shared stride-2 3³ convolution, per-domain norm, act."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, domains, norm, act):
        super().__init__()
        self.conv = conv(spatial_dims, in_ch, out_ch, 3, stride=2, bias=False)
        self.norm = PerDomain(domains, partial(norm_layer, norm, spatial_dims, out_ch))
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.act(self.norm[domain](self.conv(x)))


class _Up(nn.Module):
    """Nearest ×2 up-sampling, SepNorm (c_{i+1} → c_i) + act, concat skip, two SepNorm + act."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, domains, norm, act):
        super().__init__()
        self.up_conv = DomainSeparableConv(spatial_dims, in_ch, out_ch, domains, norm=norm, act=act)
        self.sep1 = DomainSeparableConv(spatial_dims, 2 * out_ch, out_ch, domains, norm=norm, act=act)
        self.sep2 = DomainSeparableConv(spatial_dims, out_ch, out_ch, domains, norm=norm, act=act)
        self.act0, self.act1, self.act2 = act_layer(act), act_layer(act), act_layer(act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, domain: str) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.act0(self.up_conv(x, domain))
        x = self.act1(self.sep1(torch.cat([x, skip], dim=1), domain))
        return self.act2(self.sep2(x, domain))


def _per_domain_ints(name: str, value: Any, domains: list[str]) -> dict[str, int]:
    if isinstance(value, Mapping):
        keys = set(value)
        if keys != set(domains):
            raise ValueError(f"{name} must have one entry per domain {domains}, got keys {sorted(map(str, keys))}")
        return {d: check_positive_int(f"{name}[{d!r}]", value[d]) for d in domains}
    v = check_positive_int(name, value)
    return {d: v for d in domains}


def _check_domain_name(name: Any, taken: Iterable[str], arg: str = "domains") -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{arg}: a domain name must be a Python identifier, got {name!r}")
    if name in taken:
        raise ValueError(f"{arg}: domain {name!r} is given twice")
    return name


@MODELS.register("u2net3d")
class U2Net3D(SegNet):
    """3D U²-Net (Huang et al., MICCAI 2019): a universal U-Net with per-domain separable adapters.

    ``U2Net3D(spatial_dims=3, in_channels=1, out_channels=2, *, domains=("default",), base_filters=16,
    levels=5, norm=("instance", {"affine": True}), act=("leakyrelu", {"negative_slope": 0.01}),
    deep_supervision=False)``

    ``in_channels`` / ``out_channels`` are an int (the same for every domain) or a dict ``{domain: int}``.
    ``forward(x, domain=None)`` runs the sub-network of one domain (``None`` = the first domain).
    :meth:`add_domain` adds a domain (only depthwise filters, norms, an input adapter and a head are new);
    :meth:`domain_parameters` / :meth:`shared_parameters` split the weights, e.g. to fine-tune a new domain
    with the shared pointwise filters frozen as the paper does.

    Defaults follow the paper and the authors' code: 5 levels, 16 filters at the input doubled per level
    (16…256), a residual unit per encoder level, instance norm (affine) + leaky ReLU (0.01), nearest
    up-sampling, per-domain 1³ heads. 3D only, as the paper.
    ``divisor`` = 2^(levels-1) = 16.

    Parameters with defaults, one domain, 4 in / 4 out (BraTS-like): 1,528,212 (1.53 M), of which
    1,458,432 are shared (pointwise filters and stride-2 convolutions) and 69,780 belong to the domain
    (depthwise filters 59,184, norms 8,768, input adapter 1,760, head 68). Each further
    4-in/4-out domain adds 69,780 (4.8 % of the shared weights). Instance norm needs more than one voxel at the
    bottleneck, so inputs must be at least 2·divisor (32 with 5 levels) along some axis.
    """

    paper = "Huang 2019, 3D U²-Net (MICCAI)"
    dims = (3,)

    def __init__(self, spatial_dims: int = 3, in_channels: int | Mapping[str, int] = 1,
                 out_channels: int | Mapping[str, int] = 2, *, domains: Iterable[str] | str = ("default",),
                 base_filters: int = 16, levels: int = 5, norm: LayerSpec = _DEFAULT_NORM,
                 act: LayerSpec = _DEFAULT_ACT, deep_supervision: bool = False):
        if isinstance(domains, str):
            domains = (domains,)
        try:
            domains = list(domains)
        except TypeError:
            raise ValueError(f"domains must be a sequence of names, got {domains!r}") from None
        if not domains:
            raise ValueError("domains must name at least one domain")
        seen: list[str] = []
        for d in domains:
            seen.append(_check_domain_name(d, seen))
        ins = _per_domain_ints("in_channels", in_channels, domains)
        outs = _per_domain_ints("out_channels", out_channels, domains)
        super().__init__(spatial_dims, ins[domains[0]], outs[domains[0]])
        base = check_positive_int("base_filters", base_filters)
        levels = check_positive_int("levels", levels)
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        self.domains: list[str] = list(domains)
        self.domain_in_channels = dict(ins)
        self.domain_out_channels = dict(outs)
        self.levels = levels
        self.base_filters = base
        self.norm, self.act = norm, act
        self.deep_supervision = bool(deep_supervision)
        self.divisor = 2 ** (levels - 1)
        sd = spatial_dims
        chans = [base * 2 ** i for i in range(levels)]
        self.chans = chans

        self.input_adapters = nn.ModuleDict({d: self._make_input(ins[d]) for d in domains})
        self.encoder = nn.ModuleList(_ResidualUnit(sd, chans[i], chans[i], domains, norm, act) for i in range(levels))
        self.down = nn.ModuleList(_Down(sd, chans[i], chans[i + 1], domains, norm, act) for i in range(levels - 1))
        # decoder[k] maps level k+1 to level k
        self.decoder = nn.ModuleList(_Up(sd, chans[i + 1], chans[i], domains, norm, act) for i in range(levels - 1))
        self.heads = nn.ModuleDict({d: conv(sd, chans[0], outs[d], 1) for d in domains})
        self.ds_levels = [i for i in (1, 2) if i < levels - 1] if self.deep_supervision else []
        self.aux_heads = nn.ModuleDict({
            f"level{i}": nn.ModuleDict({d: conv(sd, chans[i], outs[d], 1) for d in domains}) for i in self.ds_levels
        })

    def _make_input(self, in_ch: int) -> nn.Module:
        return ConvNormAct(self.spatial_dims, in_ch, self.base_filters, 3, norm=self.norm, act=self.act)

    # --- domains ---------------------------------------------------------------------------------------------
    def _resolve(self, domain: str | None) -> str:
        if domain is None:
            return self.domains[0]
        if domain not in self.domains:
            raise ValueError(f"domain {domain!r} is unknown; valid domains: {', '.join(self.domains)}")
        return domain

    def add_domain(self, name: str, in_channels: int, out_channels: int) -> "U2Net3D":
        """Add a domain: new depthwise filters and norms in every layer, a new input adapter and head(s)."""
        _check_domain_name(name, self.domains, arg="name")
        in_channels = check_positive_int("in_channels", in_channels)
        out_channels = check_positive_int("out_channels", out_channels)
        p = next(self.parameters())
        to = dict(device=p.device, dtype=p.dtype)
        for m in list(self.modules()):
            if isinstance(m, PerDomain):
                m.add_domain(name)
        self.input_adapters[name] = self._make_input(in_channels).to(**to)
        self.heads[name] = conv(self.spatial_dims, self.chans[0], out_channels, 1).to(**to)
        for i in self.ds_levels:
            self.aux_heads[f"level{i}"][name] = conv(self.spatial_dims, self.chans[i], out_channels, 1).to(**to)
        self.domains.append(name)
        self.domain_in_channels[name] = in_channels
        self.domain_out_channels[name] = out_channels
        self.train(self.training)  # new modules follow the net's mode
        return self

    def domain_parameters(self, domain: str) -> list[nn.Parameter]:
        """The weights that belong to one domain (depthwise filters, norms, input adapter, heads)."""
        domain = self._resolve(domain)
        dicts = [m for m in self.modules() if isinstance(m, PerDomain)]
        dicts += [self.input_adapters, self.heads] + list(self.aux_heads.values())
        return [p for m in dicts for p in m[domain].parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The weights shared by all domains (pointwise filters, stride-2 convolutions)."""
        own = {id(p) for d in self.domains for p in self.domain_parameters(d)}
        return [p for p in self.parameters() if id(p) not in own]

    # --- forward ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, domain: str | None = None) -> Any:  # type: ignore[override]
        return super().forward(x, domain=self._resolve(domain))

    def _forward(self, x: torch.Tensor, domain: str = "default", **_: Any) -> Any:
        full = x.shape[2:]
        if x.shape[1] != self.domain_in_channels[domain]:
            raise ValueError(f"domain {domain!r} expects {self.domain_in_channels[domain]} input channels, "
                             f"got {x.shape[1]}")
        x = self.input_adapters[domain](x)
        skips = []
        for i in range(self.levels):
            x = self.encoder[i](x, domain)
            if i < self.levels - 1:
                skips.append(x)
                x = self.down[i](x, domain)
        aux = {}
        for i in reversed(range(self.levels - 1)):
            x = self.decoder[i](x, skips[i], domain)
            if self.training and i in self.ds_levels:
                aux[i] = self.aux_heads[f"level{i}"][domain](x)
        out = self.heads[domain](x)
        if self.training and self.ds_levels:
            return [out] + [F.interpolate(aux[i], size=full, mode="nearest") for i in self.ds_levels]
        return out
