"""--num-envs N keeps the single-env schedule in agent steps: the same updates and target syncs,
in the same order, and the same epsilon at the same agent step (rlgen.agents.schedule).

The runs are real ``train()`` runs on the pixel Catch game (tests/agents/catch_env.py at 42x42,
Nature CNN) with a spy on the loop's ``gradient_step``, ``update_target`` and ``select_actions``;
``learning_starts`` (46) and ``target_network_frequency`` (20) are chosen so that N = 3, 4 and
8 cross them inside an iteration.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlgen.agents.dqn as dqn
from rlgen.agents.schedule import TARGET_SYNC, UPDATE, env_epsilons, learner_events

sys.path.insert(0, str(Path(__file__).parent))
from catch_env import CatchEnv  # noqa: E402

# Catch drawn at 42x42 (the Nature CNN's smallest inputs are 36x36): the same schedule at a
# quarter of the 84x84 game's compute.
SMALL_CATCH_ID = "RlgenTest/CatchSmall-v0"
if SMALL_CATCH_ID not in gym.registry:
    gym.register(SMALL_CATCH_ID, entry_point=CatchEnv, kwargs={"size": 42},
                 max_episode_steps=100)

TOTAL, LEARNING_STARTS, TRAIN_FREQUENCY, TARGET_FREQUENCY = 240, 46, 4, 20
BASE = dict(env_id=SMALL_CATCH_ID, total_timesteps=TOTAL, learning_starts=LEARNING_STARTS,
            train_frequency=TRAIN_FREQUENCY, target_network_frequency=TARGET_FREQUENCY,
            buffer_size=2_000, batch_size=8, exploration_fraction=0.5, start_e=1.0, end_e=0.05,
            seed=3, device="cpu", torch_threads=1, progress=False, eval_episodes=0,
            checkpoint_frequency=0, log_frequency=10_000, prefetch_targets=False)


class ScheduleSpy:
    """Records, in order, every gradient update and target sync with the loop's global_step at
    that moment, and the epsilon each env acted with."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.loop: Any = None
        self.events: list[tuple[str, int]] = []
        self.epsilons: list[float] = []
        spy = self

        class LoopState(dqn.LoopState):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                spy.loop = self

        real_step, real_sync, real_select = dqn.gradient_step, dqn.update_target, \
            dqn.select_actions

        def gradient_step(*args, **kwargs):
            spy.events.append((UPDATE, spy.loop.global_step))
            return real_step(*args, **kwargs)

        def update_target(*args, **kwargs):
            spy.events.append((TARGET_SYNC, spy.loop.global_step))
            return real_sync(*args, **kwargs)

        def select_actions(q_network, obs, epsilon, rng, n_actions):
            spy.epsilons.extend(np.broadcast_to(epsilon, (obs.shape[0],)).tolist())
            return real_select(q_network, obs, epsilon, rng, n_actions)

        monkeypatch.setattr(dqn, "LoopState", LoopState)
        monkeypatch.setattr(dqn, "gradient_step", gradient_step)
        monkeypatch.setattr(dqn, "update_target", update_target)
        monkeypatch.setattr(dqn, "select_actions", select_actions)


def run(run_dir: Path, **overrides) -> tuple[dict, ScheduleSpy]:
    config = dqn.DQNConfig(**{**BASE, **overrides, "run_dir": str(run_dir)})
    with pytest.MonkeyPatch.context() as patch:
        spy = ScheduleSpy(patch)
        return dqn.train(config), spy


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[dict, ScheduleSpy]:
    """The one-env run every N is compared with."""
    return run(tmp_path_factory.mktemp("single") / "run", num_envs=1)


def test_single_env_schedule_is_the_published_one(single):
    """One env: an update at every multiple of train_frequency after learning_starts, then a
    sync at every multiple of target_network_frequency; epsilon linear over 120 steps."""
    metrics, spy = single
    steps = range(LEARNING_STARTS + 1, TOTAL + 1)
    expected = []
    for s in steps:
        expected += [(UPDATE, s)] * (s % TRAIN_FREQUENCY == 0)
        expected += [(TARGET_SYNC, s)] * (s % TARGET_FREQUENCY == 0)
    assert spy.events == expected
    assert metrics["num_updates"] == 49  # multiples of 4 in (46, 240]
    assert spy.epsilons == pytest.approx(
        [1.0 + min(s / 120, 1.0) * (0.05 - 1.0) for s in range(TOTAL)])


@pytest.mark.parametrize("num_envs,backend,prefetch", [
    (4, "sync", False), (3, "sync", True), (8, "sync", False), (4, "async", False)])
def test_num_envs_follows_the_single_env_schedule(tmp_path, single, num_envs, backend,
                                                  prefetch):
    """N envs: the same sequence of updates and target syncs as one env over the same 240
    agent steps (each at the first iteration that reaches its agent step), the same number of
    updates, and the same epsilon at every agent step."""
    single_metrics, single = single
    metrics, vector = run(tmp_path / "run", num_envs=num_envs, env_backend=backend,
                          prefetch_targets=prefetch)

    def reached_at(step: int) -> int:  # the loop's global_step after the iteration holding it
        return -(-step // num_envs) * num_envs

    assert metrics["global_step"] == single_metrics["global_step"] == TOTAL
    assert metrics["num_updates"] == single_metrics["num_updates"] == 49
    assert [kind for kind, _ in vector.events] == [kind for kind, _ in single.events]
    assert [step for _, step in vector.events] == [reached_at(s) for _, s in single.events]
    assert sum(kind == TARGET_SYNC for kind, _ in vector.events) == 10  # 60, 80, ..., 240
    assert len(vector.epsilons) == TOTAL
    assert vector.epsilons == pytest.approx(single.epsilons)


def test_learner_events_carry_the_remainder_and_interleave_syncs():
    kw = dict(learning_from=0, train_frequency=4, target_frequency=6)
    # 3 envs, train every 4 agent steps: iterations make 0, 1, 1, 1 updates (3 + 3 + 3 + 3 = 12)
    per_iteration = [learner_events(p, p + 3, **kw) for p in range(0, 12, 3)]
    assert [[e for e in events if e[1] == UPDATE] for events in per_iteration] == [
        [], [(4, UPDATE)], [(8, UPDATE)], [(12, UPDATE)]]
    # a sync between two updates of one iteration stays between them
    assert learner_events(0, 12, **kw) == [(4, UPDATE), (6, TARGET_SYNC), (8, UPDATE),
                                           (12, UPDATE), (12, TARGET_SYNC)]
    # nothing at or before learning_from, even inside an iteration that crosses it
    assert learner_events(48, 56, learning_from=50, train_frequency=4, target_frequency=100) \
        == [(52, UPDATE), (56, UPDATE)]
    assert learner_events(40, 48, learning_from=50, train_frequency=4, target_frequency=4) == []
    with pytest.raises(ValueError, match="train_frequency"):
        learner_events(0, 4, learning_from=0, train_frequency=0, target_frequency=1)


def test_env_epsilons_give_each_env_its_own_agent_step():
    def epsilon_at(step: int) -> float:
        return 1.0 - step / 100

    assert env_epsilons(epsilon_at, 10, 1) == pytest.approx(0.9)
    np.testing.assert_allclose(env_epsilons(epsilon_at, 10, 4), [0.9, 0.89, 0.88, 0.87])
