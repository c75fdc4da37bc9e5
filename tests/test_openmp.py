"""rlgen.openmp: OpenMP defaults go into the environment before torch loads, never after, and
never over a value the user set."""

from __future__ import annotations

import os
import subprocess
import sys

import torch  # noqa: F401  (imported, as in every test process)

from rlgen.openmp import DEFAULTS, set_openmp_defaults

# set_openmp_defaults writes only while torch is not loaded: a value here shows the order.
PROBE = ("import os; from rlgen.cli import main; main(['--version']); "
         "print(os.environ.get('GOMP_SPINCOUNT'))")


def _cli_environment(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | extra
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                          check=True)
    return done.stdout.strip().splitlines()[-1]


def test_the_cli_sets_the_spin_count_before_torch_loads():
    assert _cli_environment() == DEFAULTS["GOMP_SPINCOUNT"]


def test_a_value_the_user_set_is_kept():
    assert _cli_environment(GOMP_SPINCOUNT="77") == "77"


def test_nothing_changes_once_torch_is_loaded(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert set_openmp_defaults() is False
    assert "GOMP_SPINCOUNT" not in os.environ
