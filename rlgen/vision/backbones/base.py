"""The backbone contract shared by every consumer (DQN Q-networks, VAE encoders, DCGAN
discriminators, segmentation and captioning encoders, detectors).

A backbone is an ``nn.Module`` that maps an image batch ``(N, C, H, W)`` to feature maps. It
declares, per stage, the channels and the reduction (stride) relative to the input in
``feature_info``; ``forward_stages`` returns every stage's output (for skips and detectors),
``forward_features`` the last one. Vector backbones (MLPs for CartPole-like observations) follow
the same contract with ``input_ndim = 2`` and ``reduction = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class BackboneInputError(ValueError):
    """A tensor that a backbone cannot take: wrong rank, channel count or too small an image."""


@dataclass(frozen=True)
class FeatureInfo:
    """One stage of a backbone: its name, output channels and stride relative to the input."""

    stage: str
    channels: int
    reduction: int


class Backbone(nn.Module):
    """Base class: subclasses set ``in_channels``, ``feature_info``, ``min_input_size`` and
    implement ``forward_stages``. ``forward`` returns ``forward_features``."""

    name: str = "backbone"
    input_ndim: int = 4
    in_channels: int
    feature_info: list[FeatureInfo]
    #: smallest (H, W) the network can take without a stage collapsing to zero size
    min_input_size: tuple[int, int] = (1, 1)

    @property
    def out_channels(self) -> int:
        return self.feature_info[-1].channels

    @property
    def reduction(self) -> int:
        return self.feature_info[-1].reduction

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``BackboneInputError`` naming the backbone, the expected and the given shape."""
        if self.input_ndim == 2:
            if x.dim() != 2 or x.shape[1] != self.in_channels:
                raise BackboneInputError(
                    f"backbone {self.name!r} expects input of shape (N, {self.in_channels}), "
                    f"got {tuple(x.shape)}"
                )
            return
        min_h, min_w = self.min_input_size
        expected = f"(N, {self.in_channels}, H>={min_h}, W>={min_w})"
        if x.dim() != 4:
            raise BackboneInputError(
                f"backbone {self.name!r} expects a 4-D tensor {expected}, got {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise BackboneInputError(
                f"backbone {self.name!r} was built for {self.in_channels} input channels "
                f"{expected}, got {x.shape[1]} channels in {tuple(x.shape)}"
            )
        if x.shape[2] < min_h or x.shape[3] < min_w:
            raise BackboneInputError(
                f"backbone {self.name!r} needs images of at least {min_h}x{min_w} {expected}, "
                f"got {x.shape[2]}x{x.shape[3]} in {tuple(x.shape)}"
            )

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output, in order. The default runs ``self.stages`` (an
        ``nn.ModuleList``, one module per ``feature_info`` entry) one after the other; a
        backbone built another way overrides this."""
        stages = getattr(self, "stages", None)
        if stages is None:
            raise NotImplementedError(
                f"{type(self).__name__} must define self.stages or override forward_stages")
        self.check_input(x)
        outs = []
        for stage in stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def feature_shape(self, input_size: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of ``forward_features`` (without the batch) for one input of ``input_size``
        (C, H, W) or (D,), measured with one dummy forward pass rather than computed by hand."""
        return feature_shape(self, input_size)


def feature_shape(backbone: nn.Module, input_size: tuple[int, ...]) -> tuple[int, ...]:
    """``backbone.forward_features``'s output shape (without the batch) for one input of
    ``input_size``, measured with a dummy forward pass in eval mode (batch-norm statistics are
    left alone). Works for any module with ``forward_features``, ``Backbone`` subclass or not."""
    was_training = backbone.training
    backbone.eval()
    try:
        p = next(backbone.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        with torch.no_grad():
            out = backbone.forward_features(torch.zeros(1, *input_size, device=device))
    finally:
        backbone.train(was_training)
    return tuple(out.shape[1:])


class SequentialHeadMixin:
    """The torchvision-style head of AlexNet and VGG: ``avgpool`` then ``classifier``, an
    ``nn.Sequential`` whose last layer (``classifier[-1]``) is the linear output layer."""

    avgpool: nn.Module
    classifier: nn.Sequential
    num_classes: int

    def init_output_layer(self, layer: nn.Linear) -> None:
        """Initialization of a fresh output layer (default: PyTorch's)."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the output layer (``classifier[-1]``) by a fresh one with ``num_classes``."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        old = self.classifier[-1]
        p = old.weight
        self.classifier[-1] = nn.Linear(old.in_features, num_classes, device=p.device,
                                        dtype=p.dtype)
        self.init_output_layer(self.classifier[-1])
