"""CUDA checks, run on a machine with a GPU: `python -m pytest gpu_tests -q` from the repo root.

They live outside `tests/` so the CPU suite never reports them as skipped; they fail (not skip)
when no GPU is present.
"""

import pytest
import torch

from rlgen.agents.replay import ReplayBuffer
from tests.agents.test_replay import FRAME, K, make_stream


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "gpu_tests need a CUDA device"


@pytest.mark.parametrize("n_step", [1, 3])
def test_cuda_batches_equal_cpu_batches(n_step):
    batches, _ = make_stream(2, 200, seed=8)
    kw = dict(n_step=n_step, gamma=0.9, prioritized=True, seed=0)
    cpu = ReplayBuffer(2 * 60, (K, *FRAME), 2, **kw)
    gpu = ReplayBuffer(2 * 60, (K, *FRAME), 2, device="cuda", **kw)
    for args in batches:
        cpu.add(*args)
        gpu.add(*args)
    for _ in range(5):
        a, b = cpu.sample(64), gpu.sample(64)
        for field in ("obs", "actions", "rewards", "next_obs", "discounts", "weights"):
            x, y = getattr(a, field), getattr(b, field)
            assert y.device.type == "cuda" and x.dtype == y.dtype
            assert torch.equal(x, y.cpu()), field
