"""Feature taps: the outputs of named layers of any backbone, read with forward hooks.

    taps = forward_taps(vgg, x, ["conv4_2", "relu1_1"])   # {"conv4_2": (N, 512, H/8, W/8), ...}
    FeatureTaps(resnet, ["layer2", "layer3.1.conv2"])(x)   # reusable, names checked once

Names, from ``available_taps(backbone)``:

- A VGG-like backbone (its ``features`` is a flat ``nn.Sequential`` of ``Conv2d``,
  ``BatchNorm2d``, ``ReLU`` and max- or average-pooling layers, as in torchvision's VGG) gets
  the names of Simonyan and Zisserman's VGG (ICLR 2015) as used by Gatys et al. and Caffe:
  ``conv{b}_{i}`` is the ``i``-th conv of block ``b`` (blocks end at the pools), ``bn{b}_{i}``
  and ``relu{b}_{i}`` the batch norm and ReLU after it, ``pool{b}`` the block's pool. They are
  computed from the layer types, so ``conv4_2`` of VGG-19 is ``features[21]`` and of VGG-11
  ``features[13]`` without anybody counting. ``conv{b}_{i}`` is the conv's own output, before
  the ReLU (torchvision's ReLUs work in place; a tap is a copy, so it keeps the pre-ReLU
  values); ``relu{b}_{i}`` is the rectified response.
- Every backbone, VGG included, also answers to the module names of ``named_modules()``:
  ``layer3.1.conv2``, ``layer4``, ``features.21``.

A tap is the output of the module's first call in the forward pass (a module used twice, such
as the ReLU a ResNet block shares between its convs, reports its first use). The taps run the
backbone's ``forward`` and, unless ``stop_early=False``, end it as soon as the last tapped
module has returned (its hook raises an exception that the taps catch): the layers after the
deepest tap, a classifier head included, never run.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
from torch import nn

from rlgen.errors import InputError

#: layer types a VGG-like ``features`` holds, with the prefix of their names
_VGG_LAYER_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Conv2d, "conv"),
    (nn.BatchNorm2d, "bn"),
    (nn.ReLU, "relu"),
    (nn.MaxPool2d, "pool"),
    (nn.AvgPool2d, "pool"),
)


class _TapsComplete(Exception):
    """Raised by the last hook to stop a forward pass whose remaining layers nobody reads."""


def _vgg_kind(layer: nn.Module) -> str | None:
    for cls, kind in _VGG_LAYER_KINDS:
        if type(layer) is cls:  # exact type: a subclass may do something else entirely
            return kind
    return None


def vgg_layer_names(features: nn.Module) -> dict[str, int] | None:
    """``{"conv1_1": 0, "relu1_1": 1, ..., "pool1": 4, ...}``: the VGG name of each index of a
    flat Sequential of conv / bn / relu / pool layers; None for any other module."""
    if not isinstance(features, nn.Sequential) or len(features) == 0:
        return None
    names: dict[str, int] = {}
    block, conv = 1, 0
    for index, layer in enumerate(features):
        kind = _vgg_kind(layer)
        if kind is None or (kind in ("bn", "relu") and conv == 0):
            return None  # not the conv [bn] relu ... pool pattern: no paper names
        if kind == "conv":
            conv += 1
        if kind == "pool":
            names[f"pool{block}"] = index
            block, conv = block + 1, 0
        else:
            names[f"{kind}{block}_{conv}"] = index
    return names if any(name.startswith("conv") for name in names) else None


def _vgg_features(backbone: nn.Module) -> tuple[nn.Sequential, dict[str, int]] | None:
    features = getattr(backbone, "features", None)
    names = vgg_layer_names(features) if isinstance(features, nn.Module) else None
    return (features, names) if names is not None else None


def tap_modules(backbone: nn.Module) -> dict[str, nn.Module]:
    """Every valid tap name -> its module: VGG names first (for a VGG-like backbone), then the
    names of ``named_modules()``."""
    taps: dict[str, nn.Module] = {}
    vgg = _vgg_features(backbone)
    if vgg is not None:
        features, names = vgg
        taps.update({name: features[index] for name, index in names.items()})
    for name, module in backbone.named_modules():
        if name:  # "" is the backbone itself, whose output is not a tap
            taps.setdefault(name, module)
    return taps


def available_taps(backbone: nn.Module) -> list[str]:
    """The names ``FeatureTaps`` / ``forward_taps`` accept for ``backbone``, in order."""
    return list(tap_modules(backbone))


def _unknown_tap_message(name: str, known: list[str], backbone: nn.Module) -> str:
    owner = getattr(backbone, "name", type(backbone).__name__)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"first ones: {', '.join(known[:8])}"
    return (f"unknown layer {name!r} for backbone {owner!r}; {hint} "
            f"(available_taps(backbone) lists all {len(known)})")


def resolve_taps(backbone: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for the requested names (duplicates dropped, order kept); an unknown
    name raises ``InputError`` listing the closest valid ones."""
    taps = tap_modules(backbone)
    resolved: dict[str, nn.Module] = {}
    for name in names:
        if name not in taps:
            raise InputError(_unknown_tap_message(name, list(taps), backbone))
        resolved[name] = taps[name]
    if not resolved:
        raise InputError("no layer to tap: give at least one name (see available_taps)")
    return resolved


class FeatureTaps:
    """Call with an input batch to get ``{name: output}`` of the named layers (see the module
    docstring for the names). Hooks exist only during a call, so the backbone is left as it was
    between calls and may be used on its own; its train/eval mode is the caller's business."""

    def __init__(self, backbone: nn.Module, names: Iterable[str], stop_early: bool = True):
        self.backbone = backbone
        self.modules = resolve_taps(backbone, names)
        self.names = list(self.modules)
        self.stop_early = stop_early

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        handles = [module.register_forward_hook(self._hook(name, outputs))
                   for name, module in self.modules.items()]
        try:
            self.backbone(x)
        except _TapsComplete:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.names if name not in outputs]
        if missing:
            raise InputError(
                f"layers {', '.join(missing)} did not run in the forward pass of "
                f"{type(self.backbone).__name__} (modules its forward does not call)")
        return {name: outputs[name] for name in self.names}

    def _hook(self, name: str, outputs: dict[str, torch.Tensor]):
        def hook(module: nn.Module, inputs, output) -> None:
            if name in outputs:
                return  # a module called again: the tap is its first output
            # A copy, because the next layer may overwrite the tensor in place (the ReLUs of
            # VGG and ResNet do); gradients flow through the copy to the layer as usual.
            outputs[name] = output.clone() if isinstance(output, torch.Tensor) else output
            if self.stop_early and len(outputs) == len(self.modules):
                raise _TapsComplete

        return hook


def forward_taps(backbone: nn.Module, x: torch.Tensor, names: Iterable[str],
                 stop_early: bool = True) -> dict[str, torch.Tensor]:
    """``{name: output}`` of the named layers for input ``x`` (one-off ``FeatureTaps``)."""
    return FeatureTaps(backbone, names, stop_early=stop_early)(x)
