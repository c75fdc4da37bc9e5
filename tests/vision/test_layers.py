"""Shared layers: ConvBNAct, LocallyConnected2d (checked against a slow reference loop and
with gradcheck), BackboneClassifier."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlgen.vision.layers import BackboneClassifier, ConvBNAct, LocallyConnected2d


def locally_connected_loop(x, weight, bias, kernel_size, stride, padding, output_size):
    """Direct definition: output (i, j) = its own filter bank applied to its own patch."""
    x = F.pad(x, (padding, padding, padding, padding))
    n = x.shape[0]
    out_h, out_w = output_size
    rows = []
    for i in range(out_h):
        cols = []
        for j in range(out_w):
            top, left = i * stride, j * stride
            patch = x[:, :, top : top + kernel_size, left : left + kernel_size]
            filters = weight[i * out_w + j]  # (out_channels, in_channels * k * k)
            y = patch.reshape(n, -1) @ filters.T
            if bias is not None:
                y = y + bias[:, i, j]
            cols.append(y)  # (N, out_channels)
        rows.append(torch.stack(cols, dim=-1))  # (N, out_channels, out_w)
    return torch.stack(rows, dim=-2)  # (N, out_channels, out_h, out_w)


# ---------------------------------------------------------------- ConvBNAct


def test_conv_bn_act_structure_and_defaults():
    block = ConvBNAct(3, 8, 3)
    assert [name for name, _ in block.named_children()] == ["conv", "bn", "act"]
    assert block.conv.bias is None  # BN's shift makes a conv bias redundant
    assert block.conv.padding == (1, 1)
    assert block(torch.randn(2, 3, 9, 7)).shape == (2, 8, 9, 7)
    # 3*8*9 conv weights + 2*8 BN affine
    assert sum(p.numel() for p in block.parameters()) == 216 + 16


def test_conv_bn_act_without_norm_or_activation():
    block = ConvBNAct(2, 4, 5, stride=2, padding=0, norm=False, act_layer=None)
    assert [name for name, _ in block.named_children()] == ["conv"]
    assert block.conv.bias is not None
    assert sum(p.numel() for p in block.parameters()) == 4 * 2 * 25 + 4
    x = torch.randn(1, 2, 11, 11)
    assert torch.equal(block(x), block.conv(x))
    assert block(x).shape == (1, 4, 4, 4)


def test_conv_bn_act_activation_applied():
    block = ConvBNAct(1, 3, 3, norm=False)
    assert (block(torch.randn(2, 1, 6, 6)) >= 0).all()


# ---------------------------------------------------------------- LocallyConnected2d


@pytest.mark.parametrize(
    "in_c, out_c, size, k, stride, padding",
    [(2, 3, 7, 3, 1, 0), (3, 4, (8, 6), 3, 2, 1), (1, 2, 5, 5, 1, 0), (2, 2, 9, 4, 3, 2)],
)
def test_locally_connected_matches_loop(in_c, out_c, size, k, stride, padding):
    torch.manual_seed(0)
    layer = LocallyConnected2d(in_c, out_c, size, k, stride=stride, padding=padding)
    h, w = (size, size) if isinstance(size, int) else size
    out_h = (h + 2 * padding - k) // stride + 1
    out_w = (w + 2 * padding - k) // stride + 1
    assert layer.output_size == (out_h, out_w)
    assert layer.weight.shape == (out_h * out_w, out_c, in_c * k * k)
    assert layer.bias.shape == (out_c, out_h, out_w)

    x = torch.randn(3, in_c, h, w, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    b_ref = layer.bias.detach().clone().requires_grad_(True)
    out = layer(x)
    ref = locally_connected_loop(x_ref, w_ref, b_ref, k, stride, padding, (out_h, out_w))
    assert out.shape == (3, out_c, out_h, out_w)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad, rtol=1e-5, atol=1e-5)


def test_locally_connected_gradcheck_float64():
    torch.manual_seed(0)
    layer = LocallyConnected2d(2, 2, (4, 5), 2, stride=1, padding=1).double()
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)

    def fn(inp, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (inp,))

    weight = layer.weight.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_locally_connected_with_tied_filters_equals_conv2d():
    """Copying one conv filter bank to every position must give the ordinary convolution."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    layer = LocallyConnected2d(3, 4, 9, 3, stride=2, padding=1)
    with torch.no_grad():
        layer.weight.copy_(conv.weight.reshape(1, 4, 27).expand_as(layer.weight))
        layer.bias.copy_(conv.bias.view(4, 1, 1).expand_as(layer.bias))
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_locally_connected_parameter_count_and_no_bias():
    with torch.device("meta"):  # 62.8M parameters: count them without allocating
        layer = LocallyConnected2d(16, 16, 63, 9)  # DeepFace L4: 55x55 positions
    assert layer.output_size == (55, 55)
    assert sum(p.numel() for p in layer.parameters()) == 55 * 55 * 16 * (16 * 81) + 16 * 55 * 55
    no_bias = LocallyConnected2d(2, 3, 6, 3, bias=False)
    assert no_bias.bias is None
    assert sum(p.numel() for p in no_bias.parameters()) == 16 * 3 * 18


def test_locally_connected_wrong_input_size_is_a_clear_error():
    layer = LocallyConnected2d(2, 3, (8, 6), 3)
    with pytest.raises(ValueError, match=r"\(N, 2, 8, 6\).*got \(1, 2, 8, 7\)"):
        layer(torch.randn(1, 2, 8, 7))
    with pytest.raises(ValueError, match=r"got \(1, 3, 8, 6\)"):
        layer(torch.randn(1, 3, 8, 6))
    with pytest.raises(ValueError, match="too small"):
        LocallyConnected2d(1, 1, 4, 5)


# ---------------------------------------------------------------- BackboneClassifier


class _TinyBackbone(nn.Module):
    def forward_features(self, x):
        return x


def test_backbone_classifier_flatten_head_checks_size():
    model = BackboneClassifier(
        _TinyBackbone(), 5, num_features=7, hidden=nn.Linear(12, 7), flat_features=12,
        input_size=(2, 2),
    )  # fmt: skip
    assert model(torch.randn(4, 3, 2, 2)).shape == (4, 5)
    assert model.forward_head(torch.randn(4, 3, 2, 2), pre_logits=True).shape == (4, 7)
    with pytest.raises(ValueError, match="expects 12 features.*got 27.*input_size"):
        model(torch.randn(4, 3, 3, 3))


def test_backbone_classifier_reset_and_global_pool():
    model = BackboneClassifier(_TinyBackbone(), 5, num_features=3, global_pool=True)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 5)
    assert model(torch.randn(2, 3, 9, 1)).shape == (2, 5)
    model.reset_classifier(8)
    assert model.num_classes == 8 and model(torch.randn(2, 3, 4, 4)).shape == (2, 8)
    model.reset_classifier(0)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(model(x), x.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)
    with pytest.raises(ValueError, match="exactly one"):
        BackboneClassifier(_TinyBackbone(), 5, num_features=3)
