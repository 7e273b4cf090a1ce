"""3D U²-Net (Huang 2019): domains kept apart, adding a domain, the summed side outputs of the authors' code,
parameter counts layer by layer, the fraction of five independent models' parameters, export, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg3d.models.u2net3d import DomainConv, DomainSeparableConv, U2Net3D, _Down
from model_cases import centred_blobs, argmax_dice, export_round_trip, fit, meta_params, n_params, soft_dice_loss


def two_domains(**kw):
    return U2Net3D(3, {"ct": 1, "mr": 2}, {"ct": 2, "mr": 4}, domains=("ct", "mr"), base_filters=4, levels=4, **kw)


def test_defaults_are_the_authors_universal_model():
    m = U2Net3D(3, 4, 4, base_filters=2)
    assert m.chans == [2, 4, 8, 16, 32, 64] and m.divisor == 32  # 6 levels: 16 … 512 with 16 filters
    assert m.deep_supervision and m.side_outputs == "sum" and m.adapter == "separable"
    assert list(m.side_heads) == ["level1", "level2"] and not m.aux_heads
    assert U2Net3D(3, 4, 4, levels=5).encoder.channels == [16, 32, 64, 128, 256]  # the paper's figure


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_domains_are_kept_apart(deep_supervision):
    torch.manual_seed(0)
    m = two_domains(deep_supervision=deep_supervision).train()
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


def test_side_outputs_are_summed_into_the_logits():
    """The authors' DeepSupervision: s2 = up(act(norm(conv(d2)))), s1 = up(act(norm(conv(d1))) + s2),
    logits = head(d0) + s1, in training and in inference."""
    torch.manual_seed(0)
    m = two_domains().eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        feats = m.decoder(m.encoder(m.input_adapters["mr"](x), "mr"), "mr", levels=3)
        up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
        s2 = up(m.side_heads["level2"]["mr"](feats[2]))
        s1 = up(m.side_heads["level1"]["mr"](feats[1]) + s2)
        expected = m.heads["mr"](feats[0]) + s1
        assert s2.shape[2:] == feats[1].shape[2:] and s1.shape[2:] == feats[0].shape[2:]
        assert torch.allclose(m(x, "mr"), expected, atol=1e-6)
        assert not torch.allclose(m(x, "mr"), m.heads["mr"](feats[0]))
        train_out = m.train()(x, "mr")
    assert isinstance(train_out, torch.Tensor) and torch.allclose(train_out, expected, atol=1e-5)
    side = m.side_heads["level1"]["mr"]
    assert [type(layer).__name__ for layer in side] == ["Conv3d", "InstanceNorm3d", "LeakyReLU"]


def domain_cost(m: U2Net3D, in_ch: int, out_ch: int) -> int:
    """What one more domain costs, from the paper's formula: a separable layer costs 27·c_in per domain, + affine
    instance norms (2 per channel) after the depthwise (c_in) and the pointwise (c_out) filters."""
    seps = [mod for mod in m.modules() if isinstance(mod, DomainSeparableConv)]
    downs = [mod for mod in m.modules() if isinstance(mod, _Down)]
    cost = sum(27 * s.in_ch + 2 * s.in_ch + 2 * s.out_ch for s in seps)
    cost += sum(2 * d.conv.out_channels for d in downs)  # per-domain norm after the shared stride-2 conv
    cost += 27 * in_ch * 16 + 2 * 16  # input adapter: 3³ conv in -> 16 (no bias, a norm follows) + norm
    cost += 16 * out_ch + out_ch  # 1³ head 16 -> out with bias
    # side outputs (the default): 1³ conv with bias + affine IN on decoder levels 1 and 2
    return cost + sum(m.chans[i] * out_ch + out_ch + 2 * out_ch for i in m.ds_levels)


def test_add_domain_adds_no_pointwise_parameters():
    m = U2Net3D(3, 4, 4, levels=5, deep_supervision=False)  # the paper figure's net: 16 filters, 5 levels
    pointwise_before = {n: p for n, p in m.named_parameters() if "pointwise" in n}
    shared_before = sum(p.numel() for p in m.shared_parameters())
    before = n_params(m)
    m.add_domain("liver", in_channels=1, out_channels=3)
    assert n_params(m) - before == domain_cost(m, 1, 3)
    assert sum(p.numel() for p in m.shared_parameters()) == shared_before
    after = {n: p for n, p in m.named_parameters() if "pointwise" in n}
    assert after.keys() == pointwise_before.keys() and all(after[n] is pointwise_before[n] for n in after)
    # the paper's per-layer weight count with T domains: 27·c_in·T + c_in·c_out
    for s in (mod for mod in m.modules() if isinstance(mod, DomainSeparableConv)):
        conv_weights = sum(dw.weight.numel() for dw in s.depthwise.values()) + s.pointwise.weight.numel()
        assert conv_weights == 27 * s.in_ch * 2 + s.in_ch * s.out_ch
    assert m(torch.randn(1, 1, 32, 32, 32), domain="liver").shape == (1, 3, 32, 32, 32)
    with pytest.raises(ValueError, match="name"):
        m.add_domain("liver", 1, 2)
    with pytest.raises(ValueError, match="out_channels"):
        m.add_domain("lung", 1, 0)
    # with the defaults (6 levels) a domain also gets side outputs on decoder levels 1 and 2
    d = U2Net3D(3, 4, 4)
    before = n_params(d)
    d.add_domain("liver", 1, 3)
    assert n_params(d) - before == domain_cost(d, 1, 3)
    assert d.side_heads["level2"]["liver"][0].in_channels == 64


def test_add_domain_then_state_dict_round_trip():
    m = two_domains()
    m.add_domain("pet", 1, 2)
    m2 = U2Net3D(3, {"ct": 1, "mr": 2, "pet": 1}, {"ct": 2, "mr": 4, "pet": 2}, domains=("ct", "mr", "pet"),
                 base_filters=4, levels=4)
    m2.load_state_dict(m.state_dict())  # same keys and shapes as a net built with three domains
    m.eval(), m2.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.allclose(m(x, "pet"), m2(x, "pet"))


def test_add_domain_follows_eval_mode():
    m = two_domains().eval()
    m.add_domain("us", 1, 2)
    assert not any(mod.training for mod in m.modules())


def test_plain_convolutions_without_adapters():
    """adapter="none": the authors' shared model (one 3³ conv for all domains, a norm per domain; the decoder's
    second conv is 1³ as in their UpBlock)."""
    m = two_domains(adapter="none")
    assert not any(isinstance(mod, DomainSeparableConv) for mod in m.modules())
    units = [mod for mod in m.modules() if isinstance(mod, DomainConv)]
    assert {u.kernel_size for u in units} == {1, 3}
    assert all(u.kernel_size == 1 for u in (b.sep2 for b in m.decoder.blocks))
    assert all(p.grad is None for p in m.domain_parameters("mr"))
    m(torch.randn(1, 1, 16, 16, 16), "ct").sum().backward()
    assert all(p.grad is None for p in m.domain_parameters("mr"))


# --------------------------------------------------------------------------------------------------- counts
def derived_u2net3d(cin=4, cout=4, base=16, levels=5, side=False):
    sep = lambda ci, co: 27 * ci + 2 * ci + ci * co + 2 * co  # noqa: E731 - dw + IN + pw + IN
    ch = [base * 2 ** i for i in range(levels)]
    total = 27 * cin * base + 2 * base  # input adapter
    total += sum(2 * sep(c, c) for c in ch)  # residual units
    total += sum(27 * ch[i] * ch[i + 1] + 2 * ch[i + 1] for i in range(levels - 1))  # stride-2 convs
    total += sum(sep(ch[i + 1], ch[i]) + sep(2 * ch[i], ch[i]) + sep(ch[i], ch[i]) for i in range(levels - 1))
    if side:  # 1³ conv (with bias) + IN on decoder levels 1 and 2
        total += sum(ch[i] * cout + cout + 2 * cout for i in (1, 2))
    return total + base * cout + cout


def test_parameter_counts():
    assert meta_params(U2Net3D, 3, 4, 4) == derived_u2net3d(levels=6, side=True) == 5_990_956
    assert meta_params(U2Net3D, 3, 4, 4, levels=5, deep_supervision=False) == derived_u2net3d() == 1_528_212
    # a U2Net3D domain vs its shared part
    with torch.device("meta"):
        m = U2Net3D(3, 4, 4, levels=5, deep_supervision=False)
    assert sum(p.numel() for p in m.domain_parameters("default")) == 69_780
    assert sum(p.numel() for p in m.shared_parameters()) == 1_458_432


# the paper's five MSD tasks as the authors configured them: (modalities, classes with background, levels of the
# independent model: max(num_pool_per_axis) + 1)
MSD5 = {"heart": (1, 2, 6), "liver": (1, 2, 6), "hippocampus": (1, 3, 4), "prostate": (2, 3, 6),
        "pancreas": (1, 2, 6)}


def authors_count(tasks, levels, separable=True, base=16):
    """Parameters of huangmozhilv/u2net_torch's ``u2net3d`` (deep supervision and instance norm on, as in its
    config), transcribed layer by layer: every convolution has a bias; ``tasks`` = [(modalities, classes)]."""
    T = len(tasks)
    IN = lambda c: 2 * c  # noqa: E731
    conv = lambda ci, co, k: ci * co * k ** 3 + co  # noqa: E731

    def unit(ci, co, k=3):  # conv_unit: dwise (3³ + IN per task) + pwise, or a plain conv; then IN per task
        if separable:
            return T * (27 * ci + ci + IN(ci)) + conv(ci, co, 1) + T * IN(co)
        return conv(ci, co, k) + T * IN(co)

    ch = [base * 2 ** i for i in range(levels)]
    n = sum(conv(cin, base, 3) + IN(base) for cin, _ in tasks)
    for i, c in enumerate(ch):
        n += 2 * unit(c, c)
        if i < levels - 1:
            n += conv(c, 2 * c, 3) + T * IN(2 * c)
    for i in range(levels - 2, -1, -1):
        n += unit(ch[i + 1], ch[i]) + unit(2 * ch[i], ch[i]) + unit(ch[i], ch[i], k=1)
        if 0 < i < 3:
            n += sum(conv(ch[i], k, 1) + IN(k) for _, k in tasks)
    return n + sum(conv(base, k, 1) for _, k in tasks)


def test_fraction_of_independent_models():
    """The paper says about 1 %; the authors' code gives 4.9 % for its five MSD tasks, and so does this net."""
    ins = {t: v[0] for t, v in MSD5.items()}
    outs = {t: v[1] for t, v in MSD5.items()}
    universal = meta_params(U2Net3D, 3, ins, outs, domains=list(MSD5))
    independent = sum(meta_params(U2Net3D, 3, i, o, adapter="none", levels=lv) for i, o, lv in MSD5.values())
    assert (universal, independent) == (6_550_404, 134_489_588)
    assert round(100 * universal / independent, 2) == 4.87
    # the same figure from the authors' code
    authors_universal = authors_count([(i, o) for i, o, _ in MSD5.values()], 6)
    authors_independent = sum(authors_count([(i, o)], lv, separable=False) for i, o, lv in MSD5.values())
    assert (authors_universal, authors_independent) == (6_577_460, 134_508_692)
    assert round(100 * authors_universal / authors_independent, 1) == 4.9
    doc = " ".join(U2Net3D.__doc__.split())
    assert "6,550,404" in doc and "134,489,588" in doc and "4.87 %" in doc


# --------------------------------------------------------------------------------------------------- export
@pytest.mark.slow
def test_export_one_domain():
    export_round_trip(two_domains(), torch.randn(1, 2, 20, 17, 16), domain="mr")


# --------------------------------------------------------------------------------------------------- learning
def test_learns_a_blob():
    torch.manual_seed(0)
    m = U2Net3D(3, 1, 2, base_filters=8, levels=2)
    step, dice = fit(m, 3, 16, 60)
    assert dice > 0.9, (step, dice)


def test_learns_a_blob_with_summed_side_outputs():
    torch.manual_seed(0)
    m = U2Net3D(3, 1, 2, base_filters=8, levels=4)
    step, dice = fit(m, 3, 16, 60)
    assert dice > 0.9, (step, dice)


@pytest.mark.slow
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_learns_a_blob_in_two_domains(deep_supervision):
    """Two domains (1-channel bright blobs, 2-channel dark blobs) trained alternately share the pointwise
    filters; each reaches Dice > 0.9 on held-out samples."""
    torch.manual_seed(0)
    m = U2Net3D(3, {"a": 1, "b": 2}, 2, domains=("a", "b"), base_filters=8, levels=3,
                deep_supervision=deep_supervision)
    xa, ya = centred_blobs(4, 3, 16, seed=1)
    xb, yb = centred_blobs(4, 3, 16, seed=3, channels=2)
    xva, yva = centred_blobs(2, 3, 16, seed=5)
    xvb, yvb = centred_blobs(2, 3, 16, seed=6, channels=2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    dice = (0.0, 0.0)
    for step in range(1, 81):
        m.train()
        for dom, x, y in (("a", xa, ya), ("b", -xb, yb)):
            out = m(x, domain=dom)
            loss = F.cross_entropy(out, y) + soft_dice_loss(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step % 5 == 0:
            m.eval()
            with torch.no_grad():
                dice = (argmax_dice(m(xva, "a"), yva), argmax_dice(m(-xvb, "b"), yvb))
            if min(dice) > 0.9:
                break
    assert min(dice) > 0.9, (step, dice)
