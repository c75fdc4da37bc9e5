"""EnvPool backend checks, run where EnvPool is installed (``pip install envpool``, about 1 GB
with its assets, so not in rlgen's CI): ``python -m pytest optional_tests -q``.

They live outside ``tests/`` so the CI suite never reports them as skipped; they fail (not
skip) without EnvPool.

Measured with EnvPool 1.2.5 against ale-py 0.12's vector env: identical frames, rewards,
endings and scores for the same seed and actions with fire-on-reset, episodic life or whole
games, and no no-op starts (their random no-op counts come from different generators). Known
differences, so not asserted: without fire-on-reset a frame differs from the first step on; the
final frame of a time-limit truncation and of a game over under sticky actions differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlgen.agents.envs import make_vector_env

BREAKOUT = "ALE/Breakout-v5"


def test_envpool_is_installed():
    import envpool  # noqa: F401


@pytest.mark.parametrize("training", [True, False])
def test_envpool_matches_ale_vector(training):
    kw = dict(num_envs=2, seed=3, noop_max=0, fire_reset=True, training=training)
    with make_vector_env(BREAKOUT, backend="envpool", **kw) as a, \
            make_vector_env(BREAKOUT, backend="ale-vector", **kw) as b:
        assert a.obs_shape == b.obs_shape == (4, 84, 84)
        np.testing.assert_array_equal(a.reset(), b.reset())  # zero-padded stacks in both
        rng = np.random.default_rng(0)
        endings = 0
        for t in range(400):
            actions = rng.integers(0, a.num_actions, size=2)
            out_a, out_b = a.step(actions), b.step(actions)
            for name, u, v in zip(("obs", "rewards", "terms", "truncs", "final_obs"),
                                  out_a, out_b):
                np.testing.assert_array_equal(u, v, err_msg=f"{name} differs at step {t}")
            endings += int(out_b[2].sum())
        assert endings >= 2  # lives lost / games over on the way
        assert a.pop_episodes() == b.pop_episodes()


def test_envpool_trains_dqn(tmp_path):
    from rlgen.agents.dqn import DQNConfig, train

    metrics = train(DQNConfig(env_id=BREAKOUT, env_backend="envpool", num_envs=2,
                              total_timesteps=600, learning_starts=300, buffer_size=1_000,
                              eval_episodes=0, checkpoint_frequency=0, device="cpu",
                              progress=False, run_dir=str(tmp_path / "run")))
    assert metrics["global_step"] == 600 and metrics["num_updates"] > 0
