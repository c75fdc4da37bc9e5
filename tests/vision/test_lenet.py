"""LeNet-5 (LeCun et al. 1998): exact parameter counts, Table I, RBF output, MAP loss."""

import pytest
import torch
import torch.nn.functional as F

from rlgen.registry import BACKBONES, MODELS
from rlgen.vision.backbones import BackboneInputError, create_backbone, create_model
from rlgen.vision.backbones.lenet import C3_TABLE, lenet5_map_loss, rbf_codes, squash


def n_params(module, trainable_only=True):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def test_registered():
    for name in ("lenet5", "lenet5_modern"):
        assert name in BACKBONES and name in MODELS


def test_lenet5_parameter_counts_per_layer_match_the_paper():
    model = create_model("lenet5", num_classes=10, in_channels=1)
    b = model.backbone
    assert n_params(b.c1) == 6 * (5 * 5 + 1) == 156
    assert n_params(b.s2) == 6 * 2 == 12  # one coefficient + one bias per map
    # Table I: 6 maps read 3 inputs, 9 maps read 4, 1 map reads 6 -> 60 kernels of 5x5
    assert n_params(b.c3) == (6 * 3 + 9 * 4 + 1 * 6) * 25 + 16 == 1516
    assert n_params(b.s4) == 16 * 2 == 32
    assert n_params(b.c5) == 120 * (16 * 25 + 1) == 48120
    assert n_params(model.hidden) == 84 * (120 + 1) == 10164  # F6
    assert n_params(model.fc) == 0  # RBF codes are fixed
    assert n_params(model) == 60000
    assert n_params(model, trainable_only=False) == 60000  # nothing frozen-but-parameter


def test_lenet5_c3_follows_table_one():
    b = create_backbone("lenet5", in_channels=1)
    dense = b.c3.dense_weight()
    assert dense.shape == (16, 6, 5, 5)
    connected = dense.abs().sum(dim=(2, 3)) > 0
    expected = torch.zeros(16, 6, dtype=torch.bool)
    for out_map, inputs in enumerate(C3_TABLE):
        expected[out_map, list(inputs)] = True
    assert torch.equal(connected, expected)
    # The paper's table, column by column (C3 map: S2 maps)
    assert C3_TABLE[0] == (0, 1, 2) and C3_TABLE[4] == (0, 4, 5) and C3_TABLE[9] == (0, 3, 4, 5)
    assert C3_TABLE[12] == (0, 1, 3, 4) and C3_TABLE[14] == (0, 2, 3, 5)
    assert C3_TABLE[15] == (0, 1, 2, 3, 4, 5)
    # An S2 map that a C3 map does not read has no influence on it.
    s2 = torch.zeros(1, 6, 14, 14, requires_grad=True)
    b.c3(s2)[0, 0].sum().backward()  # map 0 reads S2 maps 0, 1, 2
    influence = s2.grad.abs().sum(dim=(0, 2, 3)) > 0
    assert influence.tolist() == [True, True, True, False, False, False]


def test_lenet5_trainable_subsampling_and_squashing():
    b = create_backbone("lenet5", in_channels=1)
    with torch.no_grad():
        b.s2.weight.copy_(torch.arange(1.0, 7.0))
        b.s2.bias.fill_(0.5)
    x = torch.randn(2, 6, 4, 4)
    blocks = x.reshape(2, 6, 2, 2, 2, 2).sum(dim=(3, 5))  # 2x2 sums
    expected = blocks * torch.arange(1.0, 7.0).view(1, 6, 1, 1) + 0.5
    torch.testing.assert_close(b.s2(x), expected)
    # f(a) = 1.7159 tanh(2a/3) is built so that f(1) = 1, f(-1) = -1
    torch.testing.assert_close(squash(torch.tensor([1.0, -1.0])), torch.tensor([1.0, -1.0]),
                               atol=1e-4, rtol=0)  # fmt: skip


def test_lenet5_stage_shapes_and_feature_info():
    b = create_backbone("lenet5", in_channels=1)
    assert b.min_input_size == (32, 32)
    stages = b.forward_stages(torch.randn(2, 1, 32, 32))
    assert [tuple(s.shape[1:]) for s in stages] == [
        (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120, 1, 1)
    ]  # fmt: skip
    assert [(f.stage, f.channels, f.reduction) for f in b.feature_info] == [
        ("c1", 6, 1), ("s2", 6, 2), ("c3", 16, 2), ("s4", 16, 4), ("c5", 120, 4)
    ]  # fmt: skip
    assert b.out_channels == 120
    # squashing bounds every stage output
    assert all(s.abs().max() <= 1.7159 for s in stages)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_modern"])
def test_lenet5_wrong_inputs_name_the_backbone(name):
    b = create_backbone(name, in_channels=1)
    with pytest.raises(BackboneInputError, match=rf"'{name}'.*32x32.*28x28 in \(2, 1, 28, 28\)"):
        b(torch.randn(2, 1, 28, 28))
    with pytest.raises(BackboneInputError, match=rf"'{name}'.*1 input channels.*got 3 channels"):
        b(torch.randn(2, 3, 32, 32))
    with pytest.raises(BackboneInputError, match="4-D"):
        b(torch.randn(1, 32, 32))


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_lenet5_any_in_channels(in_channels):
    model = create_model("lenet5", num_classes=10, in_channels=in_channels)
    assert n_params(model) == 60000 + 6 * 25 * (in_channels - 1)
    assert model(torch.randn(2, in_channels, 32, 32)).shape == (2, 10)
    # larger images: C5 is then more than 1x1 and gets averaged
    assert model(torch.randn(2, in_channels, 40, 36)).shape == (2, 10)


def test_lenet5_rbf_output_and_logits():
    model = create_model("lenet5", num_classes=10, in_channels=1)
    codes = model.fc.codes
    assert codes.shape == (10, 84) and not codes.requires_grad
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert len({tuple(c.tolist()) for c in codes}) == 10
    assert "fc.codes" in model.state_dict()  # fixed, but carried by checkpoints
    assert torch.equal(codes, create_model("lenet5", num_classes=10, in_channels=1).fc.codes)
    assert torch.equal(rbf_codes(10), codes)

    x = torch.randn(3, 1, 32, 32)
    distances = model.rbf_distances(x)
    f6 = model.forward_head(model.forward_features(x), pre_logits=True)
    assert f6.shape == (3, 84)
    manual = ((f6[:, None, :] - codes[None]) ** 2).sum(-1)
    torch.testing.assert_close(distances, manual)
    logits = model(x)
    torch.testing.assert_close(logits, -distances)
    assert torch.equal(logits.argmax(1), distances.argmin(1))

    model.reset_classifier(5)
    assert model.num_classes == 5 and model(x).shape == (3, 5)
    assert n_params(model) == 60000
    model.reset_classifier(0)
    assert model(x).shape == (3, 84)


def test_lenet5_map_loss():
    torch.manual_seed(0)
    distances = torch.rand(4, 10) * 50
    target = torch.tensor([0, 3, 9, 3])
    j = 7.0
    per_example = []
    for p in range(4):
        rubbish = torch.exp(torch.tensor(-j))
        per_example.append(
            distances[p, target[p]] + torch.log(rubbish + torch.exp(-distances[p]).sum())
        )
    manual = torch.stack(per_example).mean()
    torch.testing.assert_close(lenet5_map_loss(distances, target, j), manual)
    # the "rubbish class" term only ever adds to cross-entropy, and vanishes as j grows
    ce = F.cross_entropy(-distances, target)
    assert lenet5_map_loss(distances, target, j) > ce
    torch.testing.assert_close(lenet5_map_loss(distances, target, 1e4), ce)
    with pytest.raises(ValueError, match="positive"):
        lenet5_map_loss(distances, target, 0.0)


def test_lenet5_modern_parameter_count_and_shapes():
    model = create_model("lenet5_modern", num_classes=10, in_channels=1)
    # C1 6*(25+1) + C3 16*(6*25+1) + C5 120*(16*25+1) + F6 84*(120+1) + out 10*(84+1)
    assert n_params(model) == 156 + 2416 + 48120 + 10164 + 850 == 61706
    stages = model.backbone.forward_stages(torch.randn(2, 1, 32, 32))
    assert [tuple(s.shape[1:]) for s in stages][-1] == (120, 1, 1)
    assert (stages[0] >= 0).all()  # ReLU
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_lenet5_learns_a_small_batch():
    """Cross-entropy on the negative RBF distances trains the classic network."""
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    # ten easy classes, a bright bar at a class-dependent place (the paper's -0.1 / 1.175 levels)
    x = torch.full((30, 1, 32, 32), -0.1)
    y = torch.arange(30) % 10
    for k in range(30):
        r, c = divmod(int(y[k]), 5)
        x[k, 0, 4 + 12 * r : 12 + 12 * r, 2 + 6 * c : 6 + 6 * c] = 1.175
    x = x + 0.1 * torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = F.cross_entropy(model(x), y).item()
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    assert (model(x).argmax(1) == y).float().mean() >= 0.9
