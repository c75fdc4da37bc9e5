"""DQN's learner schedule in agent steps, whatever the number of environments.

The single-env loop (Mnih et al. 2015; CleanRL's ``dqn_atari.py``) does, at agent step ``s``
once ``s > learning_from``: one gradient update when ``s`` is a multiple of
``train_frequency``, then a target-network sync when ``s`` is a multiple of
``target_frequency``; the action taken at step ``s + 1`` uses epsilon at ``s``.

With ``N`` environments one loop iteration advances the agent step from ``previous`` to
``previous + N``. :func:`learner_events` lists what the single-env loop would have done at the
agent steps ``(previous, previous + N]``, in its order, so ``N`` envs make exactly the updates
and target syncs of one env over the same agent steps: ``N / train_frequency`` updates per
iteration, with the remainder carried to the next (the multiples are absolute), no update
before ``learning_from``, and a sync that falls between two updates of one iteration stays
between them. :func:`env_epsilons` gives env ``i`` the epsilon of its own agent step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

UPDATE, TARGET_SYNC = "update", "target_sync"


def _multiples(low: int, high: int, every: int) -> range:
    """The multiples of ``every`` in ``(low, high]``."""
    first = (low // every + 1) * every
    return range(first, high + 1, every)


def learner_events(previous: int, step: int, *, learning_from: int, train_frequency: int,
                   target_frequency: int) -> list[tuple[int, str]]:
    """``(agent_step, UPDATE | TARGET_SYNC)`` for the agent steps in ``(previous, step]`` after
    ``learning_from``, sorted by step, an update before a sync at the same step."""
    if train_frequency < 1 or target_frequency < 1:
        raise ValueError(f"train_frequency and target_frequency must be >= 1, got "
                         f"{train_frequency} and {target_frequency}")
    low = max(previous, learning_from)
    if step <= low:
        return []
    events = [(s, 0, UPDATE) for s in _multiples(low, step, train_frequency)]
    events += [(s, 1, TARGET_SYNC) for s in _multiples(low, step, target_frequency)]
    events.sort()
    return [(s, kind) for s, _, kind in events]


def env_epsilons(epsilon_at: Callable[[int], float], previous: int,
                 num_envs: int) -> np.ndarray | float:
    """Epsilon of each env for the iteration after agent step ``previous``: env ``i`` takes
    agent step ``previous + i + 1``, so it gets ``epsilon_at(previous + i)`` (one env: a
    float)."""
    if num_envs == 1:
        return epsilon_at(previous)
    return np.array([epsilon_at(previous + i) for i in range(num_envs)])
