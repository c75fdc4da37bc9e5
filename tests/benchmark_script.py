"""Running a ``benchmarks/`` script in a subprocess, for the benchmarks' smoke tests."""

import subprocess
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"benchmark", "metric", "value", "unit"}  # every JSON line's fields (DESIGN.md)


def run_benchmark(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> *args`` from the repository root, output captured."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def runner(script: str):
    """``run(*args, timeout=...)`` for one script."""
    return partial(run_benchmark, script)
