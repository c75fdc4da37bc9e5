"""The one error type that means "the user's input is wrong", as opposed to a bug.

``rlgen`` prints an ``InputError`` as one line and exits with status 2; any other exception
from inside a command is a bug (or a broken environment) and keeps its traceback (exit 1).
Raise it (or a subclass) for what a user can fix: a bad flag value, a missing or foreign file,
a model that cannot take the data's images. Each message names what was wrong and what is
expected.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input a user can fix: printed by the CLI as one line (exit status 2)."""
