"""Suite-wide settings: one torch thread per test process.

The suite runs under pytest-xdist with one worker per core (`-n auto`); a worker that also
spawned two OpenMP threads would oversubscribe the cores, which on a 2-core machine made small
models 10x slower in measurements. Tests that need threads set them themselves.
"""

import torch

torch.set_num_threads(1)
