"""One small registry type, one instance per kind of thing rlgen can build by name.

Contract:
- ``@REGISTRY.register("name")`` on a builder (function or class) adds it; a name that is
  already taken raises ``ValueError``.
- ``REGISTRY.create(name, *args, **kwargs)`` calls the builder; ``REGISTRY.get(name)`` returns it.
- An unknown name raises ``UnknownNameError`` (a ``KeyError``) naming the closest entries.
- ``REGISTRY.list()`` returns ``(name, one-line description)`` pairs, sorted.
- Built-in entries are imported lazily (``builtins=`` module paths) so ``import rlgen`` stays
  cheap; third-party packages add entries through the entry-point group ``rlgen.plugins``
  (a module whose import registers things, or a callable taking no arguments). Plugins are
  loaded once, on the first lookup of any registry; a plugin that fails to load produces a
  warning naming it instead of breaking unrelated commands.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

PLUGIN_GROUP = "rlgen.plugins"
_plugins_loaded = False


class UnknownNameError(KeyError):
    """Raised for a name no registry entry has; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def load_plugins(force: bool = False) -> list[str]:
    """Import every ``rlgen.plugins`` entry point once; returns the names that loaded."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.ismodule(obj):
                obj()
            loaded.append(ep.name)
        except Exception as exc:  # a broken plugin must not take down unrelated commands
            warnings.warn(
                f"rlgen plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
    return loaded


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """A name -> builder table for one kind of thing (backbones, models, agents, ...)."""

    def __init__(self, kind: str, builtins: tuple[str, ...] = (), list_command: str | None = None):
        self.kind = kind
        self.list_command = list_command or f"rlgen list {kind}"
        self._builtins = builtins
        self._builtins_loaded = False
        self._entries: dict[str, Callable[..., Any]] = {}
        self._descriptions: dict[str, str] = {}

    def register(
        self, name: str | None = None, *, description: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator adding a builder under ``name`` (default: the builder's ``__name__``)."""

        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            key = name or builder.__name__
            if key in self._entries:
                raise ValueError(
                    f"{self.kind} {key!r} is already registered "
                    f"(by {self._entries[key].__module__}); pick another name"
                )
            self._entries[key] = builder
            self._descriptions[key] = description or _first_doc_line(builder)
            return builder

        return decorator

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and interactive sessions)."""
        self._entries.pop(name, None)
        self._descriptions.pop(name, None)

    def _ensure_loaded(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtins:
                importlib.import_module(module)
        load_plugins()

    def get(self, name: str) -> Callable[..., Any]:
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.4)
        known = ", ".join(sorted(self._entries)) or "none registered"
        hint = f"closest: {', '.join(close)}" if close else f"known: {known}"
        singular = self.kind[:-1] if self.kind.endswith("s") else self.kind
        return f"unknown {singular} {name!r}; {hint} (see `{self.list_command}`)"

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def list(self) -> list[tuple[str, str]]:
        return [(n, self._descriptions[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


BACKBONES = Registry("backbones", builtins=("rlgen.vision.backbones",))
MODELS = Registry("models", builtins=("rlgen.vision.backbones",))
AGENTS = Registry("agents", builtins=("rlgen.agents.qnetwork",))
DATASETS = Registry("datasets", builtins=("rlgen.data",))
# What `rlgen train|eval|sample NAME` accepts: each entry builds a TrainerSpec (see cli.py).
TRAINERS = Registry(
    "trainers",
    builtins=(
        "rlgen.agents.dqn",
        "rlgen.generative.autoencoder",
        "rlgen.generative.vae",
        "rlgen.generative.dcgan",
        "rlgen.vision.classification",
        "rlgen.vision.segmentation.train",
        "rlgen.vision.captioning.train",
        "rlgen.vision.detection.train",
    ),
)

# fcn8s, segnet, unet, ...: builders fn(num_classes, in_channels=3, encoder=None, **kw).
SEGMENTATION_MODELS = Registry("segmentation-models",
                               builtins=("rlgen.vision.segmentation.models",))

# yolov1, faster_rcnn: builders fn(num_classes, in_channels=3, backbone=None, **kw) -> a detector
# (forward(images, targets) -> losses; forward(images) -> detections; see rlgen.vision.detection).
DETECTION_MODELS = Registry("detection-models", builtins=(
    "rlgen.vision.detection.yolo", "rlgen.vision.detection.faster_rcnn"))

# Commands of their own, `rlgen NAME ...` (style transfer, ...): each entry builds a ToolSpec.
TOOLS = Registry("tools", builtins=("rlgen.vision.style", "rlgen.vision.captioning.train"))

REGISTRIES = {r.kind: r for r in (BACKBONES, MODELS, SEGMENTATION_MODELS, DETECTION_MODELS,
                                  AGENTS, DATASETS, TRAINERS, TOOLS)}
