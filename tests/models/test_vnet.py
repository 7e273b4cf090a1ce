"""V-Net (Milletari 2016): the paper's and the released Caffe model's layouts, counted layer by layer; the
residual add before the PReLU; MONAI's version side by side; a blob to learn."""

from __future__ import annotations

import pytest
import torch

from medseg3d.models.vnet import VNet, VStage
from model_cases import conv_p, learn, meta_params, small


def vnet_count(enc=(1, 2, 3, 3, 3), dec=(3, 3, 2, 1), base=16, cin=1, cout=2, k=5, sd=3, caffe_head=False) -> int:
    """V-Net without norm: biased convs, one PReLU slope per channel after every conv/down/up-conv (a stage's
    last one after its residual sum)."""
    ch = [base * 2 ** i for i in range(len(enc))]
    n = conv_p(cin, ch[0], k, sd) + ch[0] + (enc[0] - 1) * (conv_p(ch[0], ch[0], k, sd) + ch[0])  # stage 1
    for i in range(1, len(enc)):
        n += conv_p(ch[i - 1], ch[i], 2, sd) + ch[i]  # down conv + PReLU
        n += enc[i] * (conv_p(ch[i], ch[i], k, sd) + ch[i])
    c = ch[-1]
    for j, i in enumerate(reversed(range(len(enc) - 1))):
        n += conv_p(c, ch[i], 2, sd) + ch[i]  # up conv + PReLU
        c = 2 * ch[i]
        n += dec[j] * (conv_p(c, c, k, sd) + c)
    if caffe_head:  # 5³ conv to the output channels + PReLU, 1³ conv
        return n + conv_p(c, cout, k, sd) + cout + conv_p(cout, cout, 1, sd)
    return n + conv_p(c, cout, 1, sd)


def test_vnet_parameter_counts_paper_and_caffe():
    assert meta_params(VNet, 3, 1, 2) == vnet_count() == 65_175_314
    # the released Caffe model (train_noPooling_ResNet_cinque.prototxt): stages 1,1,2,3,3 / 3,2,1,1
    caffe = vnet_count((1, 1, 2, 3, 3), (3, 2, 1, 1), caffe_head=True)
    assert meta_params(VNet, 3, 1, 2, variant="caffe") == caffe == 61_982_682
    # explicit stage depths override the variant's
    assert meta_params(VNet, 3, 1, 2, variant="caffe", encoder_convs=(1, 2, 3, 3, 3),
                       decoder_convs=(3, 3, 2, 1)) == vnet_count(caffe_head=True)


def test_vnet_monai_side_by_side():
    from monai.networks.nets import VNet as MonaiVNet

    monai = meta_params(MonaiVNet, 3, 1, 2)
    assert monai == 45_597_898
    # MONAI (after mattmacy/vnet.pytorch): BN, ELU, compression convs 1,1,2,3,2 (paper 1,2,3,3,3),
    # decompression 2,2,1,1 (paper 3,3,2,1), an extra 5³ conv + BN before a 1³ 2→2 conv. Built the same way,
    # ours differs only by that output transition and by the biases MONAI keeps on up-convs followed by BN.
    same = meta_params(VNet, 3, 1, 2, encoder_convs=(1, 1, 2, 3, 2), decoder_convs=(2, 2, 1, 1), norm="batch",
                       act="elu")
    extra_out = conv_p(32, 2, 5, 3, bias=False) + 2 * 2 + conv_p(2, 2, 1, 3) - conv_p(32, 2, 1, 3)
    up_biases = 128 + 64 + 32 + 16
    assert monai - same == extra_out + up_biases == 8_184
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert MonaiVNet(3, 1, 2).eval()(x).shape == small("vnet", 3).eval()(x).shape


def test_residual_add_comes_before_the_prelu():
    """A stage is conv-PReLU … conv, + the stage input, PReLU (the authors' Caffe ``outBlock`` layers)."""
    torch.manual_seed(0)
    stage = VStage(3, 4, 4, n=2, kernel_size=3).eval()
    with torch.no_grad():
        stage.act.weight.fill_(0.1)  # a slope far from 1, so that the order shows
    x = torch.randn(1, 4, 6, 6, 6)
    conv1, conv2 = stage.convs[0], stage.convs[1]
    with torch.no_grad():
        expected = stage.act(conv2[0](conv1(x)) + x)
        assert torch.allclose(stage(x), expected)
        assert not torch.allclose(stage(x), stage.act(conv2[0](conv1(x))) + x)
    assert isinstance(conv2[3], torch.nn.Identity)  # the last conv has no activation of its own
    # the first stage broadcasts its 1-channel input to 16 channels for the residual
    first = VStage(3, 1, 16, n=1)
    with torch.no_grad():
        y = first(x[:, :1])
        assert torch.allclose(y, first.act(first.convs(x[:, :1]) + x[:, :1].repeat(1, 16, 1, 1, 1)))


def test_variant_names_the_stage_depths():
    net = VNet(3, 1, 2, variant="caffe", base_filters=4)
    assert [len(b.convs) for b in net.encoder.blocks] == [1, 1, 2, 3, 3]
    assert [len(b.convs) for b in net.decoder.blocks] == [3, 2, 1, 1]
    paper = VNet(3, 1, 2, base_filters=4)
    assert [len(b.convs) for b in paper.encoder.blocks] == [1, 2, 3, 3, 3]
    assert [len(b.convs) for b in paper.decoder.blocks] == [3, 3, 2, 1]


def test_learns_a_blob_2d():
    assert learn("vnet", 2, (32, 32), 60) > 0.9


@pytest.mark.slow
def test_learns_a_blob_3d():
    assert learn("vnet", 3, (24, 24, 24), 120, batch=2, lr=1e-3) > 0.9
