"""CUDA checks, run on a machine with a GPU: `python -m pytest gpu_tests -q` from the repo root.

They live outside `tests/` so the CPU suite never reports them as skipped; they fail (not skip)
when no GPU is present.

The replay on a CUDA device keeps its storage in (pageable) host numpy arrays and stages each
sampled batch through pinned host memory: two non-blocking host-to-device copies (frames,
scalars), the stacks cut out on the GPU. Checked here: batches equal the CPU buffer's, for
frame stacks and for vector observations with n-step windows cut short by episode ends; the
staging tensors are pinned; and batches drawn back to back while the GPU is still busy (their
copies queued behind a long kernel) stay intact, i.e. no pinned block is reused before its
copy ran.
"""

import numpy as np
import pytest
import torch

from rlgen.agents.replay import ReplayBuffer
from tests.agents.test_replay import FRAME, K, make_stream

FIELDS = ("obs", "actions", "rewards", "next_obs", "discounts", "weights")


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "gpu_tests need a CUDA device"


def assert_same_batch(cpu_batch, gpu_batch) -> None:
    for field in FIELDS:
        x, y = getattr(cpu_batch, field), getattr(gpu_batch, field)
        assert y.device.type == "cuda" and x.dtype == y.dtype and x.shape == y.shape, field
        assert torch.equal(x, y.cpu()), field
    np.testing.assert_array_equal(cpu_batch.indices, gpu_batch.indices)


def twin_buffers(stream, *args, **kwargs) -> tuple[ReplayBuffer, ReplayBuffer]:
    """A CPU and a CUDA buffer (same seed) fed the same ``add`` calls."""
    cpu = ReplayBuffer(*args, **kwargs)
    gpu = ReplayBuffer(*args, device="cuda", **kwargs)
    for step in stream:
        cpu.add(*step)
        gpu.add(*step)
    return cpu, gpu


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


def vector_stream(steps: int, seed: int, dim: int = 4, p_end: float = 0.15):
    """CartPole-like float32 observations (frame_stack 1) with frequent episode ends, so many
    3-step windows are cut short (the GPU's gather of next_obs at a per-row offset)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(1, dim)).astype(np.float32)
    for _ in range(steps):
        nxt = rng.normal(size=(1, dim)).astype(np.float32)
        end = rng.random() < p_end
        term = end and rng.random() < 0.5
        yield (obs, rng.integers(0, 2, size=1), rng.normal(size=1).astype(np.float32), nxt,
               np.array([term]), np.array([end and not term]))
        obs = rng.normal(size=(1, dim)).astype(np.float32) if end else nxt


def test_vector_observation_n_step_batches_equal_cpu_batches():
    cpu, gpu = twin_buffers(vector_stream(300, seed=3), 200, (4,), 1, obs_dtype=np.float32,
                            n_step=3, gamma=0.9, seed=1)
    discounts = []
    for _ in range(5):
        a, b = cpu.sample(64), gpu.sample(64)
        assert_same_batch(a, b)
        discounts.append(a.discounts)
    discounts = torch.cat(discounts)
    # windows truncated after 1 or 2 steps (discount 0.9 or 0.81): the per-row next_obs gather
    assert ((discounts != 0) & (discounts != 0.9**3)).any()


def pixel_stream(steps: int, seed: int, side: int = 84, k: int = 4, p_end: float = 0.05):
    """Random uint8 frames (k, side, side) stacked as an Atari env would, with resets."""
    rng = np.random.default_rng(seed)

    def reset():
        stack = np.zeros((k, side, side), dtype=np.uint8)
        stack[-1] = rng.integers(0, 256, (side, side), dtype=np.uint8)
        return stack

    stack = reset()
    for _ in range(steps):
        nxt = np.concatenate([stack[1:], rng.integers(0, 256, (1, side, side), dtype=np.uint8)])
        end = rng.random() < p_end
        term = end and rng.random() < 0.5
        yield (stack[None], rng.integers(0, 4, size=1), rng.normal(size=1).astype(np.float32),
               nxt[None], np.array([term]), np.array([end and not term]))
        stack = reset() if end else nxt


def test_batches_are_staged_through_pinned_memory(monkeypatch):
    cpu, gpu = twin_buffers(pixel_stream(120, seed=5), 200, (4, 84, 84), 1, n_step=3, seed=2)
    staged: list[bool] = []
    pin = torch.Tensor.pin_memory

    def spy(self, *args, **kwargs):
        out = pin(self, *args, **kwargs)
        staged.append(out.is_pinned())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    batch = gpu.sample(32)
    monkeypatch.undo()
    assert len(staged) >= 2 and all(staged)  # frames and scalars, each from pinned memory
    assert_same_batch(cpu.sample(32), batch)


def test_back_to_back_batches_survive_queued_copies():
    """The copies of 30 batches are queued behind a long kernel (~0.2-0.5 s) while the CPU
    keeps gathering into fresh staging memory; if a pinned block were reused before its copy
    ran, a later batch's frames would show up in an earlier one. 1-step returns keep every
    batch on the two pinned copies (no pageable copy that could make the host wait)."""
    cpu, gpu = twin_buffers(pixel_stream(300, seed=6), 400, (4, 84, 84), 1, n_step=1, seed=3)
    torch.cuda.synchronize()
    torch.cuda._sleep(500_000_000)  # GPU cycles on the current stream, ahead of the copies
    gpu_batches = [gpu.sample(64) for _ in range(30)]
    torch.cuda.synchronize()
    for b in gpu_batches:
        assert_same_batch(cpu.sample(64), b)
