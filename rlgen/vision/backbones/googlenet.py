"""GoogLeNet (Inception v1): Szegedy et al., "Going Deeper with Convolutions" (CVPR 2015),
in torchvision's form: every conv is followed by batch norm (eps 0.001) and ReLU, the
max-pools round up (``ceil_mode``), and the "5x5" branch of each Inception block is a 3x3 conv
(torchvision's long-standing choice, kept so its checkpoints and its 6,624,904 parameters match).

An Inception block runs four branches side by side and concatenates them: a 1x1 conv; a 1x1
reduction then a 3x3 conv; a 1x1 reduction then a second 3x3 conv; a 3x3 max-pool then a 1x1
projection. The 1x1 reductions keep the expensive convs narrow.

Backbone stages (``feature_info``): ``conv1`` (64, /2), ``conv3`` (192, /4), ``inception3``
(480, /8), ``inception4`` (832, /16), ``inception5`` (1024, /32). The padded convs and ceil-mode
pools make each stage ``ceil(H / r)`` pixels high (exactly ``H // r`` when ``H`` is a multiple
of 32); the smallest image is 15x15.

The classifier ``googlenet`` adds global average pooling, dropout 0.2 and ``fc``; with
``aux_logits=True`` it also has the paper's two auxiliary heads (``aux1`` on inception4a,
``aux2`` on inception4d) and, in training mode, returns ``GoogLeNetOutputs(logits,
aux_logits2, aux_logits1)`` as torchvision does (weight the auxiliary losses by 0.3).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.vision.backbones import register_backbone, register_model
from rlgen.vision.backbones.base import Backbone, FeatureInfo
from rlgen.vision.backbones.weights import load_weights


class GoogLeNetOutputs(NamedTuple):
    logits: torch.Tensor
    aux_logits2: torch.Tensor | None
    aux_logits1: torch.Tensor | None


class BasicConv2d(nn.Module):
    """Conv (no bias: the batch norm has one) + batch norm (eps 0.001) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four parallel branches concatenated along channels:
    ``ch1x1 + ch3x3 + ch5x5 + pool_proj`` output channels."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ):
        super().__init__()
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            # 3x3, not the paper's 5x5: torchvision's layout (see the module docstring).
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool, 1x1 conv to 128, fc 1024, dropout 0.7, fc."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)
        return self.fc2(self.dropout(x))


def _init_weights(module: nn.Module) -> None:
    # torchvision: truncated normal (std 0.01) for convs and linears, BN as identity.
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GoogLeNetBackbone(Backbone):
    """GoogLeNet's stem and nine Inception blocks, with torchvision's attribute names."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        # (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj): Table 1 of the paper.
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

        self.feature_info = [
            FeatureInfo("conv1", 64, 2),
            FeatureInfo("conv3", 192, 4),
            FeatureInfo("inception3", 480, 8),
            FeatureInfo("inception4", 832, 16),
            FeatureInfo("inception5", 1024, 32),
        ]
        # A ceil-mode 3x3/2 pool needs 2 pixels (1 gives an empty output): maxpool3 <- 2,
        # maxpool2 <- 4, maxpool1 <- 8, and conv1 (7x7/2, pad 3) gives ceil(H / 2) >= 8 from 15.
        self.min_input_size = (15, 15)
        _init_weights(self)

    def _stage2(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.maxpool1(x)))

    def _stage3(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception3b(self.inception3a(self.maxpool2(x)))

    def _stage4(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception4a(self.maxpool3(x))
        return self.inception4e(self.inception4d(self.inception4c(self.inception4b(x))))

    def _stage5(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception5b(self.inception5a(self.maxpool4(x)))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        s1 = self.conv1(x)
        s2 = self._stage2(s1)
        s3 = self._stage3(s2)
        s4 = self._stage4(s3)
        return [s1, s2, s3, s4, self._stage5(s4)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self._stage5(self._stage4(self._stage3(self._stage2(self.conv1(x)))))


class GoogLeNet(GoogLeNetBackbone):
    """GoogLeNet classifier with torchvision's parameter names (``aux1``/``aux2`` only when
    ``aux_logits=True``). ``transform_input=True`` re-normalizes ImageNet-normalized input the
    way torchvision's pretrained GoogLeNet expects."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        aux_logits: bool = False,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ):
        super().__init__(in_channels)
        if transform_input and in_channels != 3:
            raise ValueError(f"transform_input needs 3 (RGB) input channels, got {in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.num_features = 1024
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        if aux_logits:
            self.aux1: InceptionAux | None = InceptionAux(512, num_classes, dropout_aux)
            self.aux2: InceptionAux | None = InceptionAux(528, num_classes, dropout_aux)
            _init_weights(self.aux1)
            _init_weights(self.aux2)
        else:
            self.aux1 = None
            self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        _init_weights(self.fc)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        # From (x - ImageNet mean) / ImageNet std to (x - 0.5) / 0.5, per RGB channel.
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.transform_input:
            x = self._transform(x)
        return super().forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        if not (self.training and self.aux_logits):
            return self.forward_head(self.forward_features(x))
        # Training with auxiliary heads: tap inception4a and inception4d on the way.
        self.check_input(x)
        if self.transform_input:
            x = self._transform(x)
        x = self._stage3(self._stage2(self.conv1(x)))
        x = self.inception4a(self.maxpool3(x))
        aux1 = self.aux1(x)
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x)
        x = self._stage5(self.inception4e(x))
        return GoogLeNetOutputs(self.forward_head(x), aux2, aux1)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` (and the auxiliary heads' ``fc2``) by fresh layers."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        p = self.fc.weight
        self.fc = nn.Linear(1024, num_classes, device=p.device, dtype=p.dtype)
        _init_weights(self.fc)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = nn.Linear(1024, num_classes, device=p.device, dtype=p.dtype)
                _init_weights(aux.fc2)


@register_backbone("googlenet")
def googlenet_backbone(in_channels: int = 3, **kwargs) -> GoogLeNetBackbone:
    """GoogLeNet (Inception v1) trunk, 1024 channels at /32."""
    net = GoogLeNetBackbone(in_channels=in_channels, **kwargs)
    net.name = "googlenet"
    return net


@register_model("googlenet")
def googlenet(
    num_classes: int = 1000, in_channels: int = 3, *, weights=None, **kwargs
) -> GoogLeNet:
    """GoogLeNet (Inception v1) classifier, 6.6M parameters (torchvision layout)."""
    net = GoogLeNet(num_classes=num_classes, in_channels=in_channels, **kwargs)
    net.name = "googlenet"
    if weights is not None:
        load_weights(net, weights)
    return net
