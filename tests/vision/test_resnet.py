"""ResNet: torchvision's layout and parameter counts, v1.5 strides, initialisation, precision,
memory format and torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlgen.vision.backbones import BackboneInputError, create_backbone, create_model
from rlgen.vision.backbones.resnet import BasicBlock, Bottleneck, ResNetBackbone

TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,expected", TORCHVISION_PARAMS.items())
def test_parameter_counts_equal_torchvision(name, expected):
    with torch.device("meta"):
        model = create_model(name)
        backbone = create_backbone(name)
    assert n_params(model) == expected
    fc = model.fc.in_features * 1000 + 1000
    assert n_params(backbone) == expected - fc


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return create_model("resnet18")


def test_resnet18_state_dict_layout(r18):
    sd = r18.state_dict()
    # 62 weight/bias tensors + 20 batch norms x 3 buffers, as in torchvision's resnet18.
    assert len(sd) == 122
    assert list(sd)[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert list(sd)[-2:] == ["fc.weight", "fc.bias"]
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_mean": (128,),
        "layer3.1.conv2.weight": (256, 256, 3, 3),
        "layer4.1.bn2.running_var": (512,),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in sd  # 64 -> 64, stride 1: identity shortcut


def test_resnet50_layout_and_v1_5_strides():
    with torch.device("meta"):
        m = create_model("resnet50")
    sd = m.state_dict()
    assert len(sd) == 320  # 161 tensors + 53 batch norms x 3 buffers
    assert tuple(sd["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(sd["layer4.2.bn3.running_var"].shape) == (2048,)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)
    first = m.layer2[0]
    assert isinstance(first, Bottleneck)
    # v1.5: the stride is on the 3x3 conv; the 1x1 reduction keeps full resolution.
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert first.downsample[0].stride == (2, 2)


def test_backbone_keys_are_the_classifier_keys_without_fc(r18):
    backbone = create_backbone("resnet18")
    assert list(backbone.state_dict()) == [k for k in r18.state_dict() if not k.startswith("fc.")]
    from rlgen.vision.backbones.weights import load_weights

    report = load_weights(backbone, r18.state_dict(), strict=False)
    assert report.unexpected == ["fc.weight", "fc.bias"] and not report.missing
    x = torch.randn(2, 3, 32, 32)
    r18.eval()
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), r18.forward_features(x))
        logits = r18.fc(backbone(x).mean(dim=(2, 3)))
        torch.testing.assert_close(r18(x), logits)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels_changes_only_conv1(in_channels):
    torch.manual_seed(0)
    m = create_model("resnet18", num_classes=10, in_channels=in_channels)
    base = TORCHVISION_PARAMS["resnet18"] - 513 * 1000 + 513 * 10
    assert n_params(m) == base + 64 * 7 * 7 * (in_channels - 3)
    assert m.conv1.weight.shape == (64, in_channels, 7, 7)
    assert m(torch.randn(2, in_channels, 64, 64)).shape == (2, 10)
    with pytest.raises(BackboneInputError, match="resnet18"):
        m(torch.randn(2, 3, 64, 64))


def test_kaiming_init_like_torchvision(r18):
    w = r18.layer4[0].conv2.weight  # (512, 512, 3, 3): fan_out = 512 * 9
    expected = (2.0 / (512 * 9)) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.02
    assert torch.all(r18.layer4[0].bn2.weight == 1) and torch.all(r18.bn1.bias == 0)


@pytest.mark.parametrize("name,block", [("resnet18", BasicBlock), ("resnet50", Bottleneck)])
def test_zero_init_residual_makes_blocks_identities(name, block):
    torch.manual_seed(0)
    m = create_backbone(name, zero_init_residual=True).eval()
    blocks = [b for b in m.modules() if isinstance(b, block)]
    assert all(torch.all(b.last_bn.weight == 0) for b in blocks)
    inner = m.layer3[1]  # no downsample: output = relu(0 + x) = x for x >= 0
    x = torch.rand(2, inner.last_bn.num_features, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(inner(x), x)
    default = create_backbone(name)
    assert not torch.all(default.layer3[1].last_bn.weight == 0)


def test_bad_layer_counts():
    with pytest.raises(ValueError, match="4 positive block counts"):
        ResNetBackbone(BasicBlock, [2, 2, 2])


def test_non_square_sizes_round_up():
    b = create_backbone("resnet18").eval()
    with torch.no_grad():
        stages = b.forward_stages(torch.randn(1, 3, 33, 47))
    # Padded stride-2 steps: ceil(H / r).
    assert [tuple(s.shape[2:]) for s in stages] == [(17, 24), (9, 12), (5, 6), (3, 3), (2, 2)]


def test_every_parameter_gets_a_gradient(r18):
    r18.train()
    r18.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 32, 32)
    nn.functional.cross_entropy(r18(x), torch.tensor([1, 2])).backward()
    missing = [n for n, p in r18.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    r18.zero_grad(set_to_none=True)


def test_learns_a_small_problem():
    """A few SGD steps on 16 fixed random images fit their labels (loss drops by half)."""
    torch.manual_seed(0)
    m = create_model("resnet18", num_classes=4, in_channels=1)
    x, y = torch.randn(16, 1, 16, 16), torch.arange(16) % 4
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(r18, dtype):
    r18.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = r18.forward_features(x)
        with torch.autocast("cpu", dtype=dtype):
            stages = r18.forward_stages(x)
            logits = r18(x)
    assert stages[-1].dtype == dtype and logits.dtype == dtype
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    rel = (stages[-1].float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_channels_last_matches_contiguous(r18):
    r18.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_stages = r18.forward_stages(x)
        ref = r18(x)
        m = create_model("resnet18").eval()
        m.load_state_dict(r18.state_dict())
        m = m.to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        out_stages = m.forward_stages(xcl)
        out = m(xcl)
    assert out_stages[1].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(out_stages, ref_stages):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


def test_torch_compile_matches_eager():
    """resnet18 traces as one graph (``fullgraph``: no graph breaks, the input check included)
    and the compiled forward and backward match eager. The ``aot_eager`` backend runs the
    same Dynamo + AOTAutograd capture as the default one without generating C++, which on
    this CPU costs 30-80 s per cold run; ``benchmarks/backbones.py --compile`` runs inductor."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    b = create_backbone("resnet18").train()
    x = torch.randn(2, 3, 32, 32)
    eager_stages = b.forward_stages(x)
    eager_stages[-1].sum().backward()
    eager_grad = b.conv1.weight.grad.clone()
    b.zero_grad(set_to_none=True)
    # Undo the running-stat update of the eager pass so both passes see the same state.
    torch.manual_seed(0)
    compiled_b = create_backbone("resnet18").train()
    compiled = torch.compile(compiled_b.forward_stages, fullgraph=True, backend="aot_eager")
    stages = compiled(x)
    for a, e in zip(stages, eager_stages):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
    stages[-1].sum().backward()
    torch.testing.assert_close(compiled_b.conv1.weight.grad, eager_grad, rtol=1e-3, atol=1e-3)
    # Without fullgraph, a bad input still gets the clear error (Dynamo falls back to eager
    # at the raise; under fullgraph it reports the raise as unsupported instead).
    lenient = torch.compile(compiled_b.forward_stages, backend="aot_eager")
    with pytest.raises(BackboneInputError, match="resnet18"):
        lenient(torch.randn(2, 4, 32, 32))


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "alexnet", "googlenet"])
def test_num_classes_must_be_positive(name):
    with torch.device("meta"):
        with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
            create_model(name, num_classes=0)
        model = create_model(name, num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got -1"):
        model.reset_classifier(-1)
