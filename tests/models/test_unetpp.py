"""UNet++ (Zhou 2018): deep-supervision order, the accurate and fast inference modes, pruning, the authors'
units and their 9,041,601-parameter 2D Nest_Net, MONAI's BasicUNetPlusPlus side by side, export, learning."""

from __future__ import annotations

import pytest
import torch

from medseg3d.models.unetpp import UNetPlusPlus
from model_cases import ODD2, ODD3, conv_p, export_round_trip, fit, meta_params, n_params


def test_deep_supervision_order_and_the_two_inference_modes():
    """Training returns [X(0,4), X(0,3), X(0,2), X(0,1)]; eval in accurate mode returns their mean, in fast
    mode pruned to L the X(0,L) head."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    m = UNetPlusPlus(2, 1, 2, base_filters=4, norm="instance")  # no running stats: train == eval numerics
    outs = m.train()(x)
    assert len(outs) == 4
    m.eval()
    with torch.no_grad():
        assert m.inference_mode == "accurate"
        assert torch.allclose(m(x), torch.stack(outs).mean(0), atol=1e-5)  # all four heads averaged
        m.set_inference("accurate", 2)
        assert torch.allclose(m(x), (outs[3] + outs[2]) / 2, atol=1e-5)  # the heads of X(0,1), X(0,2)
        m.set_inference("fast", 4)
        assert torch.allclose(m(x), outs[0], atol=1e-5)  # unpruned fast = the main (first) output
        for L in (1, 2, 3, 4):
            m.prune(L)
            assert torch.allclose(m(x), outs[4 - L], atol=1e-5)
    assert m.prune(2).inference_depth == 2 and m.inference_mode == "fast"
    built = UNetPlusPlus(2, 1, 2, base_filters=4, inference_mode="fast", inference_depth=3)
    assert (built.inference_mode, built.inference_depth) == ("fast", 3)


def test_pruned_runs_fewer_nodes():
    from torch.utils.flop_counter import FlopCounterMode

    m = UNetPlusPlus(2, 1, 2, base_filters=4).eval()
    x = torch.randn(1, 1, 32, 32)

    def flops():
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(x)
        return fc.get_total_flops()

    pruned = []
    for L in (1, 2, 3, 4):
        m.prune(L)
        pruned.append(flops())
    assert pruned == sorted(pruned) and len(set(pruned)) == 4
    m.set_inference("accurate", 4)
    assert flops() > pruned[-1]  # every node plus the three other heads


def test_no_deep_supervision():
    m = UNetPlusPlus(2, 1, 2, base_filters=4, deep_supervision=False)
    assert list(m.heads) == ["0_4"]
    out = m(torch.randn(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="deep_supervision"):
        m.prune(2)
    x = torch.randn(1, 1, 32, 32)
    m.eval()
    with torch.no_grad():  # one head: both modes return it
        assert torch.equal(m(x), m.set_inference("fast")(x))


# --------------------------------------------------------------------------------------------------- counts
def derived_unetpp(d, cin, cout, base=32, depth=4, norm=True, heads=None):
    f = [base * 2 ** i for i in range(depth + 1)]
    if norm:  # two conv (no bias) + BN
        node = lambda ci, c: conv_p(ci, c, 3, d, False) + 2 * c + conv_p(c, c, 3, d, False) + 2 * c  # noqa: E731
    else:  # two conv with bias
        node = lambda ci, c: conv_p(ci, c, 3, d) + conv_p(c, c, 3, d)  # noqa: E731
    total = sum(node(cin if i == 0 else f[i - 1], f[i]) for i in range(depth + 1))
    for j in range(1, depth + 1):
        for i in range(depth + 1 - j):
            total += conv_p(f[i + 1], f[i], 2, d, bias=True) + node(f[i] * (j + 1), f[i])
    return total + (depth if heads is None else heads) * conv_p(f[0], cout, 1, d, bias=True)


def test_parameter_counts():
    assert meta_params(UNetPlusPlus, 2, 1, 2) == derived_unetpp(2, 1, 2) == 9_045_480
    assert meta_params(UNetPlusPlus, 3, 4, 4) == derived_unetpp(3, 4, 4) == 26_205_008
    # the authors' Keras Nest_Net (model.py: "Total params: 9,041,601"): 1 in, 1 sigmoid out, no deep
    # supervision, biased convs without norm
    nest_net = derived_unetpp(2, 1, 1, norm=False, heads=1)
    assert nest_net == 9_041_601
    assert meta_params(UNetPlusPlus, 2, 1, 1, unit="zhou2018", deep_supervision=False) == nest_net
    assert meta_params(UNetPlusPlus, 2, 1, 1, norm=None, deep_supervision=False) == nest_net
    # with deep supervision, three more 32→1 heads
    assert meta_params(UNetPlusPlus, 2, 1, 1, unit="zhou2018") == nest_net + 3 * 33


def test_zhou2018_units():
    """The authors' standard_unit: conv (bias) → ELU → dropout 0.5, twice; no norm."""
    m = UNetPlusPlus(2, 1, 2, base_filters=4, unit="zhou2018")
    node = m.nodes["1_2"]
    kinds = [type(layer).__name__ for layer in node]
    assert kinds == ["Conv2d", "ELU", "Dropout", "Conv2d", "ELU", "Dropout"]
    assert node[0].bias is not None and node[2].p == 0.5
    assert not any("Norm" in type(mod).__name__ for mod in m.modules())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        m.eval()
        assert torch.equal(m(x), m(x))  # no dropout in eval
        m.train()
        a, b = m(x), m(x)
    assert not torch.equal(a[0], b[0])  # dropout in training


def test_vs_monai_basicunetplusplus():
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
        per_node = (conv_p(64, 64, 2, d, True) - conv_p(64, 32, 2, d, True)) + conv_p(32, 32, 3, d, False)
        assert n_params(monai) - n_params(ours) == 4 * per_node
        assert (n_params(ours), n_params(monai)) == {2: (9_045_480, 9_115_240), 3: (26_205_008, 26_381_264)}[d]
    # same output shapes (on a size MONAI accepts), reversed order of the heads
    torch.manual_seed(0)
    monai = BasicUNetPlusPlus(2, 1, 2, features=(4, 8, 16, 32, 64, 4), norm="batch", act="relu", bias=False,
                              deep_supervision=True)
    ours = UNetPlusPlus(2, 1, 2, base_filters=4)
    x = torch.randn(2, 1, 32, 48)
    assert [o.shape for o in monai(x)] == [o.shape for o in ours(x)] == [(2, 2, 32, 48)] * 4


# --------------------------------------------------------------------------------------------------- export
def test_export_pruned():
    export_round_trip(UNetPlusPlus(2, 1, 2, base_filters=4).prune(3), torch.randn(1, 1, *ODD2))


@pytest.mark.slow
def test_export_3d_accurate():
    export_round_trip(UNetPlusPlus(3, 1, 2, base_filters=4), torch.randn(1, 1, *ODD3))


# --------------------------------------------------------------------------------------------------- learning
def test_learns_a_blob():
    torch.manual_seed(0)
    m = UNetPlusPlus(2, 1, 2, base_filters=4, depth=3, norm="instance")
    step, dice = fit(m, 2, 32, 150)
    assert dice > 0.9, (step, dice)


@pytest.mark.slow
def test_learns_a_blob_3d_batchnorm_defaults():
    torch.manual_seed(0)
    m = UNetPlusPlus(3, 1, 2, base_filters=4, depth=2)
    step, dice = fit(m, 3, 16, 200)
    assert dice > 0.9, (step, dice)
