"""CNN backbones registered by name; ``create_backbone`` / ``create_model`` build them.

Importing this package registers the built-in architectures (each module below decorates its
builders with ``@register_backbone`` / ``@register_model``).
"""

from rlgen.registry import BACKBONES, MODELS
from rlgen.vision.backbones.base import Backbone, BackboneInputError, FeatureInfo


def create_backbone(name: str, in_channels: int | None = None, **kwargs) -> Backbone:
    """Build the backbone registered as ``name``; ``in_channels`` defaults to the builder's own
    default (3 for image nets, 4 for ``nature_cnn``, 1 for the MNIST nets)."""
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    backbone = BACKBONES.create(name, **kwargs)
    backbone.name = name
    return backbone


def register_backbone(name: str | None = None, *, description: str | None = None):
    """Decorator registering a backbone builder ``fn(in_channels=..., **kwargs) -> Backbone``."""
    return BACKBONES.register(name, description=description)


def register_model(name: str | None = None, *, description: str | None = None):
    """Decorator registering a classifier builder ``fn(num_classes=..., in_channels=..., **kw)``."""
    return MODELS.register(name, description=description)


def register_variant(name: str, build_model, build_backbone, *, model_doc: str,
                     backbone_doc: str):
    """Define and register the public pair of a torchvision-style variant: the classifier
    ``name`` (``create_model(name)``, keyword-only ``weights=``) and the trunk
    ``<name>_backbone`` (``create_backbone(name)``), each with its own name and docstring
    (the registry shows the docstring's first line). ``build_model(num_classes=, in_channels=,
    **kw)`` and ``build_backbone(in_channels=, **kw)`` construct the networks."""

    def model(num_classes: int = 1000, in_channels: int = 3, *, weights=None, **kwargs):
        net = build_model(num_classes=num_classes, in_channels=in_channels, **kwargs)
        net.name = name
        if weights is not None:
            from rlgen.vision.backbones.weights import load_weights

            load_weights(net, weights)
        return net

    def backbone(in_channels: int = 3, **kwargs):
        net = build_backbone(in_channels=in_channels, **kwargs)
        net.name = name
        return net

    model.__name__ = model.__qualname__ = name
    model.__doc__ = model_doc
    backbone.__name__ = backbone.__qualname__ = f"{name}_backbone"
    backbone.__doc__ = backbone_doc
    return register_model(name)(model), register_backbone(name)(backbone)


def create_model(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    *,
    weights=None,
    **kwargs,
):
    """Build the classifier registered as ``name`` (``num_classes`` / ``in_channels`` default to
    the builder's: 1000 classes and 3 channels for the ImageNet nets, 10 and 1 for MNIST nets).

    ``weights``: a checkpoint to start from, as a path (a state dict in torchvision's key
    names, an rlgen run checkpoint, or the usual ``{"state_dict": ...}`` wrappers), a mapping,
    or ``"torchvision:NAME"`` for torchvision's published ImageNet file (downloaded into rlgen's
    cache once; see ``weights.TORCHVISION_WEIGHTS``). The model is built with the checkpoint's
    class count and loaded strictly (any other mismatch is a ``WeightsError`` naming the keys);
    a ``num_classes`` that differs then gets a freshly initialised head, everything else keeps
    the file's values. Without ``num_classes`` the checkpoint's head is kept.
    """
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    build = MODELS.get(name)  # an unknown name fails before a large file is read
    if weights is None:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return build(**kwargs)
    from rlgen.vision.backbones.weights import build_with_weights

    return build_with_weights(build, weights, num_classes, **kwargs)


# Built-in architectures register themselves on import.
from rlgen.vision.backbones import (  # noqa: E402, F401
    alexnet,
    dcgan_discriminator,
    deepface,
    googlenet,
    lenet,
    minatar_cnn,
    mlp,
    mnist_convnets,
    nature_cnn,
    resnet,
    vgg,
)

__all__ = [
    "Backbone",
    "BackboneInputError",
    "FeatureInfo",
    "create_backbone",
    "create_model",
    "register_backbone",
    "register_model",
    "register_variant",
    "BACKBONES",
    "MODELS",
]
