"""OpenMP settings that must be in the environment before torch is imported.

torch's CPU kernels run on OpenMP threads (GNU libgomp in the Linux wheels). Between two parallel
regions an idle thread spins ``GOMP_SPINCOUNT`` times before it sleeps; libgomp's default is
300,000 spins, long enough that the thread is still spinning when the next, single-threaded
phase of a training loop starts and takes a core from it. DQN's loop alternates exactly such
phases (acting on one core while a second computes target Q-values, then a two-thread update):
with 10,000 spins it ran 5-10% faster on a 2-core machine, and convolution-heavy generative
training measured the same with either value (``benchmarks/dqn_atari.py``,
``benchmarks/generative.py``). ``OMP_WAIT_POLICY=PASSIVE`` (no spinning) was slower than both.

The ``rlgen`` command applies these defaults; a script that imports torch itself can export
them (``GOMP_SPINCOUNT=10000 python train.py``) or call ``set_openmp_defaults()`` before its
first ``import torch``. Values already in the environment are kept.
"""

from __future__ import annotations

import os
import sys

DEFAULTS = {"GOMP_SPINCOUNT": "10000"}


def set_openmp_defaults() -> bool:
    """Put ``DEFAULTS`` into ``os.environ`` where unset; returns False (and changes nothing)
    when torch is already imported, since OpenMP read its environment then."""
    if "torch" in sys.modules:
        return False
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    return True
