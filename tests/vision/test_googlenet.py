"""GoogLeNet: torchvision's layout and counts (with and without auxiliary heads), Inception
block widths from the paper, BN conv blocks, auxiliary outputs in training, 15x15 minimum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlgen.vision.backbones import BackboneInputError, create_backbone, create_model
from rlgen.vision.backbones.googlenet import (
    BasicConv2d,
    GoogLeNetBackbone,
    GoogLeNetOutputs,
    Inception,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def aux_model():
    torch.manual_seed(0)
    return create_model("googlenet", num_classes=10, aux_logits=True)


def test_parameter_counts():
    with torch.device("meta"):
        assert n_params(create_model("googlenet")) == 6_624_904
        # Each auxiliary head: 1x1 conv to 128 + BN, fc 2048 -> 1024, fc 1024 -> 1000.
        aux1 = 512 * 128 + 2 * 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
        aux2 = aux1 + (528 - 512) * 128
        assert n_params(create_model("googlenet", aux_logits=True)) == 6_624_904 + aux1 + aux2


def test_state_dict_layout():
    with torch.device("meta"):
        sd = create_model("googlenet").state_dict()
        aux_sd = create_model("googlenet", aux_logits=True).state_dict()
    shapes = {
        "conv1.conv.weight": (64, 3, 7, 7),
        "conv1.bn.running_var": (64,),
        "conv2.conv.weight": (64, 64, 1, 1),
        "conv3.conv.weight": (192, 64, 3, 3),
        "inception3a.branch1.conv.weight": (64, 192, 1, 1),
        "inception3a.branch2.0.conv.weight": (96, 192, 1, 1),
        "inception3a.branch2.1.conv.weight": (128, 96, 3, 3),
        "inception3a.branch3.0.conv.weight": (16, 192, 1, 1),
        "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),  # torchvision's 3x3 "5x5"
        "inception3a.branch4.1.conv.weight": (32, 192, 1, 1),
        "inception5b.branch2.1.bn.weight": (384,),
        "fc.weight": (1000, 1024),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("aux") for k in sd)
    assert "conv1.conv.bias" not in sd
    assert tuple(aux_sd["aux1.conv.conv.weight"].shape) == (128, 512, 1, 1)
    assert tuple(aux_sd["aux2.conv.conv.weight"].shape) == (128, 528, 1, 1)
    assert tuple(aux_sd["aux1.fc1.weight"].shape) == (1024, 2048)
    assert tuple(aux_sd["aux2.fc2.weight"].shape) == (1000, 1024)
    # Apart from the auxiliary heads the two layouts are the same, in the same order.
    assert [k for k in aux_sd if not k.startswith("aux")] == list(sd)


def test_inception_widths_match_the_paper():
    with torch.device("meta"):
        b = create_backbone("googlenet")
    widths = [m.out_channels for m in b.modules() if isinstance(m, Inception)]
    # Table 1 of Szegedy et al.: output depth of 3a, 3b, 4a-4e, 5a, 5b.
    assert widths == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    blocks = [m for m in b.modules() if isinstance(m, BasicConv2d)]
    assert all(m.bn.eps == 1e-3 and m.conv.bias is None for m in blocks)
    assert [(f.stage, f.channels, f.reduction) for f in b.feature_info] == [
        ("conv1", 64, 2),
        ("conv3", 192, 4),
        ("inception3", 480, 8),
        ("inception4", 832, 16),
        ("inception5", 1024, 32),
    ]


def test_aux_outputs_in_training_only(aux_model):
    x = torch.randn(2, 3, 64, 64)
    aux_model.train()
    out = aux_model(x)
    assert isinstance(out, GoogLeNetOutputs)
    assert [t.shape for t in out] == [(2, 10)] * 3
    # The paper weights the auxiliary losses by 0.3; all three heads get gradients.
    y = torch.tensor([1, 2])
    loss = nn.functional.cross_entropy(out.logits, y)
    loss = loss + 0.3 * sum(nn.functional.cross_entropy(a, y) for a in out[1:])
    aux_model.zero_grad(set_to_none=True)
    loss.backward()
    for head in (aux_model.aux1, aux_model.aux2, aux_model.fc):
        assert all(p.grad is not None and p.grad.any() for p in head.parameters())
    aux_model.eval()
    with torch.no_grad():
        logits = aux_model(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
        # The main path is the same whether or not the auxiliary heads are tapped.
        aux_model.aux_logits = False
        torch.testing.assert_close(aux_model(x), logits)
        aux_model.aux_logits = True


def test_reset_classifier_resets_aux_heads(aux_model):
    aux_model.reset_classifier(4)
    assert aux_model.fc.out_features == aux_model.aux1.fc2.out_features == 4
    aux_model.train()
    assert [t.shape for t in aux_model(torch.randn(2, 3, 32, 32))] == [(2, 4)] * 3


def test_transform_input():
    torch.manual_seed(0)
    m = create_model("googlenet", transform_input=True).eval()
    x = torch.randn(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        # The trunk alone (the parent class's forward_features) on the re-normalized input.
        expected = GoogLeNetBackbone.forward_features(m, (x * std + mean - 0.5) / 0.5)
        torch.testing.assert_close(m.forward_features(x), expected)
    with pytest.raises(ValueError, match="3 \\(RGB\\) input channels"):
        create_model("googlenet", in_channels=1, transform_input=True)


def test_minimum_size_15():
    b = create_backbone("googlenet", in_channels=4).eval()
    assert b.min_input_size == (15, 15)
    with torch.no_grad():
        stages = b.forward_stages(torch.randn(2, 4, 15, 15))
    assert [s.shape[-1] for s in stages] == [8, 4, 2, 1, 1]  # ceil(15 / r)
    with pytest.raises(BackboneInputError, match="'googlenet' needs images of at least 15x15"):
        b(torch.randn(2, 4, 14, 15))
