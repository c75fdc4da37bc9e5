"""The convolutional torso of the DQN network of Mnih et al., "Human-level control through deep
reinforcement learning", Nature 518, 2015.

Three valid (unpadded) convolutions, each followed by a ReLU:

=====  =========================  ============  =========  =====================
stage  layer                      out at 84x84  reduction  params (4 frames in)
=====  =========================  ============  =========  =====================
conv1  32 filters 8x8, stride 4   32x20x20      4          32*(4*64+1) = 8,224
conv2  64 filters 4x4, stride 2   64x9x9        8          64*(32*16+1) = 32,832
conv3  64 filters 3x3, stride 1   64x7x7        8          64*(64*9+1) = 36,928
=====  =========================  ============  =========  =====================

With valid padding a convolution maps ``n`` pixels to ``floor((n - k) / s) + 1``, so the spatial
size is *not* ``input / reduction``: 84 -> (84-8)//4+1 = 20 -> (20-4)//2+1 = 9 -> 9-3+1 = 7. The
``reduction`` in ``feature_info`` is the product of strides (the distance in input pixels between
neighbouring output units). The smallest input for which all three layers keep at least one
unit is 36x36 (36 -> 8 -> 3 -> 1).

The 512-unit fully connected layer and the Q-value output belong to the Q-network head
(``rlgen.agents.dqn``), not to this backbone. The input is a stack of the last ``in_channels``
frames (4 in the paper).

``normalize_input=True`` (the default) treats the input as raw pixel values in [0, 255]: uint8
(or float) input is cast to the weights' dtype and divided by 255 inside ``forward``, so replay
buffers can keep frames as uint8 and feed them straight in (CleanRL does ``x / 255.0`` in the
same place). With ``normalize_input=False`` the input must already be floating point and is used
unchanged. Weights keep PyTorch's default initialization, as CleanRL's DQN does.
"""

from __future__ import annotations

import torch

from rlgen.vision.backbones import register_backbone
from rlgen.vision.backbones.base import Backbone, BackboneInputError, FeatureInfo
from rlgen.vision.layers import ConvBNAct


class NatureCNN(Backbone):
    """DQN (Nature 2015) convolutions: 32@8x8/4, 64@4x4/2, 64@3x3/1, ReLU; 84x84 -> 64x7x7."""

    def __init__(self, in_channels: int = 4, normalize_input: bool = True):
        super().__init__()
        self.name = "nature_cnn"
        self.in_channels = in_channels
        self.normalize_input = normalize_input
        self.min_input_size = (36, 36)
        self.feature_info = [
            FeatureInfo("conv1", 32, 4),
            FeatureInfo("conv2", 64, 8),
            FeatureInfo("conv3", 64, 8),
        ]
        self.conv1 = ConvBNAct(in_channels, 32, 8, stride=4, padding=0, norm=False)
        self.conv2 = ConvBNAct(32, 64, 4, stride=2, padding=0, norm=False)
        self.conv3 = ConvBNAct(64, 64, 3, stride=1, padding=0, norm=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        dtype = self.conv1.conv.weight.dtype
        if self.normalize_input:
            return x.to(dtype) / 255.0
        if not x.is_floating_point():
            raise BackboneInputError(
                f"backbone {self.name!r} was built with normalize_input=False and needs floating "
                f"point input, got {x.dtype}; build it with normalize_input=True to feed raw "
                f"uint8 frames"
            )
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._prepare(x)
        c1 = self.conv1(x)
        c2 = self.conv2(c1)
        return [c1, c2, self.conv3(c2)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(self._prepare(x))))

    def extra_repr(self) -> str:
        return f"normalize_input={self.normalize_input}"


@register_backbone("nature_cnn")
def nature_cnn(in_channels: int = 4, normalize_input: bool = True, **kwargs) -> NatureCNN:
    """DQN torso (Mnih et al. 2015): 3 convs for 84x84 frame stacks; uint8 input divided by 255."""
    return NatureCNN(in_channels, normalize_input=normalize_input, **kwargs)
