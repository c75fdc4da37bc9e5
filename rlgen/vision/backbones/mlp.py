"""A multilayer perceptron backbone for vector observations (CartPole, Acrobot, MinAtar
features...), under the same contract as the CNN backbones so the DQN Q-network and other
consumers take it unchanged.

Default hidden sizes (120, 84) are those of CleanRL's ``dqn.py`` Q-network for CartPole
(which in turn echo LeNet-5's C5/F6 widths). Input ``(N, in_channels)`` with ``in_channels`` the
observation size; ``input_ndim = 2``; one stage per hidden layer, each with reduction 1.
"""

from __future__ import annotations

from torch import nn

from rlgen.vision.backbones import register_backbone
from rlgen.vision.backbones.base import Backbone, FeatureInfo

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(Backbone):
    """Fully connected layers ``in_channels -> hidden_sizes[0] -> ... -> hidden_sizes[-1]``,
    each followed by the activation (ReLU by default, or tanh)."""

    input_ndim = 2

    def __init__(
        self,
        in_channels: int,
        hidden_sizes: tuple[int, ...] = (120, 84),
        activation: str = "relu",
    ):
        super().__init__()
        self.name = "mlp"
        hidden_sizes = tuple(hidden_sizes)
        if in_channels < 1:
            raise ValueError(
                f"mlp: in_channels (the observation size) must be >= 1, got {in_channels}"
            )
        if not hidden_sizes or any(h < 1 for h in hidden_sizes):
            raise ValueError(
                "mlp: hidden_sizes must be a non-empty sequence of positive ints, "
                f"got {hidden_sizes}"
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"mlp: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        self.in_channels = in_channels
        self.hidden_sizes = hidden_sizes
        self.feature_info = [FeatureInfo(f"fc{i + 1}", h, 1) for i, h in enumerate(hidden_sizes)]
        self.stages = nn.ModuleList()
        n = in_channels
        for h in hidden_sizes:
            self.stages.append(nn.Sequential(nn.Linear(n, h), _ACTIVATIONS[activation]()))
            n = h


@register_backbone("mlp")
def mlp(
    in_channels: int, hidden_sizes: tuple[int, ...] = (120, 84), activation: str = "relu", **kwargs
) -> MLP:
    """MLP for vector observations: in_channels = observation size, hidden (120, 84), ReLU."""
    return MLP(in_channels, hidden_sizes, activation, **kwargs)
