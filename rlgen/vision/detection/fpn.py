"""Feature pyramid network (Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017, section 3): a 1x1 lateral convolution on each chosen backbone stage brings it to
``out_channels``; from the coarsest level down, each level adds the 2x nearest-neighbour
upsampled level above it (the top-down pathway; upsampled to the exact size below, so odd sizes
work); a 3x3 convolution on each sum gives the output maps (P2, P3, ... in the paper's names),
all with ``out_channels`` (256 in the paper) and the strides of their stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeaturePyramid"]


class FeaturePyramid(nn.Module):
    """Maps stage outputs (finest first) to as many ``out_channels`` maps of the same sizes."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        if not in_channels:
            raise ValueError("a feature pyramid needs at least one stage")
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                    for _ in in_channels)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)  # as the reference implementations
                nn.init.zeros_(m.bias)

    def forward(self, stages: Sequence[Tensor]) -> list[Tensor]:
        if len(stages) != len(self.lateral):
            raise ValueError(f"feature pyramid built for {len(self.lateral)} stages, "
                             f"got {len(stages)}")
        merged = self.lateral[-1](stages[-1])
        outs = [self.output[-1](merged)]
        for i in range(len(stages) - 2, -1, -1):
            lateral = self.lateral[i](stages[i])
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](merged))
        return outs
