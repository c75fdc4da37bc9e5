"""The DeepFace representation network up to L6 (Taigman, Yang, Ranzato, Wolf, "DeepFace:
Closing the Gap to Human-Level Performance in Face Verification", CVPR 2014, Fig. 2).

For the paper's 152x152 RGB aligned ("frontalized") faces, every layer followed by a ReLU:

=====  =====================================================  =========  =========
stage  layer                                                  output     reduction
=====  =====================================================  =========  =========
c1     32 filters 11x11, shared (convolution)                 32x142x142 1
m2     3x3 max pool, stride 2                                 32x71x71   2
c3     16 filters 9x9, shared                                 16x63x63   2
l4     16 filters 9x9, locally connected (unshared)           16x55x55   2
l5     16 filters 7x7, stride 2, locally connected            16x25x25   4
l6     16 filters 5x5, locally connected                      16x21x21   4
=====  =====================================================  =========  =========

The paper's F7 (4096 units) and F8 (softmax over identities) are the task head, not part of this
backbone. Details the paper leaves open, as chosen here:

- M2 pools with ``ceil_mode=True`` (Caffe-style), which is what gives the paper's 71x71
  (floor mode would give 70x70);
- the paper lists C3 filters as 9x9x16, but M2 has 32 maps, so C3 reads all 32;
- locally connected layers have one bias per output unit (nothing shared), see
  ``rlgen.vision.layers.LocallyConnected2d``.

Locally connected layers own a filter bank per output position, so the input size is fixed at
construction (``input_size``, default 152); any other size raises ``BackboneInputError``.
``min_input_size`` is that fixed size. The smallest valid ``input_size`` is 72 (L6 then 1x1).
At 152x152 with 3 input channels the backbone has 73,507,392 parameters, 99.9% of them in L4-L6.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from rlgen.vision.backbones import register_backbone
from rlgen.vision.backbones.base import Backbone, BackboneInputError, FeatureInfo
from rlgen.vision.layers import ConvBNAct, LocallyConnected2d, conv_output_size


def _pool_ceil_size(n: int, k: int = 3, s: int = 2) -> int:
    out = -(-(n - k) // s) + 1
    # PyTorch (like Caffe) drops a last window that would start in the padding; none here.
    return out if (out - 1) * s < n else out - 1


class DeepFace(Backbone):
    """DeepFace C1-M2-C3-L4-L5-L6 (Taigman et al. 2014) for a fixed ``input_size``."""

    def __init__(self, in_channels: int = 3, input_size: int | tuple[int, int] = 152):
        super().__init__()
        self.name = "deepface"
        self.in_channels = in_channels
        h, w = _pair(input_size)
        sizes = [(h, w)]  # spatial size after each stage, to build L4-L6
        for kind, k, s in (("conv", 11, 1), ("pool", 3, 2), ("conv", 9, 1), ("conv", 9, 1),
                           ("conv", 7, 2), ("conv", 5, 1)):  # fmt: skip
            prev = sizes[-1]
            size = tuple(
                _pool_ceil_size(n, k, s) if kind == "pool" else conv_output_size(n, k, s)
                for n in prev
            )
            if min(size) < 1:
                raise ValueError(
                    f"deepface: input_size {(h, w)} is too small (a layer's output would be "
                    f"{size}); the smallest input_size is 72"
                )
            sizes.append(size)
        self.input_size = (h, w)
        self.stage_sizes = sizes[1:]
        self.min_input_size = (h, w)
        self.feature_info = [
            FeatureInfo("c1", 32, 1),
            FeatureInfo("m2", 32, 2),
            FeatureInfo("c3", 16, 2),
            FeatureInfo("l4", 16, 2),
            FeatureInfo("l5", 16, 4),
            FeatureInfo("l6", 16, 4),
        ]
        self.c1 = ConvBNAct(in_channels, 32, 11, padding=0, norm=False)
        self.m2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.c3 = ConvBNAct(32, 16, 9, padding=0, norm=False)
        self.l4 = LocallyConnected2d(16, 16, sizes[3], 9)
        self.l5 = LocallyConnected2d(16, 16, sizes[4], 7, stride=2)
        self.l6 = LocallyConnected2d(16, 16, sizes[5], 5)
        self.act = nn.ReLU()

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if tuple(x.shape[2:]) != self.input_size:
            h, w = self.input_size
            got_h, got_w = x.shape[2], x.shape[3]
            hint = got_h if got_h == got_w else (got_h, got_w)
            raise BackboneInputError(
                f"backbone {self.name!r} was built for fixed {h}x{w} inputs "
                f"(N, {self.in_channels}, {h}, {w}) because its locally connected layers have a "
                f"filter per position; got {got_h}x{got_w} in {tuple(x.shape)}; build it with "
                f"input_size={hint}"
            )

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        c1 = self.c1(x)
        m2 = self.m2(c1)
        c3 = self.c3(m2)
        l4 = self.act(self.l4(c3))
        l5 = self.act(self.l5(l4))
        l6 = self.act(self.l6(l5))
        return [c1, m2, c3, l4, l5, l6]


@register_backbone("deepface")
def deepface(in_channels: int = 3, input_size: int | tuple[int, int] = 152, **kwargs) -> DeepFace:
    """DeepFace (Taigman et al. 2014) C1..L6 with locally connected layers; fixed input size."""
    return DeepFace(in_channels, input_size, **kwargs)
