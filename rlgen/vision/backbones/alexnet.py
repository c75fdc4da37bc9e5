"""AlexNet: Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks" (NeurIPS 2012), in torchvision's single-tower form (64-192-384-256-256 conv
widths, from Krizhevsky's "One weird trick" paper, 2014).

``lrn=True`` restores the paper's local response normalization (n 5, alpha 1e-4, beta 0.75,
k 2, in the paper's formula) after the ReLUs of conv1 and conv2, before their pools. It has
no parameters and sits inside the ReLU's slot of ``features``, so the parameter names and
count (61,100,840 for 1000 classes) stay torchvision's and its checkpoints load either way.

Backbone stages (``feature_info``) are the outputs of the three max-pools: ``pool1`` (64, /8),
``pool2`` (192, /16), ``pool3`` (256, /32). The convs and pools are unpadded (conv1 pads 2),
so a stage is smaller than ``H / r``: 224 -> 27, 13, 6. The smallest image is 63x63.
"""

from __future__ import annotations

import torch
from torch import nn

from rlgen.vision.backbones import register_backbone, register_model
from rlgen.vision.backbones.base import Backbone, FeatureInfo, SequentialHeadMixin
from rlgen.vision.backbones.weights import load_weights

#: the paper's constants (section 3.3): n 5 neighbouring channels, k 2, alpha 1e-4, beta 0.75
LRN_SIZE, LRN_K, LRN_ALPHA, LRN_BETA = 5, 2.0, 1e-4, 0.75


def local_response_norm() -> nn.LocalResponseNorm:
    """The paper's ``b = a / (k + alpha * sum over 5 channels of a^2) ** beta``.

    ``nn.LocalResponseNorm`` (like Caffe) divides its ``alpha`` by the window size, so the
    paper's alpha is passed multiplied by 5; ``alpha=1e-4`` there would normalise 5x less.
    """
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


def _relu(lrn: bool) -> nn.Module:
    if not lrn:
        return nn.ReLU(inplace=True)
    return nn.Sequential(nn.ReLU(inplace=True), local_response_norm())


class AlexNetBackbone(Backbone):
    """AlexNet's five convs and three max-pools (torchvision's ``features``)."""

    #: index in ``features`` of each stage's pool
    STAGE_ENDS = (2, 5, 12)

    def __init__(self, in_channels: int = 3, lrn: bool = False):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        self.lrn = lrn
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
            _relu(lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            _relu(lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.feature_info = [
            FeatureInfo("pool1", 64, 8),
            FeatureInfo("pool2", 192, 16),
            FeatureInfo("pool3", 256, 32),
        ]
        # Each 3x3/2 pool needs 3 pixels: pool3 <- 3, pool2 <- 7, pool1 <- 15 after conv1,
        # and conv1 (11x11/4, pad 2) gives (H - 7) // 4 + 1 >= 15 from H >= 63.
        self.min_input_size = (63, 63)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        stages = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.STAGE_ENDS:
                stages.append(x)
        return stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.features(x)


class AlexNet(SequentialHeadMixin, AlexNetBackbone):
    """AlexNet classifier: ``features`` + 6x6 adaptive average pool + ``classifier``."""

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, lrn: bool = False
    ):
        super().__init__(in_channels, lrn)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.num_features = 4096
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )



@register_backbone("alexnet")
def alexnet_backbone(in_channels: int = 3, lrn: bool = False, **kwargs) -> AlexNetBackbone:
    """AlexNet convolutional trunk, 256 channels at /32 (``lrn=True``: the paper's LRN)."""
    net = AlexNetBackbone(in_channels=in_channels, lrn=lrn, **kwargs)
    net.name = "alexnet"
    return net


@register_model("alexnet")
def alexnet(
    num_classes: int = 1000, in_channels: int = 3, *, weights=None, lrn: bool = False, **kwargs
) -> AlexNet:
    """AlexNet classifier, 61.1M parameters (torchvision layout; ``lrn=True``: the paper's LRN)."""
    net = AlexNet(num_classes=num_classes, in_channels=in_channels, lrn=lrn, **kwargs)
    net.name = "alexnet"
    if weights is not None:
        load_weights(net, weights)
    return net
