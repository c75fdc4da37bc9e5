"""AlexNet: torchvision's layout and count, the paper's local response normalization, stages
at the three max-pools and the 63x63 minimum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlgen.vision.backbones import BackboneInputError, create_backbone, create_model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    plain = create_model("alexnet")
    lrn = create_model("alexnet", lrn=True)
    lrn.load_state_dict(plain.state_dict())  # same keys: the LRN has no parameters
    return plain.eval(), lrn.eval()


def test_parameter_count_and_layout(models):
    plain, lrn = models
    assert n_params(plain) == n_params(lrn) == 61_100_840
    sd = plain.state_dict()
    expected = [f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]
    assert list(sd) == expected == list(lrn.state_dict())
    assert tuple(sd["features.0.weight"].shape) == (64, 3, 11, 11)
    assert tuple(sd["features.10.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sd["classifier.1.weight"].shape) == (4096, 256 * 6 * 6)
    assert tuple(sd["classifier.6.weight"].shape) == (1000, 4096)


def paper_lrn(a: torch.Tensor, n=5, k=2.0, alpha=1e-4, beta=0.75) -> torch.Tensor:
    """Section 3.3: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        denom = (k + alpha * (a[:, lo : hi + 1] ** 2).sum(dim=1)) ** beta
        out[:, i] = a[:, i] / denom
    return out


def test_lrn_follows_the_paper(models):
    plain, lrn = models
    x = torch.randn(2, 3, 63, 63) * 20  # large activations, so the normalisation matters
    with torch.no_grad():
        relu1 = plain.features[:2](x)
        normed = lrn.features[:2](x)
        torch.testing.assert_close(normed, paper_lrn(relu1))
        assert not torch.allclose(normed, relu1)
        # Then conv2 -> ReLU -> LRN before pool2, as in the paper.
        assert isinstance(lrn.features[4][1], nn.LocalResponseNorm)
        pooled = lrn.features[2](normed)
        relu2 = plain.features[3:5](pooled)
        torch.testing.assert_close(lrn.features[3:5](pooled), paper_lrn(relu2))
        assert lrn(x).shape == (2, 1000)


def test_stages_at_the_pools():
    b = create_backbone("alexnet").eval()
    assert [(f.stage, f.channels, f.reduction) for f in b.feature_info] == [
        ("pool1", 64, 8),
        ("pool2", 192, 16),
        ("pool3", 256, 32),
    ]
    with torch.no_grad():
        stages = b.forward_stages(torch.randn(1, 3, 224, 224))
    # Unpadded pools: 224 -> 55 (conv1) -> 27 -> 13 -> 6, torchvision's sizes.
    assert [tuple(s.shape[1:]) for s in stages] == [(64, 27, 27), (192, 13, 13), (256, 6, 6)]


def test_minimum_size_63():
    b = create_backbone("alexnet", in_channels=1)
    assert b.min_input_size == (63, 63)
    assert b(torch.randn(2, 1, 63, 63)).shape == (2, 256, 1, 1)
    with pytest.raises(BackboneInputError, match=r"'alexnet' needs images of at least 63x63"):
        b(torch.randn(2, 1, 62, 62))


def test_head_reset_and_adaptive_pool(models):
    plain, _ = models
    x = torch.randn(2, 3, 100, 80)  # any size >= 63: the 6x6 adaptive pool feeds the head
    with torch.no_grad():
        assert plain(x).shape == (2, 1000)
        assert plain.forward_head(plain.forward_features(x), pre_logits=True).shape == (2, 4096)
    m = create_model("alexnet", num_classes=10, lrn=True)
    m.reset_classifier(4)
    assert m.classifier[6].out_features == 4 and m(x).shape == (2, 4)
