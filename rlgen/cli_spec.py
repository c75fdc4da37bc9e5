"""What a trainer hands the CLI: its config dataclasses and the functions they drive.

Kept apart from ``cli.py`` so trainer modules can declare themselves without importing the
command-line machinery (nothing imports ``cli.py`` but the console script).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainerSpec:
    """``rlgen train NAME`` runs ``train(config)``; ``eval`` / ``sample`` / ``predict`` run the
    optional pairs.

    Each config is a dataclass whose fields carry a type, a default and a docstring (a string
    literal on the line after the field) that becomes the flag's help. A class attribute
    ``__cli_aliases__ = {"env_id": ("--env",)}`` adds extra flag names.
    """

    config: type
    train: Callable[[Any], Any]
    evaluate: tuple[type, Callable[[Any], Any]] | None = None
    sample: tuple[type, Callable[[Any], Any]] | None = None
    predict: tuple[type, Callable[[Any], Any]] | None = None


@dataclass(frozen=True)
class ToolSpec:
    """``rlgen NAME ...`` runs ``run(config)``, for commands that are not a trainer's
    train / eval / sample / predict (``rlgen style``). Registered in ``rlgen.registry.TOOLS``."""

    config: type
    run: Callable[[Any], Any]
