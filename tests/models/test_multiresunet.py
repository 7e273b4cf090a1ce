"""MultiResUNet (Ibtehaz 2020): MultiRes block widths, parameter counts layer by layer, export, learning."""

from __future__ import annotations

import pytest
import torch

from medseg3d.models.multiresunet import MultiResUNet, multires_widths
from model_cases import ODD2, conv_p, export_round_trip, fit, meta_params


def derived_multiresunet(d, cin, cout, base=32, depth=4):
    cbn = lambda ci, co, k: conv_p(ci, co, k, d, False) + 2 * co  # noqa: E731
    us = [base * 2 ** i for i in range(depth + 1)]

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
        total += conv_p(ch, us[i], 2, d, bias=True)
        p, ch = mrb(2 * us[i], us[i])
        total += p
    return total + conv_p(ch, cout, 1, d, bias=True)


def test_parameter_counts():
    assert meta_params(MultiResUNet, 2, 1, 2) == derived_multiresunet(2, 1, 2) == 7_251_159
    assert meta_params(MultiResUNet, 3, 4, 4) == derived_multiresunet(3, 4, 4) == 18_657_714


def test_multires_widths_follow_the_paper():
    assert [sum(multires_widths(u)) for u in (32, 64, 128, 256, 512)] == [51, 105, 212, 426, 854]
    assert multires_widths(512) == (142, 285, 427)  # the authors' code (int(W*0.333)) gives 284 here


def test_res_paths_sit_between_encoder_and_decoder():
    net = MultiResUNet(2, 1, 2)
    assert net.encoder.channels == [51, 105, 212, 426, 854]
    assert [len(p.steps) for p in net.res_paths] == [4, 3, 2, 1]
    assert net.decoder.out_channels == [51, 105, 212, 426]


@pytest.mark.slow
@pytest.mark.parametrize("sd", [2, 3])
def test_export(sd):
    size = (19, 21, 17) if sd == 3 else ODD2
    export_round_trip(MultiResUNet(sd, 1, 2, base_filters=8), torch.randn(1, 1, *size))


def test_learns_a_blob():
    torch.manual_seed(0)
    m = MultiResUNet(2, 1, 2, base_filters=8, depth=3, norm="instance")
    step, dice = fit(m, 2, 32, 150)
    assert dice > 0.9, (step, dice)


@pytest.mark.slow
def test_learns_a_blob_3d_batchnorm_defaults():
    torch.manual_seed(0)
    m = MultiResUNet(3, 1, 2, base_filters=8, depth=2)
    step, dice = fit(m, 3, 16, 200)
    assert dice > 0.9, (step, dice)
