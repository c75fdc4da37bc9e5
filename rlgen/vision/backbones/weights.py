"""Loading checkpoint files in torchvision's format into rlgen models.

The classifiers built by ``create_model`` ("resnet50", "vgg16", "alexnet", "googlenet", ...)
use torchvision's parameter names and shapes, so a ``.pth`` file saved from torchvision loads
without renaming. ``load_weights`` reads the file safely (``weights_only=True``), unwraps the
usual containers (``{"state_dict": ...}``, ``{"model": ...}``, a DDP ``module.`` prefix) and,
when the keys or shapes disagree, raises one error that names the file and lists the first
missing keys, unexpected keys and shape mismatches (with both shapes) instead of PyTorch's
wall of text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

#: how many keys of each kind an error message lists
MAX_LISTED = 8
#: key prefixes of the classifier layers that depend on num_classes
HEAD_KEYS = ("fc.", "classifier.6.", "aux1.fc2.", "aux2.fc2.")


class WeightsError(ValueError):
    """A weights file or state dict that cannot be loaded into the given model."""


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """The weights file does not exist."""


@dataclass
class LoadReport:
    """What ``load_weights`` did not load (all empty after a strict load)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: (key, shape in the model, shape in the file)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def _describe(source: str | os.PathLike | Mapping) -> str:
    if isinstance(source, str | os.PathLike):
        return f"weights file {str(source)!r}"
    return "state dict"


def read_state_dict(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """Return the tensor state dict held by a file path or a (possibly wrapped) mapping."""
    what = _describe(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise WeightsFileNotFoundError(f"{what} does not exist")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated file, pickle with code in it, not a torch file
            raise WeightsError(
                f"{what} could not be read as a PyTorch state dict "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
    else:
        obj = source
    # An rlgen training checkpoint (`rlgen train ...`): the trained network is state["model"].
    if isinstance(obj, Mapping) and isinstance(obj.get("state"), Mapping) \
            and isinstance(obj["state"].get("model"), Mapping):
        obj = obj["state"]["model"]
    # Other training checkpoints wrap the weights; take the first container key holding them.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"{what} does not hold a state dict (a non-empty mapping of parameter names to "
            f"tensors); got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{what} is not a state dict: entries {bad[:MAX_LISTED]} are not name -> tensor"
        )
    state = dict(obj)
    # DistributedDataParallel saves every key under "module."; strip it when all keys have it.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def compare_state_dicts(model: nn.Module, state: Mapping[str, torch.Tensor]) -> LoadReport:
    """Keys the model has but ``state`` lacks, keys it has in excess, and shape mismatches."""
    own = model.state_dict()
    report = LoadReport()
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [
        (k, tuple(own[k].shape), tuple(state[k].shape))
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
    return report


def _format_report(report: LoadReport, what: str, model: nn.Module) -> str:
    name = getattr(model, "name", type(model).__name__)
    lines = [f"{what} does not match model {name!r}:"]

    def listing(title: str, items: list) -> None:
        if items:
            first = f", the first {MAX_LISTED}" if len(items) > MAX_LISTED else ""
            lines.append(f"  {len(items)} {title}{first}:")
            lines.extend(f"    {item}" for item in items[:MAX_LISTED])

    listing("missing keys (in the model, not in the file)", report.missing)
    listing("unexpected keys (in the file, not in the model)", report.unexpected)
    listing(
        "shape mismatches",
        [f"{k}: model {list(a)} vs file {list(b)}" for k, a, b in report.mismatched],
    )
    if report.unexpected and all(k.startswith(("aux1.", "aux2.")) for k in report.unexpected):
        lines.append("  hint: the file has auxiliary heads; build the model with aux_logits=True")
    elif (
        report.mismatched
        and not (report.missing or report.unexpected)
        and all(k.startswith(HEAD_KEYS) for k, *_ in report.mismatched)
    ):
        lines.append(
            "  hint: only the classifier differs (another num_classes?); use strict=False to "
            "load the rest and keep the new head"
        )
    return "\n".join(lines)


def load_weights(
    model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping, strict: bool = True
) -> LoadReport:
    """Load a torchvision-format state dict (a file path or a mapping) into ``model``.

    ``strict=True``: every key and shape must match, else ``WeightsError`` listing the first
    differences (``WeightsFileNotFoundError`` for a missing file). ``strict=False``: load every
    tensor whose key and shape match, and return the rest in the ``LoadReport`` (for a new
    ``num_classes`` head, or a torchvision classifier file loaded into a bare backbone).
    """
    what = _describe(path_or_state_dict)
    state = read_state_dict(path_or_state_dict)
    report = compare_state_dicts(model, state)
    if strict and not report.ok:
        raise WeightsError(_format_report(report, what, model))
    skip = {k for k, *_ in report.mismatched} | set(report.unexpected)
    loadable = {k: v for k, v in state.items() if k not in skip}
    if not loadable:
        raise WeightsError(_format_report(report, what, model) + "\n  (no tensor matched)")
    model.load_state_dict(loadable, strict=False)
    return report
