"""Target Q-values prefetched on a second thread compute exactly what the serial loop computes,
also when the target network changes between two updates (no read of weights mid-update)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from rlgen.agents.dqn import DQNConfig, train
from rlgen.agents.dqn_eval import load_q_network
from rlgen.agents.prefetch import TargetPrefetcher
from rlgen.agents.replay import _VALID as VALID
from rlgen.agents.replay import ReplayBuffer

# train_frequency 4 with target_network_frequency 6: target syncs fall between updates, while
# the next batch's targets are being computed beside acting.
OFF_GRID = dict(env_id="CartPole-v1", total_timesteps=700, learning_starts=200,
                buffer_size=1_000, batch_size=32, train_frequency=4, target_network_frequency=6,
                learning_rate=1e-3, checkpoint_frequency=0, eval_episodes=0, seed=5,
                device="cpu", torch_threads=2, progress=False)


def _fixed_draws(monkeypatch):
    """Every run draws the same slot ids in the same order (from the first 200 transitions,
    which both loops hold at every draw): the prefetching loop draws a batch 4 steps before
    the serial loop would, so the replay's own draws would differ."""
    rng = np.random.default_rng(0)

    def draw_uniform(self, batch_size):
        sampleable = np.flatnonzero(self._flags[0, :200] & VALID)
        return rng.choice(sampleable, size=batch_size)

    monkeypatch.setattr(ReplayBuffer, "_sample_uniform", draw_uniform)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_prefetch_with_off_grid_target_updates_equals_the_serial_loop(tmp_path, monkeypatch,
                                                                        tau):
    results = {}
    for prefetch in (False, True):
        _fixed_draws(monkeypatch)
        metrics = train(DQNConfig(**OFF_GRID, tau=tau, prefetch_targets=prefetch,
                                  run_dir=str(tmp_path / f"prefetch_{prefetch}")))
        assert metrics["prefetch_targets"] is prefetch
        results[prefetch] = load_q_network(metrics["run_dir"])[0].state_dict()
        monkeypatch.undo()
    assert metrics["num_updates"] == (700 - 200) // 4
    for key, value in results[False].items():
        assert torch.equal(results[True][key], value), key


class _SlowTarget(nn.Module):
    """A 'target network' whose forward takes a while, recording the weight it read."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.started = threading.Event()

    def forward(self, x):
        self.started.set()
        time.sleep(0.05)
        return x * self.weight


class _Batch:
    def __init__(self):
        self.next_obs = torch.ones(2, 3)
        self.indices = np.array([0, 1])
        self.weights = torch.ones(2)


def test_holding_waits_for_a_running_computation_and_recomputes_on_new_weights():
    target = _SlowTarget()
    prefetcher = TargetPrefetcher(lambda batch: (target(batch.next_obs), None),
                                  replay=None, enabled=True)
    try:
        prefetcher.start(_Batch())
        assert target.started.wait(5)  # the worker is inside the forward pass
        with prefetcher.holding():
            assert not prefetcher.pending  # nothing reads the weights now
            target.weight.fill_(3.0)
        assert prefetcher.pending
        _, (next_q, _) = prefetcher.take()
        assert torch.equal(next_q, torch.full((2, 3), 3.0))  # computed on the new weight
        with pytest.raises(RuntimeError, match="no prefetched batch"):
            prefetcher.take()
    finally:
        prefetcher.close()


def test_a_disabled_prefetcher_computes_a_restored_batch_when_taken():
    calls = []
    prefetcher = TargetPrefetcher(lambda batch: (calls.append(1) or batch.next_obs, None),
                                  replay=None, enabled=False)
    batch = _Batch()
    prefetcher.start(batch)
    assert prefetcher.pending and calls == []  # nothing runs until it is taken
    state = prefetcher.state_dict()
    assert state["indices"].tolist() == [0, 1]
    taken, (next_q, _) = prefetcher.take()
    assert taken is batch and calls == [1] and torch.equal(next_q, batch.next_obs)
    assert prefetcher.state_dict() == {"indices": None, "weights": None}
