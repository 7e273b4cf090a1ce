"""Tests of u2net3d, unetpp, multiresunet and the model summary table."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from medseg3d.models import MODELS, build_model
from medseg3d.models.multiresunet import MultiResUNet, multires_widths
from medseg3d.models.summary import format_table, measure, model_table
from medseg3d.models.u2net3d import DomainSeparableConv, U2Net3D, _Down
from medseg3d.models.unetpp import UNetPlusPlus

ODD3 = (37, 41, 29)
ODD2 = (37, 41)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def small(name: str, spatial_dims: int, cin: int, cout: int, **kw):
    """A small instance of each net (for speed)."""
    if name == "u2net3d":
        return U2Net3D(spatial_dims, cin, cout, base_filters=4, **kw)
    if name == "unetpp":
        return UNetPlusPlus(spatial_dims, cin, cout, base_filters=4, **kw)
    return MultiResUNet(spatial_dims, cin, cout, base_filters=8, **kw)


CASES = [("u2net3d", 3), ("unetpp", 2), ("unetpp", 3), ("multiresunet", 2), ("multiresunet", 3)]


# --------------------------------------------------------------------------------------------------- registry
def test_registered():
    for name, cls in [("u2net3d", U2Net3D), ("unetpp", UNetPlusPlus), ("multiresunet", MultiResUNet)]:
        assert MODELS.get(name) is cls
        assert cls.paper and cls.dims
        assert isinstance(build_model(name, 3, 1, 2), cls)


# --------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name,sd", CASES)
def test_shapes_odd_sizes(name, sd):
    torch.manual_seed(0)
    size = ODD3 if sd == 3 else ODD2
    m = small(name, sd, 2, 3)
    x = torch.randn(2, 2, *size)
    m.train()
    out = m(x)
    outs = out if isinstance(out, list) else [out]
    for o in outs:
        assert o.shape == (2, 3, *size)
    if name == "unetpp":
        assert isinstance(out, list) and len(out) == 4
    m.eval()
    with torch.no_grad():
        y = m(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *size)


def test_u2net3d_is_3d_only():
    with pytest.raises(ValueError, match="spatial_dims"):
        U2Net3D(2, 1, 2)


def test_u2net3d_deep_supervision_shapes():
    m = U2Net3D(3, 1, 2, base_filters=4, deep_supervision=True)
    x = torch.randn(1, 1, *ODD3)
    out = m(x)
    assert isinstance(out, list) and len(out) == 3 and all(o.shape == (1, 2, *ODD3) for o in out)
    m.eval()
    assert m(x).shape == (1, 2, *ODD3)


def test_unetpp_deep_supervision_order_and_pruning():
    """Training returns [X(0,4), X(0,3), X(0,2), X(0,1)]; eval pruned to L returns the X(0,L) head."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    m = UNetPlusPlus(2, 1, 2, base_filters=4, norm="instance")  # no running stats: train == eval numerics
    outs = m.train()(x)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), outs[0], atol=1e-5)  # unpruned eval = the main (first) output
        for L in (1, 2, 3, 4):
            m.prune(L)
            assert torch.allclose(m(x), outs[4 - L], atol=1e-5)
    assert m.prune(2).inference_depth == 2


def test_unetpp_pruned_runs_fewer_nodes():
    from torch.utils.flop_counter import FlopCounterMode

    m = UNetPlusPlus(2, 1, 2, base_filters=4).eval()
    x = torch.randn(1, 1, 32, 32)
    flops = []
    for L in (1, 2, 3, 4):
        m.prune(L)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(x)
        flops.append(fc.get_total_flops())
    assert flops == sorted(flops) and len(set(flops)) == 4


def test_unetpp_no_deep_supervision():
    m = UNetPlusPlus(2, 1, 2, base_filters=4, deep_supervision=False)
    assert list(m.heads) == ["0_4"]
    out = m(torch.randn(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="deep_supervision"):
        m.prune(2)


# --------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name,sd", CASES)
def test_every_parameter_gets_a_gradient(name, sd):
    torch.manual_seed(0)
    size = (20, 19, 17) if sd == 3 else (33, 30)
    kw = {"deep_supervision": True} if name == "u2net3d" else {}
    m = small(name, sd, 2, 3, **kw).train()
    out = m(torch.randn(2, 2, *size))
    outs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    dead = [n for n, p in m.named_parameters() if p.grad.abs().sum() == 0]
    assert not dead, dead


def _u2_two_domains():
    return U2Net3D(3, {"ct": 1, "mr": 2}, {"ct": 2, "mr": 4}, domains=("ct", "mr"), base_filters=4, levels=4)


def test_u2net3d_domains_are_kept_apart():
    torch.manual_seed(0)
    m = _u2_two_domains().train()
    out = m(torch.randn(2, 1, 16, 16, 16), domain="ct")
    assert out.shape == (2, 2, 16, 16, 16)
    out.square().mean().backward()
    ct, mr, shared = m.domain_parameters("ct"), m.domain_parameters("mr"), m.shared_parameters()
    assert {id(p) for p in ct}.isdisjoint({id(p) for p in mr})
    assert len(ct) + len(mr) + len(shared) == len(list(m.parameters()))
    assert all(p.grad is None for p in mr), "domain 'mr' got gradients from a 'ct' batch"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ct + shared)
    # explicitly: the other domain's depthwise filters and norms
    for mod in m.modules():
        if isinstance(mod, DomainSeparableConv):
            assert mod.depthwise["mr"].weight.grad is None and mod.dw_norm["mr"].weight.grad is None
            assert mod.pw_norm["mr"].weight.grad is None
            assert mod.depthwise["ct"].weight.grad is not None and mod.pointwise.weight.grad is not None
    # the default domain is the first; an unknown one lists the valid names
    assert m(torch.randn(1, 1, 16, 16, 16)).shape[1] == 2
    assert m(torch.randn(1, 2, 16, 16, 16), "mr").shape[1] == 4
    with pytest.raises(ValueError, match="ct, mr"):
        m(torch.randn(1, 1, 16, 16, 16), domain="pet")
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(1, 1, 16, 16, 16), domain="mr")


def test_u2net3d_add_domain_adds_no_pointwise_parameters():
    m = U2Net3D(3, 4, 4)  # paper defaults: 16 filters, 5 levels
    pointwise_before = {n: p for n, p in m.named_parameters() if "pointwise" in n}
    shared_before = sum(p.numel() for p in m.shared_parameters())
    before = n_params(m)
    m.add_domain("liver", in_channels=1, out_channels=3)
    growth = n_params(m) - before

    seps = [mod for mod in m.modules() if isinstance(mod, DomainSeparableConv)]
    downs = [mod for mod in m.modules() if isinstance(mod, _Down)]
    # paper: a separable layer costs 27·c_in per domain; + affine instance norms (2 per channel) after the
    # depthwise (c_in) and the pointwise (c_out) filters
    expected = sum(27 * s.in_ch + 2 * s.in_ch + 2 * s.out_ch for s in seps)
    expected += sum(2 * d.conv.out_channels for d in downs)  # per-domain norm after the shared stride-2 conv
    expected += 27 * 1 * 16 + 2 * 16  # input adapter: 3³ conv 1 -> 16 (no bias, a norm follows) + norm
    expected += 16 * 3 + 3  # 1³ head 16 -> 3 with bias
    assert growth == expected
    assert sum(p.numel() for p in m.shared_parameters()) == shared_before
    after = {n: p for n, p in m.named_parameters() if "pointwise" in n}
    assert after.keys() == pointwise_before.keys() and all(after[n] is pointwise_before[n] for n in after)
    # the paper's per-layer weight count with T domains: 27·c_in·T + c_in·c_out
    for s in seps:
        conv_weights = sum(dw.weight.numel() for dw in s.depthwise.values()) + s.pointwise.weight.numel()
        assert conv_weights == 27 * s.in_ch * 2 + s.in_ch * s.out_ch
    assert m(torch.randn(1, 1, 32, 32, 32), domain="liver").shape == (1, 3, 32, 32, 32)
    with pytest.raises(ValueError, match="name"):
        m.add_domain("liver", 1, 2)
    with pytest.raises(ValueError, match="out_channels"):
        m.add_domain("lung", 1, 0)


def test_u2net3d_add_domain_then_state_dict_round_trip():
    m = _u2_two_domains()
    m.add_domain("pet", 1, 2)
    m2 = U2Net3D(3, {"ct": 1, "mr": 2, "pet": 1}, {"ct": 2, "mr": 4, "pet": 2}, domains=("ct", "mr", "pet"),
                 base_filters=4, levels=4)
    m2.load_state_dict(m.state_dict())  # same keys and shapes as a net built with three domains
    m.eval(), m2.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.allclose(m(x, "pet"), m2(x, "pet"))


# --------------------------------------------------------------------------------------------------- bad args
BAD = [
    (U2Net3D, (3, 1, 2), {"base_filters": 0}, "base_filters"),
    (U2Net3D, (3, 1, 2), {"levels": 1}, "levels"),
    (U2Net3D, (3, 1, 2), {"domains": ()}, "domains"),
    (U2Net3D, (3, 1, 2), {"domains": ("a", "a")}, "domains"),
    (U2Net3D, (3, 1, 2), {"domains": ("a b",)}, "domains"),
    (U2Net3D, (3, {"x": 1}, 2), {"domains": ("a",)}, "in_channels"),
    (U2Net3D, (3, 1, {"a": 0}), {"domains": ("a",)}, "out_channels"),
    (U2Net3D, (4, 1, 2), {}, "spatial_dims"),
    (UNetPlusPlus, (2, 0, 2), {}, "in_channels"),
    (UNetPlusPlus, (2, 1, 2), {"depth": 0}, "depth"),
    (UNetPlusPlus, (2, 1, 2), {"base_filters": 2.5}, "base_filters"),
    (UNetPlusPlus, (2, 1, 2), {"inference_depth": 5}, "inference_depth"),
    (UNetPlusPlus, (2, 1, 2), {"up_mode": "cubic"}, "up_mode"),
    (UNetPlusPlus, (1, 1, 2), {}, "spatial_dims"),
    (MultiResUNet, (2, 1, -1), {}, "out_channels"),
    (MultiResUNet, (2, 1, 2), {"alpha": 0}, "alpha"),
    (MultiResUNet, (2, 1, 2), {"depth": True}, "depth"),
    (MultiResUNet, (2, 1, 2), {"base_filters": 1}, "base_filters"),
    (MultiResUNet, (2, 1, 2), {"up_mode": "bogus"}, "up_mode"),
]


@pytest.mark.parametrize("cls,args,kw,arg", BAD, ids=[f"{c.__name__}-{a}" for c, _, _, a in BAD])
def test_bad_arguments(cls, args, kw, arg):
    with pytest.raises(ValueError, match=arg):
        cls(*args, **kw)


def test_bad_input_rank():
    with pytest.raises(ValueError, match="input"):
        UNetPlusPlus(2, 1, 2, base_filters=4)(torch.randn(1, 1, 8, 8, 8))


# --------------------------------------------------------------------------------------------------- export
def _export_round_trip(m, x, **kw):
    m.eval()
    ep = torch.export.export(m, (x,), kwargs=kw or None)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    with torch.no_grad():
        assert torch.allclose(loaded(x, **kw), m(x, **kw), atol=1e-5)


def test_torchscript_not_supported_reason():
    """TorchScript cannot compile any SegNet (base.py: PEP 604 class annotations and ``forward(**kwargs)``);
    torch.export is the supported route (tested below)."""
    with pytest.raises(Exception):
        torch.jit.script(UNetPlusPlus(2, 1, 2, base_filters=4))


def test_export_unetpp_pruned():
    _export_round_trip(UNetPlusPlus(2, 1, 2, base_filters=4, inference_depth=3), torch.randn(1, 1, *ODD2))


@pytest.mark.slow
def test_export_u2net3d_domain():
    _export_round_trip(_u2_two_domains(), torch.randn(1, 2, 20, 17, 16), domain="mr")


@pytest.mark.slow
@pytest.mark.parametrize("sd", [2, 3])
def test_export_multiresunet(sd):
    size = (19, 21, 17) if sd == 3 else ODD2
    _export_round_trip(MultiResUNet(sd, 1, 2, base_filters=8), torch.randn(1, 1, *size))


@pytest.mark.slow
def test_export_unetpp_3d():
    _export_round_trip(UNetPlusPlus(3, 1, 2, base_filters=4), torch.randn(1, 1, *ODD3))


# --------------------------------------------------------------------------------------------------- parameter counts
def _meta(cls, *args, **kw):
    with torch.device("meta"):
        return cls(*args, **kw)


def _conv(ci, co, k, d, bias=False):
    return ci * co * k**d + (co if bias else 0)


def derived_u2net3d(cin=4, cout=4, base=16, levels=5):
    sep = lambda ci, co: 27 * ci + 2 * ci + ci * co + 2 * co  # noqa: E731 - dw + IN + pw + IN
    ch = [base * 2**i for i in range(levels)]
    total = _conv(cin, base, 3, 3) + 2 * base  # input adapter
    total += sum(2 * sep(c, c) for c in ch)  # residual units
    total += sum(_conv(ch[i], ch[i + 1], 3, 3) + 2 * ch[i + 1] for i in range(levels - 1))  # stride-2 convs
    total += sum(sep(ch[i + 1], ch[i]) + sep(2 * ch[i], ch[i]) + sep(ch[i], ch[i]) for i in range(levels - 1))
    return total + _conv(base, cout, 1, 3, bias=True)


def derived_unetpp(d, cin, cout, base=32, depth=4):
    f = [base * 2**i for i in range(depth + 1)]
    node = lambda ci, c: _conv(ci, c, 3, d) + 2 * c + _conv(c, c, 3, d) + 2 * c  # noqa: E731 - two conv+BN
    total = sum(node(cin if i == 0 else f[i - 1], f[i]) for i in range(depth + 1))
    for j in range(1, depth + 1):
        for i in range(depth + 1 - j):
            total += _conv(f[i + 1], f[i], 2, d, bias=True) + node(f[i] * (j + 1), f[i])
    return total + depth * _conv(f[0], cout, 1, d, bias=True)


def derived_multiresunet(d, cin, cout, base=32, depth=4):
    cbn = lambda ci, co, k: _conv(ci, co, k, d) + 2 * co  # noqa: E731
    us = [base * 2**i for i in range(depth + 1)]

    def mrb(ci, u):
        w1, w2, w3 = multires_widths(u)
        w = w1 + w2 + w3
        return cbn(ci, w1, 3) + cbn(w1, w2, 3) + cbn(w2, w3, 3) + 2 * w + cbn(ci, w, 1) + 2 * w, w

    total, ch = 0, cin
    for i, u in enumerate(us):
        p, ch = mrb(ch, u)
        total += p
        if i < depth:  # res path of length depth-i
            c = ch
            for _ in range(depth - i):
                total += cbn(c, u, 3) + cbn(c, u, 1) + 2 * u
                c = u
    for i in reversed(range(depth)):
        total += _conv(ch, us[i], 2, d, bias=True)
        p, ch = mrb(2 * us[i], us[i])
        total += p
    return total + _conv(ch, cout, 1, d, bias=True)


def test_parameter_counts_paper_defaults():
    assert n_params(_meta(U2Net3D, 3, 4, 4)) == derived_u2net3d() == 1_528_212
    assert n_params(_meta(UNetPlusPlus, 2, 1, 2)) == derived_unetpp(2, 1, 2) == 9_045_480
    assert n_params(_meta(UNetPlusPlus, 3, 4, 4)) == derived_unetpp(3, 4, 4) == 26_205_008
    assert n_params(_meta(MultiResUNet, 2, 1, 2)) == derived_multiresunet(2, 1, 2) == 7_251_159
    assert n_params(_meta(MultiResUNet, 3, 4, 4)) == derived_multiresunet(3, 4, 4) == 18_657_714
    # a U2Net3D domain vs its shared part
    m = _meta(U2Net3D, 3, 4, 4)
    assert sum(p.numel() for p in m.domain_parameters("default")) == 69_780
    assert sum(p.numel() for p in m.shared_parameters()) == 1_458_432


def test_multires_widths_follow_the_paper():
    assert [sum(multires_widths(u)) for u in (32, 64, 128, 256, 512)] == [51, 105, 212, 426, 854]
    assert multires_widths(512) == (142, 285, 427)  # the authors' code (int(W*0.333)) gives 284 here


def test_unetpp_vs_monai_basicunetplusplus():
    """Ours vs MONAI's BasicUNetPlusPlus set to the paper's filters, BN, ReLU, no bias.

    The only structural difference: MONAI's up-sampling into level 0 keeps 64 channels (``halves=False``) where
    ours (the authors' Keras code) maps to f[0] = 32, so MONAI's four level-0 nodes have a bigger transposed
    conv and 32 more input channels in their first conv. MONAI's deep-supervision list is also shallowest-first
    ([X01, X02, X03, X04]) and it returns a list even without deep supervision.
    """
    from monai.networks.nets import BasicUNetPlusPlus

    for d, cin, cout in ((2, 1, 2), (3, 4, 4)):
        with torch.device("meta"):
            monai = BasicUNetPlusPlus(d, cin, cout, features=(32, 64, 128, 256, 512, 32), norm="batch",
                                      act="relu", bias=False, deep_supervision=True)
            ours = UNetPlusPlus(d, cin, cout)
        per_node = (_conv(64, 64, 2, d, True) - _conv(64, 32, 2, d, True)) + _conv(32, 32, 3, d)
        assert n_params(monai) - n_params(ours) == 4 * per_node
        assert (n_params(ours), n_params(monai)) == {2: (9_045_480, 9_115_240), 3: (26_205_008, 26_381_264)}[d]
    # same output shapes (on a size MONAI accepts), reversed order of the heads
    torch.manual_seed(0)
    monai = BasicUNetPlusPlus(2, 1, 2, features=(4, 8, 16, 32, 64, 4), norm="batch", act="relu", bias=False,
                              deep_supervision=True)
    ours = UNetPlusPlus(2, 1, 2, base_filters=4)
    x = torch.randn(2, 1, 32, 48)
    assert [o.shape for o in monai(x)] == [o.shape for o in ours(x)] == [(2, 2, 32, 48)] * 4


# --------------------------------------------------------------------------------------------------- learning
def _blobs(n, sd, size, seed, channels=1):
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * sd, indexing="ij")
    xs, ys = [], []
    for _ in range(n):
        c = torch.rand(sd, generator=g) * (size * 0.5) + size * 0.25
        r = float(torch.rand(1, generator=g)) * size * 0.1 + size * 0.2
        mask = (sum((gr - ci) ** 2 for gr, ci in zip(grids, c)) <= r * r).float()
        img = mask * 1.5 + 0.5 * torch.randn(channels, *mask.shape, generator=g)
        xs.append(img)
        ys.append(mask.long())
    return torch.stack(xs), torch.stack(ys)


def _dice(logits, y):
    pred = logits.argmax(1)
    inter = ((pred == 1) & (y == 1)).sum().item()
    return 2 * inter / ((pred == 1).sum().item() + (y == 1).sum().item() + 1e-8)


def _soft_dice_loss(logits, y):
    p = logits.softmax(1)[:, 1]
    t = (y == 1).float()
    return 1 - 2 * (p * t).sum() / (p.sum() + t.sum() + 1e-6)


def _learn(m, sd, size, max_steps, forward=lambda m, x: m(x), channels=1, lr=1e-2):
    torch.manual_seed(0)
    x, y = _blobs(4, sd, size, seed=1, channels=channels)
    xv, yv = _blobs(2, sd, size, seed=2, channels=channels)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    best = 0.0
    for step in range(1, max_steps + 1):
        m.train()
        out = forward(m, x)
        outs = out if isinstance(out, list) else [out]
        loss = sum(F.cross_entropy(o, y) + _soft_dice_loss(o, y) for o in outs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0:
            m.eval()
            with torch.no_grad():
                best = max(best, _dice(forward(m, xv), yv))
            if best > 0.9:
                return step, best
    return max_steps, best


def test_learns_blob_u2net3d():
    torch.manual_seed(0)
    m = U2Net3D(3, 1, 2, base_filters=8, levels=2)
    step, dice = _learn(m, 3, 16, 60)
    assert dice > 0.9, (step, dice)


def test_learns_blob_unetpp():
    torch.manual_seed(0)
    m = UNetPlusPlus(2, 1, 2, base_filters=4, depth=3, norm="instance")
    step, dice = _learn(m, 2, 32, 150)
    assert dice > 0.9, (step, dice)


def test_learns_blob_multiresunet():
    torch.manual_seed(0)
    m = MultiResUNet(2, 1, 2, base_filters=8, depth=3, norm="instance")
    step, dice = _learn(m, 2, 32, 150)
    assert dice > 0.9, (step, dice)


@pytest.mark.slow
def test_learns_blob_u2net3d_two_domains():
    """Two domains (1-channel bright blobs, 2-channel dark blobs) trained alternately share the pointwise
    filters; each reaches Dice > 0.9 on held-out samples."""
    torch.manual_seed(0)
    m = U2Net3D(3, {"a": 1, "b": 2}, 2, domains=("a", "b"), base_filters=8, levels=3)
    xa, ya = _blobs(4, 3, 16, seed=1)
    xb, yb = _blobs(4, 3, 16, seed=3, channels=2)
    xva, yva = _blobs(2, 3, 16, seed=5)
    xvb, yvb = _blobs(2, 3, 16, seed=6, channels=2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    dice = (0.0, 0.0)
    for step in range(1, 81):
        m.train()
        for dom, x, y in (("a", xa, ya), ("b", -xb, yb)):
            out = m(x, domain=dom)
            loss = F.cross_entropy(out, y) + _soft_dice_loss(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step % 5 == 0:
            m.eval()
            with torch.no_grad():
                dice = (_dice(m(xva, "a"), yva), _dice(m(-xvb, "b"), yvb))
            if min(dice) > 0.9:
                break
    assert min(dice) > 0.9, (step, dice)


@pytest.mark.slow
@pytest.mark.parametrize("sd,size", [(3, 16)])
def test_learns_blob_3d_batchnorm_defaults(sd, size):
    """UNet++ and MultiResUNet in 3D with their default batch norm."""
    torch.manual_seed(0)
    for m in (UNetPlusPlus(sd, 1, 2, base_filters=4, depth=2), MultiResUNet(sd, 1, 2, base_filters=8, depth=2)):
        step, dice = _learn(m, sd, size, 200)
        assert dice > 0.9, (type(m).__name__, step, dice)


# --------------------------------------------------------------------------------------------------- summary
@pytest.fixture(scope="module")
def table():
    return model_table()


def test_summary_lists_every_registered_model(table):
    assert [r["name"] for r in table] == MODELS.names()
    assert all(not r.get("error") for r in table), [r for r in table if r.get("error")]
    row = {r["name"]: r for r in table}
    assert row["u2net3d"]["dims"] == "3D" and row["unetpp"]["dims"] == "2D/3D"
    assert row["unetpp"]["spatial_dims"] == 3 and row["unetpp"]["in_channels"] == 4


def test_summary_parameters_and_flops(table):
    for r in table:
        cls = MODELS.get(r["name"])
        with torch.device("meta"):
            m = cls(r["spatial_dims"], r["in_channels"], r["out_channels"], **r.get("kwargs", {}))
        assert r["parameters"] == sum(p.numel() for p in m.parameters()), r["name"]
        assert r["gflops"] > 0, r["name"]
    smaller = {r["name"]: r for r in model_table(size=64)}
    for r in table:
        assert smaller[r["name"]]["gflops"] < r["gflops"], r["name"]
    text = format_table(table)
    assert text.count("\n") == len(table) + 1 and all(r["name"] in text for r in table)


def test_summary_filter_and_flop_fallback():
    rows = model_table(2)
    assert {"unetpp", "multiresunet"} <= {r["name"] for r in rows} and "u2net3d" not in {r["name"] for r in rows}
    assert all(r["spatial_dims"] == 2 and r["in_channels"] == 1 and r["out_channels"] == 2 for r in rows)
    with pytest.raises(ValueError, match="spatial_dims_filter"):
        model_table(4)

    class NoMeta(UNetPlusPlus):  # not registered: an op that cannot run on the meta device
        def _forward(self, x, **kw):
            if x.device.type == "meta":
                raise NotImplementedError("no meta kernel")
            return super()._forward(x, **kw)

    def make(sd, cin, cout):
        return NoMeta(sd, cin, cout, base_filters=4, depth=2)

    make.dims = (2, 3)
    r = measure(make, 3, size=64)
    assert r["flops_method"].startswith("cpu")
    ref = measure(lambda sd, i, o: UNetPlusPlus(sd, i, o, base_filters=4, depth=2), 3, size=64)
    assert ref["flops_method"] == "meta" and r["gflops"] == pytest.approx(ref["gflops"], rel=1e-6)


def test_u2net3d_add_domain_follows_eval_mode():
    m = _u2_two_domains().eval()
    m.add_domain("us", 1, 2)
    assert not any(mod.training for mod in m.modules())
