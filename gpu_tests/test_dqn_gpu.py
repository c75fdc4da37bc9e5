"""DQN's GPU fast path, on a machine with a GPU: `python -m pytest -q gpu_tests/test_dqn_gpu.py -s`
from the repo root (``-s`` shows the SPS lines). Like every test in gpu_tests/, these fail (not
skip) without CUDA.

- ``--cuda-graph``: the update replayed from a CUDA graph equals the eager update (loss, Q of the
  taken actions, TD errors, weights after each step) over several batches, target syncs
  between them included, for DQN, Double DQN with gradient clipping, and bf16-mixed;
- the update path makes no host-device synchronisation (``torch.cuda.set_sync_debug_mode
  ("error")`` around sampling and updates, eager and graphed);
- ``--replay-device cpu|pinned|cuda``: the same batches from each storage;
- short ``train()`` runs on the pixel Catch game in 32 / 16-mixed / bf16-mixed, with and without
  the graph (not 16-mixed, which --cuda-graph refuses), every figure finite; their SPS printed.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlgen.agents.cuda_graph import GraphedUpdate, make_capturable
from rlgen.agents.device_step import DeviceStep
from rlgen.agents.dqn import DQNConfig, build_q_network, full_update, train
from rlgen.agents.qnetwork import update_target
from rlgen.agents.replay import ReplayBuffer
from rlgen.runtime import Precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "agents"))
from catch_env import CATCH_ID  # noqa: E402  (registers the pixel game)

DEVICE = torch.device("cuda")
FIELDS = ("obs", "actions", "rewards", "next_obs", "discounts", "weights")


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "gpu_tests need a CUDA device"


def filled_buffer(storage: str, seed: int = 0, steps: int = 400, n_step: int = 1,
                  prioritized: bool = False) -> ReplayBuffer:
    """A replay of random 4x84x84 frame stacks with episode ends, on ``DEVICE``."""
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer(2_000, (4, 84, 84), num_envs=2, device=DEVICE, storage=storage,
                      n_step=n_step, prioritized=prioritized, seed=seed)
    obs = rng.integers(0, 255, (2, 4, 84, 84), dtype=np.uint8)
    for t in range(steps):
        frame = rng.integers(0, 255, (2, 1, 84, 84), dtype=np.uint8)
        next_obs = np.concatenate([obs[:, 1:], frame], axis=1)
        done = np.array([t % 37 == 36, t % 53 == 52])
        rb.add(obs, rng.integers(0, 4, 2), rng.normal(size=2).astype(np.float32), next_obs,
               done, np.zeros(2, bool))
        obs = np.where(done[:, None, None, None],
                       rng.integers(0, 255, (2, 4, 84, 84), dtype=np.uint8), next_obs)
    return rb


@pytest.mark.parametrize("n_step", [1, 3])
def test_every_replay_device_gives_the_same_batches(n_step):
    buffers = {s: filled_buffer(s, n_step=n_step) for s in ("cpu", "pinned", "cuda")}
    for _ in range(5):
        batches = {s: rb.sample(32) for s, rb in buffers.items()}
        for s in ("pinned", "cuda"):
            for field in FIELDS:
                x, y = getattr(batches["cpu"], field), getattr(batches[s], field)
                assert y.device.type == "cuda" and torch.equal(x, y), (s, field)
            np.testing.assert_array_equal(batches["cpu"].indices, batches[s].indices)


def _learner(config: DQNConfig, seed: int = 0):
    torch.manual_seed(seed)
    q_net = build_q_network((4, 84, 84), 4, dueling=config.dueling).to(DEVICE)
    target = copy.deepcopy(q_net).requires_grad_(False)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=1e-3, fused=True)
    make_capturable(optimizer)  # the same optimizer arithmetic on both sides
    step = DeviceStep(Precision(config.precision, DEVICE), optimizer,
                      graph_safe=True)
    return q_net, target, optimizer, step


@pytest.mark.parametrize("settings", [
    {}, {"double": True, "max_grad_norm": 1.0, "dueling": True}, {"precision": "bf16-mixed"},
    {"prioritized": True}])
def test_cuda_graph_update_equals_the_eager_update(settings):
    config = DQNConfig(device="cuda", batch_size=32, **settings)
    rb = filled_buffer("cuda", prioritized=config.prioritized)
    batches = [rb.sample(32) for _ in range(8)]
    eager_nets = _learner(config)
    graph_nets = _learner(config)
    eager = functools.partial(full_update, eager_nets[0], eager_nets[1], eager_nets[2],
                              eager_nets[3], config)
    graphed = GraphedUpdate(functools.partial(full_update, graph_nets[0], graph_nets[1],
                                              graph_nets[2], graph_nets[3], config),
                            graph_nets[2], warmup=2)
    tol = dict(rtol=2e-2, atol=2e-2) if config.precision == "bf16-mixed" else \
        dict(rtol=1e-5, atol=1e-6)
    for i, batch in enumerate(batches):
        a = [t.clone() for t in eager(batch)]
        b = [t.clone() for t in graphed(batch)]
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **tol)
        for p, q in zip(eager_nets[0].parameters(), graph_nets[0].parameters()):
            torch.testing.assert_close(p, q, **tol)
        if i == 4:  # a target sync between replays: the graph reads the new target weights
            update_target(eager_nets[1], eager_nets[0])
            update_target(graph_nets[1], graph_nets[0])
    assert graphed.graph is not None and graphed.calls == 8
    eager_nets[3].check()
    graph_nets[3].check()


@pytest.mark.parametrize("storage", ["pinned", "cuda"])
@pytest.mark.parametrize("use_graph", [False, True])
def test_the_update_path_does_not_synchronise(storage, use_graph):
    config = DQNConfig(device="cuda", double=True)
    rb = filled_buffer(storage)
    q_net, target, optimizer, step = _learner(config)
    update = functools.partial(full_update, q_net, target, optimizer, step, config)
    if use_graph:
        update = GraphedUpdate(update, optimizer, warmup=2)
    for _ in range(3):  # warm-up and capture outside the check (capture itself may sync)
        update(rb.sample(32))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):
            loss, _, _ = update(rb.sample(32))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(loss.item())
    step.check()


@pytest.mark.parametrize("precision,cuda_graph", [
    ("32", False), ("32", True), ("bf16-mixed", False), ("bf16-mixed", True),
    ("16-mixed", False)])
def test_short_catch_runs_on_cuda(tmp_path, precision, cuda_graph):
    config = DQNConfig(env_id=CATCH_ID, total_timesteps=3_000, learning_starts=500,
                       buffer_size=5_000, train_frequency=1, target_network_frequency=250,
                       device="cuda", precision=precision, cuda_graph=cuda_graph,
                       replay_device="cuda" if cuda_graph else "pinned", progress=False,
                       eval_episodes=0, checkpoint_frequency=0, run_dir=str(tmp_path / "run"))
    metrics = train(config)
    assert metrics["num_updates"] == 2_500
    assert metrics["cuda_graph"] is cuda_graph
    assert math.isfinite(metrics["mean_return_last100"])
    print(f"\ncatch cuda precision={precision} cuda_graph={cuda_graph}: "
          f"{metrics['sps_learning']:.0f} SPS learning (1 update per step, batch 32)")
