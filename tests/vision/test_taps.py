"""Feature taps (rlgen.vision.taps): VGG's paper names land on the layers torchvision's layout
puts them at (indices worked out here from the configurations, not by the code under test),
taps equal a manual forward pass, pre-ReLU outputs survive the in-place ReLUs, the forward
pass stops after the deepest tap, and unknown names fail with the closest ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlgen.errors import InputError
from rlgen.vision.backbones import create_backbone
from rlgen.vision.backbones.vgg import CFGS
from rlgen.vision.taps import FeatureTaps, available_taps, forward_taps, resolve_taps


def torchvision_index(cfg: list, block: int, conv: int, batch_norm: bool = False) -> int:
    """Index in torchvision's ``features`` of conv ``conv`` of block ``block``: each width adds
    conv (+ BN) + ReLU, each "M" one pool."""
    index, b, c = 0, 1, 0
    for v in cfg:
        if v == "M":
            b, c, index = b + 1, 0, index + 1
            continue
        c += 1
        if (b, c) == (block, conv):
            return index
        index += 3 if batch_norm else 2
    raise AssertionError(f"no conv{block}_{conv} in {cfg}")


@pytest.fixture(scope="module")
def vgg11():
    torch.manual_seed(0)
    return create_backbone("vgg11").eval()


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return create_backbone("resnet18").eval()


def test_vgg19_paper_names_reach_torchvisions_layers():
    with torch.device("meta"):  # structure only: no weights are computed
        vgg = create_backbone("vgg19")
    assert torchvision_index(CFGS["E"], 4, 2) == 21
    taps = resolve_taps(vgg, ["conv4_2", "relu4_2", "pool4", "conv5_1", "conv1_1", "relu5_1"])
    assert taps["conv4_2"] is vgg.features[21]
    assert taps["relu4_2"] is vgg.features[22]
    assert taps["pool4"] is vgg.features[27]
    assert taps["conv5_1"] is vgg.features[28] and taps["relu5_1"] is vgg.features[29]
    assert taps["conv1_1"] is vgg.features[0]
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, convs + 1):
            index = torchvision_index(CFGS["E"], block, conv)
            assert resolve_taps(vgg, [f"conv{block}_{conv}"])[f"conv{block}_{conv}"] \
                is vgg.features[index]


@pytest.mark.parametrize("name, cfg, batch_norm", [
    ("vgg11", "A", False), ("vgg16", "D", False), ("vgg19_bn", "E", True)])
def test_every_vgg_names_its_layers_from_its_structure(name, cfg, batch_norm):
    with torch.device("meta"):
        vgg = create_backbone(name)
    taps = resolve_taps(vgg, ["conv4_2"])
    index = torchvision_index(CFGS[cfg], 4, 2, batch_norm)
    assert taps["conv4_2"] is vgg.features[index]
    if batch_norm:
        assert resolve_taps(vgg, ["bn4_2"])["bn4_2"] is vgg.features[index + 1]
        assert resolve_taps(vgg, ["relu4_2"])["relu4_2"] is vgg.features[index + 2]


def test_available_taps_lists_paper_names_then_module_names(vgg11):
    names = available_taps(vgg11)
    assert names[:6] == ["conv1_1", "relu1_1", "pool1", "conv2_1", "relu2_1", "pool2"]
    n = len(vgg11.features)  # every layer has a paper name and a module name, plus "features"
    assert len(names) == 2 * n + 1
    assert names[n:n + 2] == ["features", "features.0"]
    assert resolve_taps(vgg11, ["features.13"])["features.13"] \
        is resolve_taps(vgg11, ["conv4_2"])["conv4_2"]


def test_conv1_1_is_the_convs_output_before_its_in_place_relu(vgg11):
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    taps = forward_taps(vgg11, x, ["conv1_1", "relu1_1"])
    conv = vgg11.features[0](x)
    torch.testing.assert_close(taps["conv1_1"], conv)
    assert (taps["conv1_1"] < 0).any()  # the ReLU that ran in place did not overwrite the tap
    torch.testing.assert_close(taps["relu1_1"], torch.relu(conv))
    # Gradients flow through the tap to the input, as through the layer itself.
    (grad_tap,) = torch.autograd.grad(taps["conv1_1"].square().sum(), x)
    (grad_ref,) = torch.autograd.grad(conv.square().sum(), x)
    torch.testing.assert_close(grad_tap, grad_ref)


def test_vgg_taps_equal_a_forward_through_the_sequential_slice(vgg11):
    x = torch.randn(2, 3, 32, 32)
    names = {"relu3_2": 9, "pool2": 5, "conv4_2": 13, "relu5_2": 19}  # from cfg A, by hand
    assert torchvision_index(CFGS["A"], 4, 2) == 13
    taps = forward_taps(vgg11, x, list(names))
    assert list(taps) == list(names)
    with torch.no_grad():
        for name, index in names.items():
            torch.testing.assert_close(taps[name], vgg11.features[: index + 1](x))
    assert taps["pool2"].shape == (2, 128, 8, 8)
    assert taps["conv4_2"].shape == (2, 512, 4, 4)
    assert taps["relu5_2"].shape == (2, 512, 2, 2)


def _count_calls(module: nn.Module, counter: list[int]):
    return module.register_forward_hook(lambda *_: counter.append(1))


def test_the_forward_pass_stops_after_the_deepest_tap(vgg11, resnet18):
    calls: list[int] = []
    handle = _count_calls(vgg11.features[14], calls)  # relu4_2, right after conv4_2
    try:
        forward_taps(vgg11, torch.randn(1, 3, 32, 32), ["conv4_2", "conv1_1"])
        assert calls == []
        forward_taps(vgg11, torch.randn(1, 3, 32, 32), ["conv4_2"], stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()
    handle = _count_calls(resnet18.layer3, calls)
    try:
        calls.clear()
        forward_taps(resnet18, torch.randn(1, 3, 32, 32), ["layer2"])
        assert calls == []
        forward_taps(resnet18, torch.randn(1, 3, 32, 32), ["layer2"], stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()
    assert not vgg11.features[13]._forward_hooks  # the taps left no hooks behind


def test_resnet_stage_taps_equal_forward_stages(resnet18):
    x = torch.randn(2, 3, 64, 64)
    taps = FeatureTaps(resnet18, ["layer2", "layer3.1.conv2", "layer4", "layer1"])(x)
    with torch.no_grad():
        stages = resnet18.forward_stages(x)
    torch.testing.assert_close(taps["layer1"], stages[1])
    torch.testing.assert_close(taps["layer2"], stages[2])
    torch.testing.assert_close(taps["layer4"], stages[4])
    assert taps["layer3.1.conv2"].shape == (2, 256, 4, 4)


def test_resnet_bn_tap_is_not_overwritten_by_the_blocks_in_place_relu(resnet18):
    x = torch.randn(1, 3, 32, 32)
    taps = forward_taps(resnet18, x, ["layer1.0.bn1", "layer1.0.relu"])
    net, block = resnet18, resnet18.layer1[0]
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        bn1 = block.bn1(block.conv1(h))
    torch.testing.assert_close(taps["layer1.0.bn1"], bn1)
    assert (taps["layer1.0.bn1"] < 0).any()
    # The block calls its ReLU three times; the tap is the first call's output, also when the
    # forward pass runs to the end.
    torch.testing.assert_close(taps["layer1.0.relu"], torch.relu(bn1))
    relu = forward_taps(resnet18, x, ["layer1.0.relu"], stop_early=False)["layer1.0.relu"]
    torch.testing.assert_close(relu, torch.relu(bn1))


def test_a_users_network_is_tapped_by_module_names():
    class Plugin(nn.Module):
        def __init__(self):
            super().__init__()
            # Not VGG-like (a Dropout in `features`): only module names apply.
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.0), nn.ReLU())
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.features(x))

    net = Plugin()
    assert available_taps(net) == ["features", "features.0", "features.1", "features.2", "head"]
    x = torch.randn(1, 3, 8, 8)
    taps = forward_taps(net, x, ["head", "features.0"])
    torch.testing.assert_close(taps["head"], net(x))
    torch.testing.assert_close(taps["features.0"], net.features[0](x))
    with pytest.raises(InputError, match="unknown layer 'conv1_1'"):
        forward_taps(net, x, ["conv1_1"])


@pytest.mark.parametrize("name, wrong, expected", [
    ("vgg19", "conv4_5", ["conv4_4", "conv4_1"]),
    ("vgg19", "rleu3_1", ["relu3_1"]),
    ("resnet18", "layer3.1.conv", ["layer3.1.conv1", "layer3.1.conv2"]),
])
def test_an_unknown_name_lists_the_closest_ones(name, wrong, expected):
    with torch.device("meta"):
        net = create_backbone(name)
    with pytest.raises(InputError) as info:
        FeatureTaps(net, ["conv1_1" if name.startswith("vgg") else "layer1", wrong])
    message = str(info.value)
    assert "\n" not in message and repr(wrong) in message and repr(name) in message
    for close in expected:
        assert close in message
