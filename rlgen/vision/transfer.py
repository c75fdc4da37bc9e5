"""Freezing part of a pretrained network for fine-tuning.

``freeze(model, spec)`` with ``spec``:

- ``"none"``: everything trains.
- ``"backbone"``: everything but the head is frozen. The head is a ``BackboneClassifier``'s
  layers outside ``model.backbone``, or, in the torchvision layout (ResNet, VGG, AlexNet,
  GoogLeNet), the ``fc`` / ``classifier`` / ``aux1`` / ``aux2`` children. A bare backbone
  (``create_backbone``) has no head: all of it is frozen.
- ``"stages:N"``: the first ``N`` stages of the backbone's ``feature_info`` are frozen
  (``0 <= N <= len(feature_info)``). Stages map to modules by ``stage_modules(backbone)``:
  the backbone's own ``stage_modules()`` method when it defines one (a list, per stage, of
  the modules computing it), else the built-in rules: ResNet ``stem`` = ``conv1``/``bn1``
  then ``layer1..4``; VGG and AlexNet: the layers of ``features`` up to and including each
  max-pool; GoogLeNet: ``conv1``, ``conv2``+``conv3``, ``inception3*``, ``inception4*``,
  ``inception5*``; a backbone with a ``stages`` ModuleList (the ``Backbone`` default): one
  entry per stage. Any other backbone supports ``"backbone"`` only, and ``"stages:N"`` is a
  ``FreezeError``.

Frozen parameters get ``requires_grad=False``, so no gradient is computed for them and
``trainable_parameters(model)`` (what to give the optimizer) leaves them out. Frozen batch-norm
layers also stay in eval mode in training: otherwise each training forward would keep
normalising with the batch's statistics and overwrite their ``running_mean`` / ``running_var``,
changing a "frozen" stage. ``model.train()`` would switch them back to training mode, so
instead of setting ``.eval()`` once, a forward pre-hook (``keep_frozen_bn_in_eval``) puts each
frozen batch norm in eval mode before every forward; it survives ``model.train()``,
``copy.deepcopy`` and pickling, and ``freeze(model, "none")`` removes it.

``freeze`` is declarative: each call sets the whole model's state (parameters outside the
spec are unfrozen), so calling it again with another spec is how to unfreeze gradually.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from rlgen.errors import InputError
from rlgen.vision.backbones.alexnet import AlexNetBackbone
from rlgen.vision.backbones.base import Backbone
from rlgen.vision.backbones.googlenet import GoogLeNetBackbone
from rlgen.vision.backbones.resnet import ResNetBackbone
from rlgen.vision.backbones.vgg import VGGBackbone

#: the children that make up the head of the torchvision-layout classifiers
HEAD_ATTRS = ("fc", "classifier", "aux1", "aux2")
SPECS = "'none', 'backbone' or 'stages:N'"


class FreezeError(InputError):
    """A freeze spec that is malformed or that the model cannot follow."""


def _name(model: nn.Module) -> str:
    return getattr(model, "name", None) or type(model).__name__


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``"none"`` / ``"backbone"`` -> (spec, None); ``"stages:N"`` -> ("stages", N)."""
    if spec in ("none", "backbone"):
        return spec, None
    kind, _, count = str(spec).partition(":")
    if kind == "stages" and count.strip().isdigit():
        return "stages", int(count)
    raise FreezeError(f"freeze spec must be {SPECS} (N a whole number), got {spec!r}")


def trunk(model: nn.Module) -> Backbone:
    """The backbone inside ``model``: ``model.backbone`` for a ``BackboneClassifier``, the
    model itself for the torchvision-layout classifiers (they subclass their backbone) and for
    bare backbones."""
    inner = getattr(model, "backbone", None)
    if isinstance(inner, Backbone):
        return inner
    if isinstance(model, Backbone):
        return model
    raise FreezeError(
        f"cannot find the backbone of {_name(model)}: expected an rlgen Backbone, or a model "
        "with a .backbone attribute holding one"
    )


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    """The modules ``"backbone"`` freezes: all of ``model`` but its head (see the module doc)."""
    inner = trunk(model)
    if inner is not model:
        return [inner]
    return [child for name, child in model.named_children() if name not in HEAD_ATTRS]


def stage_modules(backbone: Backbone) -> list[list[nn.Module]]:
    """The modules computing each stage of ``backbone.feature_info``, in order."""
    own = getattr(backbone, "stage_modules", None)
    if callable(own):
        stages = [list(s) for s in own()]
    elif isinstance(backbone, ResNetBackbone):
        stages = [[backbone.conv1, backbone.bn1]]
        stages += [[getattr(backbone, f"layer{i}")] for i in range(1, 5)]
    elif isinstance(backbone, VGGBackbone | AlexNetBackbone):
        stages = _split_after_pools(backbone.features)
    elif isinstance(backbone, GoogLeNetBackbone):
        stages = _googlenet_stages(backbone)
    elif isinstance(getattr(backbone, "stages", None), nn.ModuleList):
        stages = [[s] for s in backbone.stages]
    else:
        raise FreezeError(
            f"backbone {_name(backbone)!r} does not map its stages to modules: use freeze "
            "spec 'backbone', or give it a stage_modules() method returning each stage's modules"
        )
    info = getattr(backbone, "feature_info", None)
    if info is not None and len(info) != len(stages):
        # A stage map out of step with feature_info would freeze the wrong layers silently.
        raise FreezeError(
            f"backbone {_name(backbone)!r} maps {len(stages)} stages to modules but its "
            f"feature_info has {len(info)}"
        )
    return stages


def _split_after_pools(features: nn.Sequential) -> list[list[nn.Module]]:
    """VGG / AlexNet ``features``: each stage ends with (and includes) a max-pool."""
    stages, current = [], []
    for layer in features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(current)
            current = []
    return stages


def _googlenet_stages(net: GoogLeNetBackbone) -> list[list[nn.Module]]:
    """GoogLeNet's stages as its ``forward_stages`` computes them (pools have no parameters)."""
    groups = [["conv1"], ["conv2", "conv3"], ["inception3a", "inception3b"],
              [f"inception4{c}" for c in "abcde"], ["inception5a", "inception5b"]]
    return [[getattr(net, n) for n in group] for group in groups]


def freeze(model: nn.Module, spec: str) -> list[str]:
    """Freeze what ``spec`` names (``"none"``, ``"backbone"``, ``"stages:N"``) and unfreeze the
    rest; returns the qualified names of the frozen modules (for logs).

    Frozen: ``requires_grad=False`` and their batch norms held in eval mode (see the module
    docstring). ``FreezeError`` for a bad spec, an ``N`` out of range or a backbone without a
    stage map.
    """
    kind, count = parse_spec(spec)
    if kind == "none":
        frozen: list[nn.Module] = []
    elif kind == "backbone":
        frozen = backbone_modules(model)
    else:
        inner = trunk(model)
        stages = stage_modules(inner)
        if not 0 <= count <= len(stages):
            names = [s.stage for s in getattr(inner, "feature_info", [])]
            listed = f" ({', '.join(names)})" if names else ""
            raise FreezeError(
                f"freeze spec {spec!r}: backbone {_name(inner)!r} has {len(stages)} stages"
                f"{listed}; expected stages:N with 0 <= N <= {len(stages)}"
            )
        frozen = [m for stage in stages[:count] for m in stage]
    _set_frozen(model, frozen)
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(m), type(m).__name__) for m in frozen]


def _set_frozen(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """Unfreeze everything, then freeze ``frozen`` (parameters and batch norms)."""
    for p in model.parameters():
        p.requires_grad_(True)
    frozen_bn = set()
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
        frozen_bn.update(id(m) for m in module.modules() if isinstance(m, _BatchNorm))
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            _hold_in_eval(m, id(m) in frozen_bn, model.training)


def keep_frozen_bn_in_eval(model: nn.Module) -> int:
    """Hold in eval mode every batch norm of ``model`` whose parameters are all frozen
    (``requires_grad=False``), and release the others; returns how many are held.

    For models frozen by hand (``freeze`` does this itself). A held batch norm normalises with
    its running statistics and never updates them, whatever ``model.train()`` says: a forward
    pre-hook switches it to eval mode before each forward. A batch norm without parameters
    (``affine=False``) cannot be told frozen this way and is released.
    """
    held = 0
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            params = list(m.parameters())
            hold = bool(params) and not any(p.requires_grad for p in params)
            _hold_in_eval(m, hold, model.training)
            held += hold
    return held


def _eval_before_forward(module: nn.Module, args) -> None:
    # A module-level function (not a closure) so that deepcopy and pickle keep the hook.
    module.train(False)


def _hold_in_eval(bn: nn.Module, hold: bool, training: bool) -> None:
    """Install (once) or remove the pre-hook that puts ``bn`` in eval mode before a forward;
    a released ``bn`` returns to the model's mode (``training``)."""
    hooks = bn._forward_pre_hooks  # no public way to list a module's hooks
    ours = [key for key, hook in hooks.items() if hook is _eval_before_forward]
    if hold:
        if not ours:
            bn.register_forward_pre_hook(_eval_before_forward)
        bn.train(False)
        return
    for key in ours:
        del hooks[key]
    bn.train(training)


def is_held_in_eval(bn: nn.Module) -> bool:
    """Whether ``bn`` carries the eval pre-hook of ``freeze`` / ``keep_frozen_bn_in_eval``."""
    return any(hook is _eval_before_forward for hook in bn._forward_pre_hooks.values())


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that still train (``requires_grad``): what to hand the optimizer."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(params: Iterable[torch.Tensor]) -> int:
    """Total number of elements, e.g. ``count_parameters(trainable_parameters(model))``."""
    return sum(p.numel() for p in params)
