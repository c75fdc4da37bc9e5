"""VGG 11/13/16/19 (configurations A, B, D, E), with or without batch norm: Simonyan and
Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015);
the ``_bn`` variants add batch norm after every conv as torchvision does.

The architectures are data: each configuration is a list of conv widths with ``"M"`` for a
2x2 max-pool. Backbone ``vgg16`` is ``features`` only; its stages (``feature_info``) are the
outputs of the five pooling blocks, ``block1`` /2 ... ``block5`` /32, each exactly
``H // r`` pixels high (3x3 convs keep the size, each pool halves it, rounding down), so the
smallest image that goes through is 32x32. Model ``vgg16`` adds torchvision's 7x7 adaptive
average pool and the three-layer classifier, with torchvision's parameter names.

``forward_stages(x, return_indices=True)`` also returns where each max-pool took its maxima
(``nn.MaxPool2d(return_indices=True)``'s indices), for SegNet's max-unpooling decoder.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.vision.backbones import register_variant
from rlgen.vision.backbones.base import Backbone, FeatureInfo, SequentialHeadMixin

Cfg = list[int | str]

# fmt: off
CFGS: dict[str, Cfg] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}
# fmt: on


class Variant(NamedTuple):
    """One registered VGG: its ``CFGS`` configuration, whether it has batch norm, and the
    docstrings of its two public builders (their first line is what ``rlgen list`` shows)."""

    cfg: str
    batch_norm: bool
    backbone_doc: str
    model_doc: str


VARIANTS: dict[str, Variant] = {
    "vgg11": Variant(
        "A",
        False,
        "VGG-11 (configuration A) convolutional trunk, 512 channels at /32.",
        "VGG-11 classifier, 132.9M parameters (torchvision layout).",
    ),
    "vgg13": Variant(
        "B",
        False,
        "VGG-13 (configuration B) convolutional trunk, 512 channels at /32.",
        "VGG-13 classifier, 133.0M parameters (torchvision layout).",
    ),
    "vgg16": Variant(
        "D",
        False,
        "VGG-16 (configuration D) convolutional trunk, 512 channels at /32.",
        "VGG-16 classifier, 138.4M parameters (torchvision layout).",
    ),
    "vgg19": Variant(
        "E",
        False,
        "VGG-19 (configuration E) convolutional trunk, 512 channels at /32.",
        "VGG-19 classifier, 143.7M parameters (torchvision layout).",
    ),
    "vgg11_bn": Variant(
        "A",
        True,
        "VGG-11 trunk with batch norm, 512 channels at /32.",
        "VGG-11 classifier with batch norm (torchvision layout).",
    ),
    "vgg13_bn": Variant(
        "B",
        True,
        "VGG-13 trunk with batch norm, 512 channels at /32.",
        "VGG-13 classifier with batch norm (torchvision layout).",
    ),
    "vgg16_bn": Variant(
        "D",
        True,
        "VGG-16 trunk with batch norm, 512 channels at /32.",
        "VGG-16 classifier with batch norm (torchvision layout).",
    ),
    "vgg19_bn": Variant(
        "E",
        True,
        "VGG-19 trunk with batch norm, 512 channels at /32.",
        "VGG-19 classifier with batch norm (torchvision layout).",
    ),
}


def make_layers(cfg: Cfg, batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
    """Turn a configuration into ``features``: 3x3 conv (+BN) + ReLU per width, pool per "M"."""
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        channels = int(v)
    return nn.Sequential(*layers)


class VGGBackbone(Backbone):
    """The convolutional part of VGG (torchvision's ``features``)."""

    def __init__(self, cfg: Cfg, batch_norm: bool = False, in_channels: int = 3):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        self.features = make_layers(cfg, batch_norm, in_channels)
        self.feature_info = []
        self._stage_ends: list[int] = []  # index in ``features`` of each block's pool
        channels = in_channels
        for i, m in enumerate(self.features):
            if isinstance(m, nn.Conv2d):
                channels = m.out_channels
            elif isinstance(m, nn.MaxPool2d):
                self._stage_ends.append(i)
                n = len(self._stage_ends)
                self.feature_info.append(FeatureInfo(f"block{n}", channels, 2**n))
        # Each unpadded 2x2 pool needs at least 2 pixels: 2**(number of pools).
        self.min_input_size = (self.reduction, self.reduction)
        self._init_features()

    def _init_features(self) -> None:
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stages(
        self, x: torch.Tensor, return_indices: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The five pooled block outputs; with ``return_indices=True``, ``(stages, indices)``
        where ``indices[k]`` holds, for each value of ``stages[k]``, its flat position in the
        ``H * W`` plane of the map that block's pool read (what ``nn.MaxUnpool2d`` takes)."""
        self.check_input(x)
        stages, indices = [], []
        ends = set(self._stage_ends)
        for i, layer in enumerate(self.features):
            if return_indices and i in ends:
                # The functional form of the same pool, so ``features`` stays torchvision's
                # plain ``MaxPool2d`` (and its state dict and printout) either way.
                x, where = F.max_pool2d(
                    x, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                    ceil_mode=layer.ceil_mode, return_indices=True)
                indices.append(where)
            else:
                x = layer(x)
            if i in ends:
                stages.append(x)
        return (stages, indices) if return_indices else stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.features(x)


class VGG(SequentialHeadMixin, VGGBackbone):
    """VGG classifier: ``features`` + 7x7 adaptive average pool + ``classifier`` (4096-4096-n)."""

    def __init__(
        self,
        cfg: Cfg,
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
    ):
        super().__init__(cfg, batch_norm, in_channels)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.num_features = 4096
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(self.out_channels * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                _init_linear(m)

    def init_output_layer(self, layer: nn.Linear) -> None:
        _init_linear(layer)


def _init_linear(m: nn.Linear) -> None:
    nn.init.normal_(m.weight, 0.0, 0.01)
    nn.init.zeros_(m.bias)


def _register_variant(name: str):
    cfg, batch_norm, backbone_doc, model_doc = VARIANTS[name]
    return register_variant(
        name, functools.partial(VGG, CFGS[cfg], batch_norm),
        functools.partial(VGGBackbone, CFGS[cfg], batch_norm),
        model_doc=model_doc, backbone_doc=backbone_doc)


# One public builder pair per variant, as torchvision has. A new variant needs its row in
# ``VARIANTS`` and its line here.
vgg11, vgg11_backbone = _register_variant("vgg11")
vgg11_bn, vgg11_bn_backbone = _register_variant("vgg11_bn")
vgg13, vgg13_backbone = _register_variant("vgg13")
vgg13_bn, vgg13_bn_backbone = _register_variant("vgg13_bn")
vgg16, vgg16_backbone = _register_variant("vgg16")
vgg16_bn, vgg16_bn_backbone = _register_variant("vgg16_bn")
vgg19, vgg19_backbone = _register_variant("vgg19")
vgg19_bn, vgg19_bn_backbone = _register_variant("vgg19_bn")
