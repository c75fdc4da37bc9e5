"""Nature-CNN (Mnih et al. 2015): shapes 84 -> 20 -> 9 -> 7, parameter counts, uint8 input."""

import pytest
import torch

from rlgen.registry import BACKBONES
from rlgen.vision.backbones import BackboneInputError, create_backbone


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_registered_and_named():
    assert "nature_cnn" in BACKBONES
    assert create_backbone("nature_cnn", in_channels=4).name == "nature_cnn"


@pytest.mark.parametrize("in_channels", [1, 4, 12])
def test_parameter_count(in_channels):
    b = create_backbone("nature_cnn", in_channels=in_channels)
    conv1 = 32 * (in_channels * 8 * 8 + 1)
    conv2 = 64 * (32 * 4 * 4 + 1)  # 32,832
    conv3 = 64 * (64 * 3 * 3 + 1)  # 36,928
    assert n_params(b) == conv1 + conv2 + conv3
    if in_channels == 4:
        assert n_params(b) == 8224 + 32832 + 36928 == 77984


def test_stage_shapes_and_feature_info():
    b = create_backbone("nature_cnn", in_channels=4)
    stages = b.forward_stages(torch.rand(2, 4, 84, 84) * 255)
    # valid padding: floor((n - k) / s) + 1 -> 84 -> 20 -> 9 -> 7
    assert [tuple(s.shape[1:]) for s in stages] == [(32, 20, 20), (64, 9, 9), (64, 7, 7)]
    assert [(f.stage, f.channels, f.reduction) for f in b.feature_info] == [
        ("conv1", 32, 4), ("conv2", 64, 8), ("conv3", 64, 8)
    ]  # fmt: skip
    assert all((s >= 0).all() for s in stages)  # ReLU after every conv
    assert b.out_channels == 64 and b.reduction == 8
    assert b.feature_shape((4, 84, 84)) == (64, 7, 7)  # 3136 features for the 512-unit head


def test_forward_features_equals_last_stage():
    torch.manual_seed(0)
    b = create_backbone("nature_cnn", in_channels=4)
    x = torch.rand(3, 4, 84, 84) * 255
    torch.testing.assert_close(b.forward_features(x), b.forward_stages(x)[-1])
    torch.testing.assert_close(b(x), b.forward_stages(x)[-1])


def test_min_input_size_is_the_smallest_that_works():
    b = create_backbone("nature_cnn", in_channels=4)
    assert b.min_input_size == (36, 36)
    # 36 -> (36-8)//4+1 = 8 -> (8-4)//2+1 = 3 -> 3-3+1 = 1
    assert b(torch.zeros(1, 4, 36, 36)).shape == (1, 64, 1, 1)
    assert b(torch.zeros(1, 4, 36, 52)).shape == (1, 64, 1, 3)  # 52 -> 12 -> 5 -> 3
    # one pixel less and conv3 has nothing left: 35 -> 7 -> 2, too small for a 3x3 kernel
    with pytest.raises(RuntimeError):
        b.conv3(b.conv2(b.conv1(torch.zeros(1, 4, 35, 36))))
    with pytest.raises(BackboneInputError, match=r"'nature_cnn'.*36x36.*35x36 in \(1, 4, 35, 36\)"):
        b(torch.zeros(1, 4, 35, 36))


def test_wrong_channels_or_rank():
    b = create_backbone("nature_cnn", in_channels=4)
    with pytest.raises(BackboneInputError, match=r"'nature_cnn'.*4 input channels.*got 3 channels"):
        b(torch.zeros(2, 3, 84, 84))
    with pytest.raises(BackboneInputError, match=r"4-D.*got \(4, 84, 84\)"):
        b(torch.zeros(4, 84, 84))


def test_uint8_frames_are_scaled_by_255():
    torch.manual_seed(0)
    b = create_backbone("nature_cnn", in_channels=4)
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    out = b(frames)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, b(frames.float()))  # raw float pixels: same scaling
    raw = create_backbone("nature_cnn", in_channels=4, normalize_input=False)
    raw.load_state_dict(b.state_dict())
    torch.testing.assert_close(out, raw(frames.float() / 255.0))
    with pytest.raises(BackboneInputError, match="normalize_input=False.*uint8"):
        raw(frames)


def test_default_stack_size_and_gradients():
    from rlgen.vision.backbones.nature_cnn import nature_cnn

    b = nature_cnn()
    assert b.in_channels == 4
    x = torch.rand(2, 4, 84, 84, requires_grad=True)
    b(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in b.parameters())
