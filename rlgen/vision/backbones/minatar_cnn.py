"""The convolutional torso of the DQN network of Young & Tian, "MinAtar: An Atari-Inspired
Testbed for Thorough and Reproducible Reinforcement Learning Experiments" (arXiv:1903.03176,
2019): a quarter of the Nature network for MinAtar's 10x10 grids of C binary channels.

=====  ==========================  ============  =========  ===========================
stage  layer                       out at 10x10  reduction  params (C channels in)
=====  ==========================  ============  =========  ===========================
conv   16 filters 3x3, stride 1    16x8x8        1          16*(9C+1) = 592 for C = 4
=====  ==========================  ============  =========  ===========================

followed by a ReLU; the valid convolution maps 10 -> 8, so the flattened features are
16*8*8 = 1,024. The fully connected layer of 128 rectified units and the Q-value output belong
to the Q-network head, as the 512-unit layer of ``nature_cnn`` does: ``build_q_network`` reads
``head_hidden = 128`` from this backbone, so ``QNetwork(minatar_cnn, n_actions)`` is the paper's
network. Its size, as in MinAtar's ``examples/dqn.py``: conv 16*(9C+1), fc 128*(1024+1) =
131,200, output n_actions*(128+1); for Breakout (C = 4) with its 6 actions 132,566
parameters, with the 3 of its minimal action set 132,179.

The input planes are 0/1 (MinAtar's booleans), not pixels: uint8 or bool input is cast to the
weights' dtype without any scaling. Weights keep PyTorch's default initialization, as MinAtar's
reference code does. The smallest input is 3x3 (one output cell).
"""

from __future__ import annotations

import torch
from torch import nn

from rlgen.vision.backbones import register_backbone
from rlgen.vision.backbones.base import Backbone, FeatureInfo


class MinAtarCNN(Backbone):
    """MinAtar DQN (Young & Tian 2019) convolution: 16@3x3/1 + ReLU; 10x10 -> 16x8x8."""

    #: width of the fully connected layer the paper puts after the convolution (Q-head)
    head_hidden = 128
    #: the input is 0/1 planes, not [0, 255] pixels: consumers must not divide it by 255
    input_is_pixels = False

    def __init__(self, in_channels: int = 4, channels: int = 16):
        super().__init__()
        if in_channels < 1 or channels < 1:
            raise ValueError(f"minatar_cnn: in_channels and channels must be >= 1, got "
                             f"{in_channels} and {channels}")
        self.name = "minatar_cnn"
        self.in_channels = in_channels
        self.min_input_size = (3, 3)
        self.feature_info = [FeatureInfo("conv", channels, 1)]
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=3, stride=1)
        self.act = nn.ReLU(inplace=True)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        if not x.is_floating_point():  # 0/1 planes (uint8 or bool): no scaling
            x = x.to(self.conv.weight.dtype)
        return [self.act(self.conv(x))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


@register_backbone("minatar_cnn")
def minatar_cnn(in_channels: int = 4, **kwargs) -> MinAtarCNN:
    """MinAtar DQN torso (Young & Tian 2019): 16@3x3 conv + ReLU for 10x10 binary planes."""
    return MinAtarCNN(in_channels, **kwargs)
