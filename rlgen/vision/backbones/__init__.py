"""CNN backbones registered by name; ``create_backbone`` / ``create_model`` build them."""

from rlgen.vision.backbones.base import Backbone, BackboneInputError, FeatureInfo
from rlgen.registry import BACKBONES, MODELS


def create_backbone(name: str, in_channels: int = 3, **kwargs) -> Backbone:
    """Build the backbone registered as ``name`` for ``in_channels`` input channels."""
    backbone = BACKBONES.create(name, in_channels=in_channels, **kwargs)
    backbone.name = name
    return backbone


def register_backbone(name: str | None = None, *, description: str | None = None):
    """Decorator registering a backbone builder ``fn(in_channels=..., **kwargs) -> Backbone``."""
    return BACKBONES.register(name, description=description)


__all__ = [
    "Backbone",
    "BackboneInputError",
    "FeatureInfo",
    "create_backbone",
    "register_backbone",
    "BACKBONES",
    "MODELS",
]
