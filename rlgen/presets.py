"""Published settings as named presets of a config dataclass, under the fields given explicitly.

A config class lists its presets in a class attribute ``presets = {"name": Preset(source,
{field: value, ...})}`` and has a field ``preset`` that records which one a run used. The
resolution order is: the dataclass defaults, then the preset's values, then the fields given
explicitly (flags on the command line, keyword arguments from Python), so a preset never hides
a field: every value it sets can be overridden, and the resolved config (what ``config.json``
stores) shows the values the run used.

``rlgen train NAME --preset P --flag V`` resolves through :func:`with_preset` with the flags
the command line really named (``rlgen.cli`` tells them apart from defaults); from Python call
``with_preset(Config, "P", field=value)`` (or the class's ``from_preset``). A config built
directly as ``Config(preset="P")`` only records the name: nothing can tell there which fields
were given, so resolution happens in those two places only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from rlgen.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Preset:
    """Field values taken from a publication (``source`` says where, for ``--help``)."""

    source: str
    values: Mapping[str, Any]

    def describe(self) -> str:
        """``source: field=value, ...`` (one line, for ``--help``)."""
        fields = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return f"{self.source}: {fields}"


def presets_of(cls: type) -> Mapping[str, Preset]:
    """The presets a config class declares (empty when it has none)."""
    return getattr(cls, "presets", None) or {}


def with_preset(cls: type[T], name: str | None, /, **given: Any) -> T:
    """``cls`` built from its defaults, the preset ``name``'s values, then ``given`` (the
    fields set explicitly), with ``preset=name`` recorded. ``name=None``: ``cls(**given)``."""
    if name is None:
        return cls(**given)
    presets = presets_of(cls)
    if name not in presets:
        raise InputError(f"--preset must be one of {', '.join(presets) or '(none)'}, "
                         f"got {name!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(presets[name].values) - known)
    if unknown:  # a mistake in the class's own table
        raise TypeError(f"{cls.__name__} preset {name!r} sets unknown fields {unknown}")
    return cls(**{**presets[name].values, **given, "preset": name})
