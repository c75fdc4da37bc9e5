"""MLP backbone for vector observations: parameter counts, stages, input errors."""

import pytest
import torch

from rlgen.registry import BACKBONES
from rlgen.vision.backbones import BackboneInputError, create_backbone


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_default_is_cleanrl_cartpole_torso():
    assert "mlp" in BACKBONES
    b = create_backbone("mlp", in_channels=4)  # CartPole observation: 4 numbers
    assert b.input_ndim == 2 and b.in_channels == 4 and b.name == "mlp"
    # 4 -> 120 -> 84
    assert n_params(b) == (4 * 120 + 120) + (120 * 84 + 84) == 10764
    assert [(f.stage, f.channels, f.reduction) for f in b.feature_info] == [
        ("fc1", 120, 1), ("fc2", 84, 1)
    ]  # fmt: skip
    assert b.out_channels == 84


def test_stages_and_features():
    torch.manual_seed(0)
    b = create_backbone("mlp", in_channels=6, hidden_sizes=(32, 16, 8))
    x = torch.randn(5, 6)
    stages = b.forward_stages(x)
    assert [tuple(s.shape) for s in stages] == [(5, 32), (5, 16), (5, 8)]
    assert all((s >= 0).all() for s in stages)
    torch.testing.assert_close(b(x), stages[-1])
    assert b.feature_shape((6,)) == (8,)
    assert n_params(b) == (6 * 32 + 32) + (32 * 16 + 16) + (16 * 8 + 8)


def test_tanh_activation():
    b = create_backbone("mlp", in_channels=3, hidden_sizes=(10,), activation="tanh")
    out = b(torch.randn(4, 3) * 100)
    assert (out.abs() <= 1).all() and (out < 0).any()


def test_wrong_inputs_are_clear_errors():
    b = create_backbone("mlp", in_channels=4)
    with pytest.raises(BackboneInputError, match=r"'mlp'.*\(N, 4\).*got \(2, 5\)"):
        b(torch.randn(2, 5))
    with pytest.raises(BackboneInputError, match=r"'mlp'.*\(N, 4\).*got \(2, 1, 4\)"):
        b(torch.randn(2, 1, 4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_channels": 0}, "observation size"),
        ({"in_channels": 4, "hidden_sizes": ()}, "non-empty"),
        ({"in_channels": 4, "hidden_sizes": (8, 0)}, "positive"),
        ({"in_channels": 4, "activation": "gelu"}, "activation"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_backbone("mlp", **kwargs)
