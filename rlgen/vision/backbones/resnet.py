"""ResNet 18/34/50/101/152: He, Zhang, Ren, Sun, "Deep Residual Learning for Image
Recognition" (CVPR 2016), in the "v1.5" form torchvision uses (a Bottleneck's stride sits on
its 3x3 conv, not on the first 1x1 conv, which is a little more accurate).

Two registered things per variant:

- backbone ``resnet50`` (``create_backbone``): the convolutional trunk. Stages, as
  ``feature_info``: ``stem`` (conv1-bn1-relu, /2), ``layer1`` (after the max-pool, /4),
  ``layer2`` /8, ``layer3`` /16, ``layer4`` /32. Every downsampling step is a padded stride-2
  conv or pool, so a stage of reduction ``r`` is ``ceil(H / r)`` pixels high (exactly
  ``H // r`` when ``H`` is a multiple of 32); any image of at least 1x1 goes through.
- model ``resnet50`` (``create_model``): backbone + global average pool + ``fc``; its
  ``state_dict`` has torchvision's key names and shapes: torchvision checkpoints load as is.

Only the first conv depends on ``in_channels`` (1 for MNIST, 4 for Atari frame stacks).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn

from rlgen.vision.backbones import register_variant
from rlgen.vision.backbones.base import Backbone, FeatureInfo


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and an identity (or 1x1 projection) shortcut: ResNet-18/34."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4: ResNet-50/101/152."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


class ResNetBackbone(Backbone):
    """The ResNet trunk: stem (conv1, bn1, relu, maxpool) and layer1..layer4."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {layers}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        e = block.expansion
        self.feature_info = [
            FeatureInfo("stem", 64, 2),
            FeatureInfo("layer1", 64 * e, 4),
            FeatureInfo("layer2", 128 * e, 8),
            FeatureInfo("layer3", 256 * e, 16),
            FeatureInfo("layer4", 512 * e, 32),
        ]
        # Padded stride-2 convs/pools map any H >= 1 to ceil(H / 2) >= 1.
        self.min_input_size = (1, 1)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity
            # (Goyal et al., "Accurate, Large Minibatch SGD", 2017).
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [stem, c1, c2, c3, c4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNet(ResNetBackbone):
    """ResNet classifier: the trunk plus global average pooling and ``fc``, with torchvision's
    parameter names. ``forward`` returns logits; ``forward_features`` the last feature map."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ):
        super().__init__(block, layers, in_channels, zero_init_residual)
        self.num_features = 512 * block.expansion
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised one with ``num_classes`` outputs."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        p = self.fc.weight
        self.fc = nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype)


class _Variant(NamedTuple):
    """One ResNet depth: its block type and per-stage block counts, and the docstrings of its
    two public builders (their first line is what ``rlgen list`` shows)."""

    block: Block
    layers: list[int]
    backbone_doc: str
    model_doc: str


_VARIANTS: dict[str, _Variant] = {
    "resnet18": _Variant(
        BasicBlock,
        [2, 2, 2, 2],
        "ResNet-18 trunk (BasicBlock 2-2-2-2), 512 channels at /32.",
        "ResNet-18 classifier, 11.7M parameters (torchvision layout).",
    ),
    "resnet34": _Variant(
        BasicBlock,
        [3, 4, 6, 3],
        "ResNet-34 trunk (BasicBlock 3-4-6-3), 512 channels at /32.",
        "ResNet-34 classifier, 21.8M parameters (torchvision layout).",
    ),
    "resnet50": _Variant(
        Bottleneck,
        [3, 4, 6, 3],
        "ResNet-50 trunk (Bottleneck 3-4-6-3), 2048 channels at /32.",
        "ResNet-50 classifier, 25.6M parameters (torchvision layout, v1.5).",
    ),
    "resnet101": _Variant(
        Bottleneck,
        [3, 4, 23, 3],
        "ResNet-101 trunk (Bottleneck 3-4-23-3), 2048 channels at /32.",
        "ResNet-101 classifier, 44.5M parameters (torchvision layout, v1.5).",
    ),
    "resnet152": _Variant(
        Bottleneck,
        [3, 8, 36, 3],
        "ResNet-152 trunk (Bottleneck 3-8-36-3), 2048 channels at /32.",
        "ResNet-152 classifier, 60.2M parameters (torchvision layout, v1.5).",
    ),
}


def _register_variant(name: str):
    block, layers, backbone_doc, model_doc = _VARIANTS[name]
    return register_variant(
        name, functools.partial(ResNet, block, layers),
        functools.partial(ResNetBackbone, block, layers),
        model_doc=model_doc, backbone_doc=backbone_doc)


# One public builder pair per variant, as torchvision has. A new variant needs its row in
# ``_VARIANTS`` and its line here.
resnet18, resnet18_backbone = _register_variant("resnet18")
resnet34, resnet34_backbone = _register_variant("resnet34")
resnet50, resnet50_backbone = _register_variant("resnet50")
resnet101, resnet101_backbone = _register_variant("resnet101")
resnet152, resnet152_backbone = _register_variant("resnet152")
