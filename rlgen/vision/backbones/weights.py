"""Loading checkpoint files in torchvision's format into rlgen models.

The classifiers built by ``create_model`` ("resnet50", "vgg16", "alexnet", "googlenet", ...)
use torchvision's parameter names and shapes, so a ``.pth`` file saved from torchvision loads
without renaming. ``load_weights`` reads the file safely (``weights_only=True``), unwraps the
usual containers (``{"state_dict": ...}``, ``{"model": ...}``, a DDP ``module.`` prefix) and,
when the keys or shapes disagree, raises one error that names the file and lists the first
missing keys, unexpected keys and shape mismatches (with both shapes) instead of PyTorch's
wall of text.

Transfer learning (``create_model(name, weights=..., num_classes=K)``, see
``build_with_weights``): the model is built with the checkpoint's own head, loaded strictly,
and its head replaced by a fresh ``K``-class one when ``K`` differs.

Published weights: ``weights="torchvision:resnet50"`` names torchvision's ImageNet file
(``TORCHVISION_WEIGHTS``); ``fetch_published`` finds it in the cache folder
(``weights_cache_dir()``) or downloads it there, checking its hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """Return the tensor state dict held by a file path, a ``"torchvision:NAME"`` spec (the
    cached, or downloaded, published file) or a (possibly wrapped) mapping."""
    if is_published(source):
        source = fetch_published(source)
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
            "load the rest and keep the new head, or create_model(..., num_classes=K)"
        )
    return "\n".join(lines)


def load_weights(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping,
    strict: bool = True,
    *,
    source_name: str | None = None,
) -> LoadReport:
    """Load a torchvision-format state dict (a file path, a ``"torchvision:NAME"`` spec or a
    mapping) into ``model``.

    ``strict=True``: every key and shape must match, else ``WeightsError`` listing the first
    differences (``WeightsFileNotFoundError`` for a missing file). ``strict=False``: load every
    tensor whose key and shape match, and return the rest in the ``LoadReport`` (for a new
    ``num_classes`` head, or a torchvision classifier file loaded into a bare backbone).
    ``source_name`` names the source in errors (for a mapping already read from a file).
    """
    if is_published(path_or_state_dict):
        path_or_state_dict = fetch_published(path_or_state_dict)
    what = source_name or _describe(path_or_state_dict)
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


# --------------------------------------------------------------------------------------------
# Transfer learning: a checkpoint's body under a new head
# --------------------------------------------------------------------------------------------

_CLASSIFIER_WEIGHT = re.compile(r"classifier\.(\d+)\.weight")


def checkpoint_num_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    """How many classes a classifier state dict predicts: the rows of its output layer's
    weight, ``fc.weight`` (ResNet, GoogLeNet, rlgen's ``BackboneClassifier``) or the
    highest-numbered ``classifier.<i>.weight`` (VGG, AlexNet). None when it has neither (a
    bare backbone) or that tensor is not a linear layer's 2-D weight."""
    weight = state.get("fc.weight")
    if weight is None:
        indexed = [(int(m.group(1)), k) for k in state if (m := _CLASSIFIER_WEIGHT.fullmatch(k))]
        if not indexed:
            return None
        weight = state[max(indexed)[1]]
    return int(weight.shape[0]) if weight.dim() == 2 else None


def replace_head(model: nn.Module, num_classes: int) -> None:
    """``model.reset_classifier(num_classes)``, or a ``WeightsError`` for a model without it."""
    reset = getattr(model, "reset_classifier", None)
    if reset is None:
        name = getattr(model, "name", type(model).__name__)
        raise WeightsError(
            f"model {name!r} has no reset_classifier(): cannot give it a new "
            f"{num_classes}-class head; pass the checkpoint's num_classes instead"
        )
    reset(num_classes)


def build_with_weights(
    build: Callable[..., nn.Module],
    weights: str | os.PathLike | Mapping,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``build(num_classes=..., **kwargs)`` with the weights of a checkpoint, for fine-tuning.

    The model is built with the checkpoint's own class count (``checkpoint_num_classes``), so
    every tensor, the head included, loads *strictly*: any other difference (a renamed key,
    another ``in_channels``, another depth) is a ``WeightsError`` naming the keys. Then, when
    ``num_classes`` is given and differs, ``reset_classifier(num_classes)`` replaces the head by
    a freshly initialised one (GoogLeNet's auxiliary heads too). ``num_classes=None`` keeps the
    checkpoint's head. ``weights="torchvision:NAME"`` also applies that file's builder defaults
    (``PublishedWeights.model_kwargs``, yours win) and drops the parts of the file the model
    was built without (``PublishedWeights.optional_prefixes``).
    """
    published = published_weights(weights) if is_published(weights) else None
    source = fetch_published(weights) if published else weights
    state = read_state_dict(source)
    file_classes = checkpoint_num_classes(state)
    if published:
        kwargs = {**published.model_kwargs, **kwargs}
    # Built with the file's head, the model takes every tensor strictly, so nothing but the
    # head can silently stay random; reset_classifier then knows all the layers that depend on
    # the class count (auxiliary heads included) better than a list of key names would.
    if file_classes is not None:
        kwargs["num_classes"] = file_classes
    elif num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = build(**kwargs)
    if published:
        state = _drop_absent(state, model, published.optional_prefixes)
    load_weights(model, state, source_name=_describe(source))
    if file_classes is not None and num_classes is not None and num_classes != file_classes:
        replace_head(model, num_classes)
    return model


def _drop_absent(
    state: dict[str, torch.Tensor], model: nn.Module, prefixes: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """``state`` without the keys under ``prefixes`` that ``model`` does not have."""
    own = model.state_dict().keys()
    return {k: v for k, v in state.items() if k in own or not k.startswith(prefixes)}


# --------------------------------------------------------------------------------------------
# Published weights: torchvision's ImageNet files, cached and hash-checked
# --------------------------------------------------------------------------------------------

TORCHVISION_PREFIX = "torchvision:"
TORCHVISION_URL = "https://download.pytorch.org/models/"
#: torchvision's file names end in "-<first hex digits of the file's sha256>.<ext>"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
_CHUNK = 1 << 20
USER_AGENT = "rlgen-weights-downloader/0.1 (python urllib)"


@dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint: its file name, its URL and what the model needs to take it."""

    filename: str
    url: str
    #: builder keyword defaults the weights were trained with (the caller's own kwargs win)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: key prefixes the file has that a model may be built without (dropped then)
    optional_prefixes: tuple[str, ...] = ()

    @property
    def hash_prefix(self) -> str:
        """The leading hex digits of the file's sha256, as its name carries them."""
        match = _HASH_IN_NAME.search(self.filename)
        if match is None:
            raise WeightsError(f"{self.filename!r} carries no '-<sha256 prefix>.' in its name")
        return match.group(1)


def _torchvision(filename: str, **kwargs: Any) -> PublishedWeights:
    return PublishedWeights(filename, TORCHVISION_URL + filename, **kwargs)


#: ``"torchvision:NAME"`` -> torchvision's ``IMAGENET1K_V1`` file for each rlgen model with
#: published weights. Written from torchvision's ``weights`` enums (torchvision >= 0.13)
#: without network access to check them: a wrong entry fails the hash check on download, it
#: never loads a wrong file. The check is torchvision's own (``torch.hub.check_hash``): the
#: file's sha256 hex digest must start with the digits in its name.
TORCHVISION_WEIGHTS: dict[str, PublishedWeights] = {
    "alexnet": _torchvision("alexnet-owt-7be5be79.pth"),
    "vgg11": _torchvision("vgg11-8a719046.pth"),
    "vgg13": _torchvision("vgg13-19584684.pth"),
    "vgg16": _torchvision("vgg16-397923af.pth"),
    "vgg19": _torchvision("vgg19-dcbb9e9d.pth"),
    "vgg11_bn": _torchvision("vgg11_bn-6002323d.pth"),
    "vgg13_bn": _torchvision("vgg13_bn-abd245e5.pth"),
    "vgg16_bn": _torchvision("vgg16_bn-6c64b313.pth"),
    "vgg19_bn": _torchvision("vgg19_bn-c79401a0.pth"),
    "resnet18": _torchvision("resnet18-f37072fd.pth"),
    "resnet34": _torchvision("resnet34-b627a593.pth"),
    "resnet50": _torchvision("resnet50-0676ba61.pth"),
    "resnet101": _torchvision("resnet101-63fe2227.pth"),
    "resnet152": _torchvision("resnet152-394f9c45.pth"),
    # Ported from TensorFlow: trained on inputs in [-1, 1], hence transform_input (as
    # torchvision sets it). The file holds untrained auxiliary heads, kept with aux_logits=True.
    "googlenet": _torchvision(
        "googlenet-1378be20.pth",
        model_kwargs={"transform_input": True},
        optional_prefixes=("aux1.", "aux2."),
    ),
}


def is_published(weights: object) -> bool:
    """Whether ``weights`` is a ``"torchvision:NAME"`` spec rather than a path or a mapping."""
    return isinstance(weights, str) and weights.startswith(TORCHVISION_PREFIX)


def published_weights(spec: str) -> PublishedWeights:
    """The table entry of ``"torchvision:NAME"``; ``WeightsError`` listing the known names."""
    name = spec[len(TORCHVISION_PREFIX) :] if is_published(spec) else spec
    entry = TORCHVISION_WEIGHTS.get(name)
    if entry is None:
        known = ", ".join(sorted(TORCHVISION_WEIGHTS))
        raise WeightsError(f"unknown published weights {spec!r}; expected torchvision:<name> "
                           f"with <name> one of: {known}")
    return entry


def weights_cache_dir() -> Path:
    """``$RLGEN_CACHE_DIR/weights``, else ``$XDG_CACHE_HOME/rlgen/weights``, else
    ``~/.cache/rlgen/weights``: rlgen's cache folder (the rule of
    ``rlgen.generative.metrics.default_cache_dir``, repeated here because backbones depend on
    torch and rlgen's core only)."""
    if os.environ.get("RLGEN_CACHE_DIR"):
        return Path(os.environ["RLGEN_CACHE_DIR"]).expanduser() / "weights"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rlgen" / "weights"


def fetch_published(
    spec: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """The path of the published file ``spec`` names, downloading it into the cache if needed.

    A file already in ``cache_dir`` (default ``weights_cache_dir()``) is used after its hash
    check, without a request. Otherwise it is streamed into a hidden temporary file there,
    hashed on the way, and renamed onto its name only when the hash matches, so no partial or
    foreign file is ever left to trust. No network (or any download failure):
    ``WeightsFileNotFoundError`` saying which file to put where. A wrong hash: ``WeightsError``.
    """
    entry = published_weights(spec)
    folder = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    path = folder / entry.filename
    if path.is_file():
        _check_cached(path, entry)
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _download(entry, path, timeout, quiet)
    except WeightsError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # URLError/HTTPError, refused connections, timeouts, cut transfers, malformed URLs
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise WeightsFileNotFoundError(
            f"cannot download {spec} ({reason}); put {entry.filename} (from {entry.url}) "
            f"into {folder}{os.sep}"
        ) from exc
    return path


def _check_cached(path: Path, entry: PublishedWeights) -> None:
    digest = _sha256(path)
    if not digest.startswith(entry.hash_prefix):
        raise WeightsError(
            f"cached weights file {str(path)!r} is not the published one (sha256 {digest[:16]}..., "
            f"expected {entry.hash_prefix}...): delete it to download {entry.url} again"
        )


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _download(entry: PublishedWeights, path: Path, timeout: float, quiet: bool) -> None:
    """Stream ``entry.url`` into a temporary file beside ``path``; rename it only if its sha256
    starts with the published prefix. Nothing is left behind otherwise."""
    if not quiet:
        print(f"Downloading {entry.url} -> {path}", file=sys.stderr)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(entry.url, out, timeout)
            out.flush()
            os.fsync(out.fileno())
        if not digest.startswith(entry.hash_prefix):
            raise WeightsError(
                f"{entry.url} delivered a file whose sha256 ({digest[:16]}...) does not start "
                f"with {entry.hash_prefix} as its name says; nothing was written to {path.parent}"
            )
        os.replace(tmp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _stream(url: str, out, timeout: float) -> str:
    """Copy ``url`` into the open file ``out``; returns the sha256 hex digest of what came."""
    hasher = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        received = 0
        for block in iter(lambda: response.read(_CHUNK), b""):
            out.write(block)
            hasher.update(block)
            received += len(block)
    if length and length.isdigit() and received != int(length):
        raise OSError(f"connection closed after {received} of {length} bytes")
    return hasher.hexdigest()
