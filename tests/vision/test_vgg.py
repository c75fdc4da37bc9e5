"""VGG: configurations as data, torchvision's layout and counts, pooling stages, 32x32 minimum.

The classifiers hold 120M+ parameters in their fully connected layers, so layouts and counts
are checked on the ``meta`` device; one real VGG-11 is built for the numerical checks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlgen.vision.backbones import BackboneInputError, create_backbone, create_model
from rlgen.vision.backbones.vgg import CFGS, VARIANTS

TORCHVISION_PARAMS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name,expected", TORCHVISION_PARAMS.items())
def test_parameter_counts_equal_torchvision(name, expected):
    m = meta_model(name)
    assert n_params(m) == expected
    # The name counts weight layers: the configuration's convs + 3 linear layers.
    depth = int(name[3:].split("_")[0])
    convs = [x for x in m.features if isinstance(x, nn.Conv2d)]
    assert len(convs) + 3 == depth == sum(v != "M" for v in CFGS[VARIANTS[name][0]]) + 3
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.features) == name.endswith("_bn")


def test_vgg16_state_dict_layout():
    sd = meta_model("vgg16").state_dict()
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = [f"features.{i}.{p}" for i in conv_indices for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert list(sd) == expected
    assert tuple(sd["features.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["features.28.weight"].shape) == (512, 512, 3, 3)
    assert tuple(sd["classifier.0.weight"].shape) == (4096, 512 * 7 * 7)
    assert tuple(sd["classifier.6.weight"].shape) == (1000, 4096)


def test_vgg16_bn_state_dict_layout():
    sd = meta_model("vgg16_bn").state_dict()
    assert len(sd) == 13 * 2 + 13 * 5 + 3 * 2
    assert tuple(sd["features.40.weight"].shape) == (512, 512, 3, 3)
    assert tuple(sd["features.41.running_var"].shape) == (512,)
    assert "features.41.num_batches_tracked" in sd
    assert tuple(sd["classifier.6.bias"].shape) == (1000,)


def test_backbone_stages_are_the_pooling_blocks():
    b = create_backbone("vgg16").eval()
    assert [(f.stage, f.channels, f.reduction) for f in b.feature_info] == [
        ("block1", 64, 2),
        ("block2", 128, 4),
        ("block3", 256, 8),
        ("block4", 512, 16),
        ("block5", 512, 32),
    ]
    assert b.min_input_size == (32, 32)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        stages = b.forward_stages(x)
        # block2 is torchvision's features[:10] (two conv-relu-conv-relu-pool blocks).
        torch.testing.assert_close(stages[1], b.features[:10](x))
    assert [tuple(s.shape[2:]) for s in stages] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    classifier_keys = meta_model("vgg16").state_dict()
    assert list(b.state_dict()) == [k for k in classifier_keys if k.startswith("features.")]


@pytest.mark.parametrize("size", [28, 31])
def test_too_small_for_five_pools_is_a_clear_error(size):
    """28 -> 14 -> 7 -> 3 -> 1 -> (empty at the fifth pool): refused before the network runs."""
    b = create_backbone("vgg16")
    with pytest.raises(BackboneInputError) as err:
        b(torch.randn(2, 3, size, size))
    msg = str(err.value)
    assert "'vgg16'" in msg and "(N, 3, H>=32, W>=32)" in msg and f"{size}x{size}" in msg


@pytest.fixture(scope="module")
def vgg11():
    torch.manual_seed(0)
    return create_model("vgg11", num_classes=10)


def test_real_classifier_forward_and_head(vgg11):
    vgg11.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = vgg11(x)
        features = vgg11.forward_features(x)
        assert features.shape == (2, 512, 1, 1)
        # The 7x7 adaptive pool copies a 1x1 map into 49 cells, as torchvision's does.
        flat = features.expand(-1, -1, 7, 7).flatten(1)
        torch.testing.assert_close(vgg11.classifier(flat), logits)
        assert vgg11.forward_head(features, pre_logits=True).shape == (2, 4096)
    assert logits.shape == (2, 10)


def test_torchvision_initialisation(vgg11):
    linear = vgg11.classifier[0]
    assert abs(linear.weight.std().item() - 0.01) < 0.0005
    assert torch.all(linear.bias == 0)
    conv = vgg11.features[3]  # 64 -> 128: kaiming normal, fan_out = 128 * 9
    assert abs(conv.weight.std().item() / (2 / (128 * 9)) ** 0.5 - 1) < 0.05
    assert torch.all(conv.bias == 0)


def test_reset_classifier_and_dropout(vgg11):
    vgg11.reset_classifier(3)
    assert vgg11.classifier[6].out_features == 3 and vgg11.num_classes == 3
    vgg11.train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    a = vgg11(x)
    torch.manual_seed(2)
    b = vgg11(x)
    assert a.shape == (2, 3) and not torch.allclose(a, b)  # dropout is active in training


def test_in_channels_and_batch_norm_backbone():
    b = create_backbone("vgg11_bn", in_channels=1)
    assert b.features[0].weight.shape == (64, 1, 3, 3)
    assert isinstance(b.features[1], nn.BatchNorm2d)
    out = b(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 512, 1, 1)
    with pytest.raises(BackboneInputError, match="vgg11_bn"):
        b(torch.randn(2, 3, 32, 32))


def test_forward_stages_returns_the_pooling_indices():
    """``return_indices=True`` (for SegNet): the same stages, and for every pooled value its
    flat position in the map the pool read, inside its own 2x2 window."""
    torch.manual_seed(0)
    b = create_backbone("vgg11_bn").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain = b.forward_stages(x)
        stages, indices = b.forward_stages(x, return_indices=True)
        pool_inputs = [b.features[: end](x) for end in b._stage_ends]
    assert len(indices) == len(stages) == 5
    for stage, same, where, before in zip(stages, plain, indices, pool_inputs):
        torch.testing.assert_close(stage, same)
        assert where.shape == stage.shape and where.dtype == torch.int64
        width = before.shape[-1]
        # The value stored at each index is the pooled value ...
        picked = before.flatten(2).gather(2, where.flatten(2)).view_as(stage)
        torch.testing.assert_close(picked, stage)
        # ... and the index lies in the output pixel's own window.
        rows = torch.arange(stage.shape[-2])[:, None]
        cols = torch.arange(stage.shape[-1])[None, :]
        assert torch.all(where // width // 2 == rows) and torch.all(where % width // 2 == cols)
    unpooled = nn.MaxUnpool2d(2)(stages[0], indices[0])
    assert unpooled.shape == pool_inputs[0].shape
    assert int((unpooled != 0).sum()) <= stages[0].numel()
