"""3D U²-Net: one universal U-Net for many data sets (domains).

Huang C., Han H., Yao Q., Zhu S., Zhou S. K. "3D U²-Net: A 3D Universal U-Net for Multi-Domain Medical Image
Segmentation", MICCAI 2019 (arXiv:1909.06012); authors' code: github.com/huangmozhilv/u2net_torch.

The idea: images from different domains have domain-specific *spatial* correlations, probed by channel-wise
(depthwise) 3³ convolutions, and share *cross-channel* correlations, modelled by pointwise 1³ convolutions. So
every 3³ convolution of the backbone is a separable convolution whose depthwise filters and normalisations
belong to one domain while its pointwise filters are shared by all. With ``T`` domains a layer costs
``27·c_in·T + c_in·c_out`` weights instead of ``27·c_in·c_out·T`` for ``T`` separate U-Nets, so a new domain
adds only depthwise filters, norms, an input adapter and a head (:meth:`U2Net3D.add_domain`).

Layout (the authors' universal model: ``levels=6``, ``base_filters=16``, 128³ patches, 5 poolings; the
paper's figure draws 5 levels, ``levels=5``), built from the shared encoder/decoder parts:

- per-domain input adapter: 3³ conv (in → 16) + norm + act;
- encoder level ``i`` (16, 32, 64, 128, 256, 512 filters): a residual unit
  ``act(x + SepNorm(act(SepNorm(x))))`` where ``SepNorm`` = depthwise 3³ (domain) → norm (domain) → act →
  pointwise 1³ (shared) → norm (domain);
- down-sampling: a shared stride-2 3³ convolution doubling the channels, with a per-domain norm + act;
- decoder level ``i``: nearest ×2 up-sampling → SepNorm (c_{i+1} → c_i) + act, concatenation with the skip,
  SepNorm (2c_i → c_i) + act, SepNorm (c_i → c_i) + act;
- per-domain 1³ head;
- deep supervision (on by default, as in the authors' code): on decoder levels 2 and 1 a per-domain side
  output (1³ conv to the classes + norm + act) is added to the side output from below and up-sampled ×2
  (nearest); the sum reaches full resolution and is added to the head's logits. The side outputs are part of
  the network (they run in inference too), so the net returns one tensor in training as in eval.
  ``side_outputs="list"`` instead returns them as separate deep-supervision logits in training mode.

Where this differs from the authors' code: convolutions followed by a norm carry no bias (the paper's cost
formula counts none; a bias before a norm is redundant); the stride-2 convolution pads symmetrically instead
of TensorFlow-style "same" padding on the far side only.

Checkpoints written before 6 levels and the summed side outputs became the defaults were built with
``levels=5, deep_supervision=False`` (or ``side_outputs="list"`` with ``deep_supervision=True``); their
weights load into a net built with those arguments.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import KeyRule, SegNet, check_bool, check_choice, check_positive_int
from .blocks import ConvNormAct, LayerSpec, act_layer, conv, norm_layer
from .parts import Decoder, Encoder

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


class DomainConv(nn.Module):
    """A plain k-convolution shared by all domains + a norm per domain (``adapter="none"``: the authors'
    "shared" model, and with one domain their "independent" one)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, domains: Iterable[str], kernel_size: int = 3,
                 norm: LayerSpec = _DEFAULT_NORM):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.conv = conv(spatial_dims, in_ch, out_ch, kernel_size, bias=False)
        self.norm = PerDomain(list(domains), partial(norm_layer, norm, spatial_dims, out_ch))

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.norm[domain](self.conv(x))


def _unit(adapter: str, spatial_dims: int, in_ch: int, out_ch: int, domains, norm, act,
          kernel_size: int = 3) -> nn.Module:
    """conv + norm of the backbone: separable (per-domain depthwise 3³, shared pointwise) or plain."""
    if adapter == "separable":
        # the authors' depthwise filters are 3³ whatever the unit's kernel size (their ``dwise`` ignores it)
        return DomainSeparableConv(spatial_dims, in_ch, out_ch, domains, norm=norm, act=act)
    return DomainConv(spatial_dims, in_ch, out_ch, domains, kernel_size, norm=norm)


class _ResidualUnit(nn.Module):
    """Encoder level: two conv+norm units with a residual addition (1³ shared projection if needed)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, domains, norm, act, adapter: str = "separable"):
        super().__init__()
        self.sep1 = _unit(adapter, spatial_dims, in_ch, out_ch, domains, norm, act)
        self.sep2 = _unit(adapter, spatial_dims, out_ch, out_ch, domains, norm, act)
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
    """Nearest ×2 up-sampling, then conv + norm (c_{i+1} → c_i) + act (the authors' ``UnetUpsample``)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, domains, norm, act, adapter: str = "separable"):
        super().__init__()
        self.conv = _unit(adapter, spatial_dims, in_ch, out_ch, domains, norm, act)
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.act(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), domain))


class _UpBlock(nn.Module):
    """After the concatenation: conv + norm (2c_i → c_i) + act, conv + norm (c_i → c_i) + act (the authors'
    ``UpBlock``; its second convolution is 1³ in their plain model, a 3³-depthwise separable one in U²-Net)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, domains, norm, act, adapter: str = "separable"):
        super().__init__()
        self.sep1 = _unit(adapter, spatial_dims, in_ch, out_ch, domains, norm, act)
        self.sep2 = _unit(adapter, spatial_dims, out_ch, out_ch, domains, norm, act, kernel_size=1)
        self.act1, self.act2 = act_layer(act), act_layer(act)

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.act2(self.sep2(self.act1(self.sep1(x, domain)), domain))


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

    Args:
        spatial_dims: 3 (the only one).
        in_channels, out_channels: an int (the same for every domain) or a dict ``{domain: int}``.
        domains: the domain names (Python identifiers), ``("default",)``.
        base_filters: filters of the input adapter and the first level, 16; doubled per level.
        levels: resolution levels, 6 (the authors' universal model: 16 … 512 filters, 5 poolings of 128³
            patches); 5 gives the paper figure's 16 … 256.
        adapter: ``"separable"`` (U²-Net: per-domain depthwise 3³ filters, shared pointwise 1³ filters) or
            ``"none"`` (plain 3³ convolutions shared by all domains, per-domain norms: the authors' "shared"
            model; with one domain their "independent" model).
        norm: ``("instance", {"affine": True})``.
        act: ``("leakyrelu", {"negative_slope": 0.01})``.
        deep_supervision: True (the authors' code): per-domain side outputs on decoder levels 1 and 2.
        side_outputs: ``"sum"`` (the authors: each side output is 1³ conv + norm + act, added to the one below
            and up-sampled, and the sum is added to the final logits, in training and inference) or ``"list"``
            (plain 1³ heads whose logits, nearest-upsampled, follow the main logits in a list, in training mode
            only, for a deep-supervision loss).

    ``forward(x, domain=None)`` runs the sub-network of one domain (``None`` = the first domain).
    :meth:`add_domain` adds a domain (only depthwise filters, norms, an input adapter and heads are new);
    :meth:`domain_parameters` / :meth:`shared_parameters` split the weights, e.g. to fine-tune a new domain
    with the shared pointwise filters frozen as the paper does.

    ``divisor`` = 2^(levels-1) = 32. Instance norm needs more than one voxel at the bottleneck, so inputs must be
    at least 2·divisor along some axis (64 with 6 levels).

    Parameters with defaults, one domain, 4 in / 4 out (BraTS-like), and the paper figure's 5 levels without
    side outputs:

        3D, 4 in / 4 out: 5,990,956
        3D, 4 in / 4 out, levels=5, deep_supervision=False: 1,528,212

    With 5 levels and no side outputs 1,458,432 of them are shared (pointwise filters and stride-2
    convolutions) and 69,780 belong to the domain (depthwise filters 59,184, norms 8,768, input adapter 1,760,
    head 68); each further 4-in/4-out domain adds 69,780 (4.8 % of the shared weights).

    Parameters as a fraction of independent models, for the paper's five MSD tasks as the authors configured
    them (heart 1→2, liver 1→2, hippocampus 1→3, prostate 2→3, pancreas 1→2: modalities → classes with
    background): one universal model (6 levels) has 6,550,404 parameters; the five independent models
    (``adapter="none"``, one domain each, 4 levels for the hippocampus and 6 for the others, as the authors
    trained them) have 134,489,588 together: **4.87 %**. The paper's abstract says "about 1 %"; the authors'
    code, counted the same way (with its biases), gives 4.9 % (6,577,460 / 134,508,692).
    """

    paper = "Huang 2019, 3D U²-Net (MICCAI)"
    dims = (3,)
    variants = {"5 levels, no side outputs": {"levels": 5, "deep_supervision": False}}

    def __init__(self, spatial_dims: int = 3, in_channels: int | Mapping[str, int] = 1,
                 out_channels: int | Mapping[str, int] = 2, *, domains: Iterable[str] | str = ("default",),
                 base_filters: int = 16, levels: int = 6, adapter: Literal["separable", "none"] = "separable",
                 norm: LayerSpec = _DEFAULT_NORM, act: LayerSpec = _DEFAULT_ACT, deep_supervision: bool = True,
                 side_outputs: Literal["sum", "list"] = "sum"):
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
        self.adapter = check_choice("adapter", adapter, ("separable", "none"))
        self.deep_supervision = check_bool("deep_supervision", deep_supervision)
        self.side_outputs = check_choice("side_outputs", side_outputs, ("sum", "list"))
        self.domains: list[str] = list(domains)
        self.domain_in_channels = dict(ins)
        self.domain_out_channels = dict(outs)
        self.levels = levels
        self.base_filters = base
        self.norm, self.act = norm, act
        self.divisor = 2 ** (levels - 1)
        sd = spatial_dims
        chans = [base * 2 ** i for i in range(levels)]
        self.chans = chans

        self.input_adapters = nn.ModuleDict({d: self._make_input(ins[d]) for d in domains})
        self.encoder = Encoder(
            sd, base, chans, lambda i, cin, cout: _ResidualUnit(sd, cin, cout, domains, norm, act, adapter),
            down=lambda i, cin, cout: _Down(sd, cin, cout, domains, norm, act))
        self.decoder = Decoder(
            self.encoder, lambda i, cin, cout: _Up(sd, cin, cout, domains, norm, act, adapter),
            lambda i, cin, cout: _UpBlock(sd, cin, cout, domains, norm, act, adapter))
        self.heads = nn.ModuleDict({d: conv(sd, chans[0], outs[d], 1) for d in domains})
        # side outputs on decoder levels 1 and 2 (the authors: ``i < 3 and i > 0``)
        self.ds_levels = [i for i in (1, 2) if i < levels - 1] if self.deep_supervision else []
        summed = self.side_outputs == "sum"
        self.aux_heads = nn.ModuleDict({
            f"level{i}": nn.ModuleDict({d: self._make_side(i, outs[d]) for d in domains})
            for i in (self.ds_levels if not summed else [])
        })
        self.side_heads = nn.ModuleDict({
            f"level{i}": nn.ModuleDict({d: self._make_side(i, outs[d]) for d in domains})
            for i in (self.ds_levels if summed else [])
        })

    def _make_input(self, in_ch: int) -> nn.Module:
        return ConvNormAct(self.spatial_dims, in_ch, self.base_filters, 3, norm=self.norm, act=self.act)

    def _make_side(self, level: int, out_ch: int) -> nn.Module:
        head = conv(self.spatial_dims, self.chans[level], out_ch, 1)
        if self.side_outputs == "list":
            return head
        # the authors' DeepSupervision unit: 1³ conv, norm and act on the class channels
        return nn.Sequential(head, norm_layer(self.norm, self.spatial_dims, out_ch), act_layer(self.act))

    def legacy_keys(self) -> list[KeyRule]:
        last = self.levels - 2
        return [
            (r"^encoder\.(\d+)\.", r"encoder.blocks.\1."),
            (r"^down\.(\d+)\.", r"encoder.downs.\1."),
            (r"^decoder\.(\d+)\.up_conv\.", lambda m: f"decoder.ups.{last - int(m.group(1))}.conv."),
            (r"^decoder\.(\d+)\.(sep1|sep2)\.", lambda m: f"decoder.blocks.{last - int(m.group(1))}.{m.group(2)}."),
        ]

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
        for side in (self.aux_heads, self.side_heads):
            for key, per_domain in side.items():
                per_domain[name] = self._make_side(int(key[len("level"):]), out_channels).to(**to)
        self.domains.append(name)
        self.domain_in_channels[name] = in_channels
        self.domain_out_channels[name] = out_channels
        self.train(self.training)  # new modules follow the net's mode
        return self

    def domain_parameters(self, domain: str) -> list[nn.Parameter]:
        """The weights that belong to one domain (depthwise filters, norms, input adapter, heads)."""
        domain = self._resolve(domain)
        dicts = [m for m in self.modules() if isinstance(m, PerDomain)]
        dicts += [self.input_adapters, self.heads] + list(self.aux_heads.values()) + list(self.side_heads.values())
        return [p for m in dicts for p in m[domain].parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The weights shared by all domains (pointwise filters, stride-2 convolutions)."""
        own = {id(p) for d in self.domains for p in self.domain_parameters(d)}
        return [p for p in self.parameters() if id(p) not in own]

    # --- forward ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, domain: str | None = None) -> Any:  # type: ignore[override]
        return super().forward(x, domain=self._resolve(domain))

    def _forward(self, x: torch.Tensor, domain: str = "default", **_: Any) -> Any:
        if not torch.jit.is_tracing() and x.shape[1] != self.domain_in_channels[domain]:
            raise ValueError(f"domain {domain!r} expects {self.domain_in_channels[domain]} input channels, "
                             f"got {x.shape[1]}")
        summed = self.side_outputs == "sum" and bool(self.ds_levels)
        listed = self.side_outputs == "list" and bool(self.ds_levels) and self.training
        n_levels = max(self.ds_levels) + 1 if (summed or listed) else 1
        feats = self.decoder(self.encoder(self.input_adapters[domain](x), domain), domain, levels=n_levels)
        out = self.heads[domain](feats[0])
        if summed:
            side = None
            for i in sorted(self.ds_levels, reverse=True):
                s = self.side_heads[f"level{i}"][domain](feats[i])
                side = F.interpolate(s if side is None else s + side, scale_factor=2.0, mode="nearest")
            return out + side
        if listed:
            return [out] + [F.interpolate(self.aux_heads[f"level{i}"][domain](feats[i]), scale_factor=2.0 ** i,
                                          mode="nearest") for i in self.ds_levels]
        return out
