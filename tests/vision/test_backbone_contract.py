"""The backbone contract, checked for every registered backbone and classifier (timm-style).

Spatial rule asserted for every image backbone: a stage with reduction ``r`` is a stride-``r``
sampling of the input, so growing the input by the total reduction ``R`` grows that stage by
exactly ``R // r`` pixels. Backbones whose downsampling is all padded ("same") convs and
pools, listed in ``SAME_PADDED``, also give exactly ``H // r`` pixels for an input that is a
multiple of ``R`` (ceil(H / r) otherwise); unpadded ones (AlexNet, LeNet, Nature CNN) give
fewer, and only the stride rule and ``1 <= H' <= ceil(H / r)`` apply to them.

Big classifiers (the VGGs, >130M parameters) are built and run on the ``meta`` device: their
output shapes are checked without allocating half a gigabyte each; the others run for real.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

from rlgen.registry import REGISTRIES
from rlgen.vision.backbones import (
    BACKBONES,
    MODELS,
    Backbone,
    BackboneInputError,
    create_backbone,
    create_model,
)

# Backbones may be registered outside rlgen.vision.backbones (the DCGAN discriminator lives in
# rlgen.generative.dcgan): load every registry's built-in modules so all of them are checked
# whichever test files ran first.
for _registry in REGISTRIES.values():
    _registry.names()

SAME_PADDED = re.compile(r"^(resnet\d+|vgg\d+(_bn)?|googlenet)$")
META_MODELS = re.compile(r"^vgg\d+(_bn)?$")
BATCH = 2


def _channel_choices(name: str) -> list[int]:
    """The builder's default ``in_channels`` and one other (1, or 3 when the default is 1)."""
    param = inspect.signature(BACKBONES.get(name)).parameters.get("in_channels")
    first = param.default if param is not None and param.default is not param.empty else 3
    return [first, 1 if first != 1 else 3]


def _fixed_size(backbone: Backbone) -> tuple[int, int] | None:
    """The one input size a backbone takes, for heads built for a size (locally connected)."""
    size = getattr(backbone, "input_size", None)
    return tuple(size) if size is not None else None


def _sizes(backbone: Backbone) -> list[tuple[int, int]]:
    """A size at least ``min_input_size`` and a multiple of the total reduction, then + R."""
    fixed = _fixed_size(backbone)
    if fixed is not None:
        return [fixed]
    r = backbone.reduction
    h = math.ceil(backbone.min_input_size[0] / r) * r
    w = math.ceil(backbone.min_input_size[1] / r) * r
    return [(h, w), (h + r, w + r)]


# The deep family members share every line of code with resnet18/50 and vgg11/13, which are
# checked with two channel counts; building them twice would only cost time.
ONE_CHANNEL_COUNT = {"resnet101", "resnet152", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}
CASES = [
    (n, c)
    for n in BACKBONES.names()
    for c in _channel_choices(n)[: 1 if n in ONE_CHANNEL_COUNT else 2]
]


@pytest.mark.parametrize("name,in_channels", CASES)
def test_backbone_contract(name: str, in_channels: int):
    torch.manual_seed(0)
    b = create_backbone(name, in_channels=in_channels).eval()
    assert isinstance(b, Backbone)
    assert b.name == name
    assert b.in_channels == in_channels
    info = b.feature_info
    assert len(info) >= 1
    assert len({f.stage for f in info}) == len(info), "stage names must be unique"
    assert all(f.channels >= 1 and f.reduction >= 1 for f in info)
    assert b.out_channels == info[-1].channels
    assert b.reduction == info[-1].reduction
    reductions = [f.reduction for f in info]
    assert reductions == sorted(reductions)
    assert all(b.reduction % r == 0 for r in reductions)

    if b.input_ndim == 2:
        _check_vector_backbone(b, name, in_channels)
        return
    assert b.input_ndim == 4

    outputs = []
    with torch.no_grad():
        for h, w in _sizes(b):
            x = torch.randn(BATCH, in_channels, h, w)
            stages = b.forward_stages(x)
            assert len(stages) == len(info)
            for f, s in zip(info, stages):
                assert s.dim() == 4 and s.shape[:2] == (BATCH, f.channels), (f, s.shape)
                assert 1 <= s.shape[2] <= math.ceil(h / f.reduction), (f, s.shape, h)
                assert 1 <= s.shape[3] <= math.ceil(w / f.reduction), (f, s.shape, w)
                if SAME_PADDED.match(name):
                    assert s.shape[2:] == (h // f.reduction, w // f.reduction), (f, s.shape)
            last = b.forward_features(x)
            torch.testing.assert_close(last, stages[-1])
            torch.testing.assert_close(b(x), last)
            assert b.feature_shape((in_channels, h, w)) == tuple(last.shape[1:])
            outputs.append([s.shape[2:] for s in stages])
    if len(outputs) == 2:  # the stride rule
        for f, small, big in zip(info, outputs[0], outputs[1]):
            step = b.reduction // f.reduction
            assert (big[0] - small[0], big[1] - small[1]) == (step, step), (f, small, big)

    if in_channels == _channel_choices(name)[0]:
        _check_min_input_size(b, name)

    # Wrong channel count and wrong rank: a clear error naming the backbone.
    h, w = _sizes(b)[0]
    with pytest.raises(BackboneInputError, match=re.escape(repr(name))):
        b.forward_stages(torch.zeros(BATCH, in_channels + 1, h, w))
    with pytest.raises(BackboneInputError, match=re.escape(repr(name))):
        b.forward_features(torch.zeros(in_channels, h, w))


def _check_min_input_size(b: Backbone, name: str) -> None:
    """The advertised minimum goes through; one pixel less is refused by ``check_input`` with
    the name, expected and given shape, and would also fail inside the network (tightness)."""
    min_h, min_w = b.min_input_size
    c = b.in_channels
    with torch.no_grad():
        out = b.forward_features(torch.randn(BATCH, c, min_h, min_w))
    assert out.shape[0] == BATCH and min(out.shape[2:]) >= 1
    if _fixed_size(b) is not None:
        return
    for h, w in [(min_h - 1, min_w), (min_h, min_w - 1)]:
        if h < 1 or w < 1:
            continue
        x = torch.randn(BATCH, c, h, w)
        with pytest.raises(BackboneInputError) as err:
            b.forward_stages(x)
        msg = str(err.value)
        assert repr(name) in msg and f"{min_h}x{min_w}" in msg and f"{h}x{w}" in msg, msg
        b.check_input = lambda x: None  # bypass the guard: the network itself must fail
        try:
            with pytest.raises(RuntimeError), torch.no_grad():
                b.forward_stages(x)
        finally:
            del b.check_input


def _check_vector_backbone(b: Backbone, name: str, in_channels: int) -> None:
    assert all(f.reduction == 1 for f in b.feature_info)
    with torch.no_grad():
        x = torch.randn(BATCH, in_channels)
        stages = b.forward_stages(x)
        assert [tuple(s.shape) for s in stages] == [(BATCH, f.channels) for f in b.feature_info]
        torch.testing.assert_close(b.forward_features(x), stages[-1])
    assert b.feature_shape((in_channels,)) == (b.out_channels,)
    for bad in (torch.zeros(BATCH, in_channels + 1), torch.zeros(BATCH, in_channels, 1, 1)):
        with pytest.raises(BackboneInputError, match=re.escape(repr(name))):
            b.forward_stages(bad)


def _model_input(model: torch.nn.Module, device: str) -> torch.Tensor:
    backbone = model if isinstance(model, Backbone) else model.backbone
    if backbone.input_ndim == 2:
        return torch.randn(BATCH, backbone.in_channels, device=device)
    size = getattr(model, "input_size", None) or backbone.min_input_size
    return torch.randn(BATCH, backbone.in_channels, *size, device=device)


@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name: str):
    device = "meta" if META_MODELS.match(name) else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = create_model(name, num_classes=5).eval()
    x = _model_input(model, device)
    with torch.no_grad():
        assert model.num_classes == 5
        assert tuple(model(x).shape) == (BATCH, 5)
        features = model.forward_features(x)
        if device == "cpu":
            torch.testing.assert_close(model.forward_head(features), model(x))
        pre = model.forward_head(features, pre_logits=True)
        assert pre.shape == (BATCH, model.num_features)
        model.reset_classifier(7)
        assert model.num_classes == 7
        assert tuple(model(x).shape) == (BATCH, 7)
        assert next(model.parameters()).device.type == device
