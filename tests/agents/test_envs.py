"""Environments: Atari preprocessing, backends agreeing frame for frame, same-step autoreset,
episodic life against whole-game scores, reward clipping, CartPole, errors."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest

from rlgen.agents.envs import EnvError, make_vector_env

BREAKOUT = "ALE/Breakout-v5"


def rollout(envs, steps: int, seed: int = 0):
    """Random actions (same for any backend given the seed); the list of step outputs."""
    rng = np.random.default_rng(seed)
    outs = []
    for _ in range(steps):
        actions = rng.integers(0, envs.num_actions, size=envs.num_envs)
        outs.append(envs.step(actions))
    return outs


@pytest.mark.parametrize("backend", ["sync", "ale-vector"])
def test_atari_observations(backend):
    with make_vector_env(BREAKOUT, num_envs=2, seed=1, backend=backend) as envs:
        assert envs.backend == backend and envs.is_atari
        assert envs.obs_shape == (4, 84, 84) and envs.num_actions == 4
        obs = envs.reset()
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        assert not obs[:, :3].any() and obs[:, 3].any()  # a new game's stack is zero-padded
        obs, rewards, terms, truncs, final_obs = envs.step(np.array([1, 1]))
        assert rewards.dtype == np.float32 and terms.dtype == bool and truncs.dtype == bool
        assert final_obs.shape == obs.shape


def test_sync_and_ale_vector_backends_agree_exactly():
    # Same seed, same actions: the wrapper stack reproduces ale-py's C++ preprocessing, its
    # FIRE/no-op reset and its no-op random numbers, so every output is identical - with sticky
    # actions, lost lives, game overs and time limits (800 frames = 200 steps) on the way.
    kw = dict(num_envs=2, seed=3, repeat_action_probability=0.25, max_episode_frames=800)
    with make_vector_env(BREAKOUT, backend="sync", **kw) as a, \
            make_vector_env(BREAKOUT, backend="ale-vector", **kw) as b:
        np.testing.assert_array_equal(a.reset(), b.reset())
        outs_a, outs_b = rollout(a, 400), rollout(b, 400)
        for t, (x, y) in enumerate(zip(outs_a, outs_b)):
            for name, u, v in zip(("obs", "rewards", "terms", "truncs", "final_obs"), x, y):
                np.testing.assert_array_equal(u, v, err_msg=f"{name} differs at step {t}")
        episodes = a.pop_episodes()
        assert episodes == b.pop_episodes()
        truncs = np.array([o[3] for o in outs_a])
        terms = np.array([o[2] for o in outs_a])
        assert truncs.any() and terms.sum() > truncs.sum()  # both kinds of ending happened
        assert len(episodes) >= 2


def test_async_backend_matches_sync():
    kw = dict(num_envs=2, seed=5, max_episode_frames=400)
    with make_vector_env(BREAKOUT, backend="sync", **kw) as a, \
            make_vector_env(BREAKOUT, backend="async", **kw) as b:
        np.testing.assert_array_equal(a.reset(), b.reset())
        for x, y in zip(rollout(a, 120), rollout(b, 120)):
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)
        assert a.pop_episodes() == b.pop_episodes()


@pytest.mark.parametrize("backend", ["sync", "ale-vector"])
def test_same_step_autoreset_and_episodic_life(backend):
    with make_vector_env(BREAKOUT, num_envs=1, seed=0, backend=backend,
                         max_episode_frames=2000) as envs:
        envs.reset()
        game_ends = life_losses = 0
        for obs, _, term, trunc, final_obs in rollout(envs, 400, seed=1):
            if not (term[0] or trunc[0]):
                assert final_obs is obs or np.array_equal(final_obs, obs)
                continue
            if np.array_equal(final_obs[0], obs[0]):
                life_losses += 1  # the game goes on: same stack, no reset
                assert term[0] and obs[0, :3].any()
            else:
                game_ends += 1  # obs is already the next game's (zero-padded) first stack
                assert not obs[0, :3].any() and obs[0, 3].any()
                assert final_obs[0, :3].any()
        assert life_losses >= 4 * game_ends >= 4  # Breakout has 5 lives
        assert len(envs.pop_episodes()) == game_ends


def test_episodic_life_and_clipping_only_when_training():
    # Training and evaluation settings see the very same frames (a lost life does not reset
    # the game); only terminations and rewards differ. Space Invaders scores 5-30 per alien.
    game = "ALE/SpaceInvaders-v5"
    with make_vector_env(game, seed=2, training=True, backend="sync") as train, \
            make_vector_env(game, seed=2, training=False, backend="sync") as ev:
        np.testing.assert_array_equal(train.reset(), ev.reset())
        rng = np.random.default_rng(0)
        raw_total, n_train_terms, n_eval_terms = 0.0, 0, 0
        for _ in range(600):
            actions = rng.integers(0, train.num_actions, size=1)
            a, b = train.step(actions), ev.step(actions)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], np.sign(b[1]))  # clipped when training
            raw_total += b[1].sum()
            n_train_terms += int(a[2].sum())
            n_eval_terms += int(b[2].sum())
            assert not b[2].any() or not np.array_equal(b[0], b[4])  # eval ends = real resets
        assert raw_total > 0 and ev.pop_episodes() == train.pop_episodes()
        assert n_train_terms > n_eval_terms >= 1


def test_game_score_is_unclipped_and_over_all_lives():
    with make_vector_env("ALE/SpaceInvaders-v5", seed=4, training=True, backend="ale-vector",
                         num_envs=2) as envs:
        envs.reset()
        raw = np.zeros(2)
        lengths = np.zeros(2, dtype=int)
        expected = []
        rng = np.random.default_rng(0)
        for _ in range(600):
            obs, rewards, term, trunc, final_obs = envs.step(rng.integers(0, 6, size=2))
            raw += envs.last_raw_rewards
            lengths += 1
            assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
            game_over = (term | trunc) & np.array([not np.array_equal(final_obs[i], obs[i])
                                                   for i in range(2)])
            for i in np.flatnonzero(game_over):
                expected.append((raw[i], int(lengths[i])))
                raw[i], lengths[i] = 0, 0
        episodes = envs.pop_episodes()
        assert sorted(episodes) == sorted(expected) and len(episodes) >= 1
        assert max(score for score, _ in episodes) > 30  # unclipped points, all lives


def test_time_limit_truncates():
    with make_vector_env(BREAKOUT, seed=0, max_episode_frames=40, backend="sync") as envs:
        envs.reset()
        outs = rollout(envs, 25)
        truncs = [bool(o[3][0]) for o in outs]
        assert truncs[9] and truncs[19] and sum(truncs) == 2  # 40 frames = 10 agent steps
        assert [n for _, n in envs.pop_episodes()] == [10, 10]
    with make_vector_env(BREAKOUT, seed=0, max_episode_frames=40, backend="ale-vector") as envs:
        envs.reset()
        outs = rollout(envs, 25)
        assert [bool(o[3][0]) for o in outs] == truncs
        assert [n for _, n in envs.pop_episodes()] == [10, 10]


def test_noframeskip_v4_id_gets_the_same_preprocessing():
    with make_vector_env("BreakoutNoFrameskip-v4", seed=0, backend="sync") as a, \
            make_vector_env(BREAKOUT, seed=0, backend="sync") as b:
        np.testing.assert_array_equal(a.reset(), b.reset())
        for x, y in zip(rollout(a, 30), rollout(b, 30)):
            np.testing.assert_array_equal(x[0], y[0])


def test_render_frame():
    with make_vector_env(BREAKOUT, seed=0, capture_video=True) as envs:
        assert envs.backend == "sync"  # auto picks a backend that can render
        envs.reset()
        frame = envs.render_frame(0)
        assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8
    with make_vector_env(BREAKOUT, seed=0, backend="ale-vector") as envs:
        envs.reset()
        with pytest.raises(EnvError, match="sync"):
            envs.render_frame(0)


def test_cartpole():
    with make_vector_env("CartPole-v1", num_envs=3, seed=0) as envs:
        assert not envs.is_atari and envs.backend == "sync"
        obs = envs.reset()
        assert obs.shape == (3, 4) and obs.dtype == np.float32 and envs.obs_shape == (4,)
        lengths = np.zeros(3, dtype=int)
        finished = []
        for obs, rewards, term, trunc, final_obs in rollout(envs, 200):
            assert obs.dtype == np.float32 and rewards.dtype == np.float32
            lengths += 1
            for i in np.flatnonzero(term | trunc):
                assert not np.array_equal(final_obs[i], obs[i])  # obs is the next episode's
                finished.append((float(lengths[i]), int(lengths[i])))
                lengths[i] = 0
        assert finished and sorted(envs.pop_episodes()) == sorted(finished)


def test_errors(monkeypatch):
    with pytest.raises(EnvError, match="ALE/Breakout-v5"):
        make_vector_env("ALE/Breakout-v6")
    with pytest.raises(EnvError, match="CartPole-v1"):
        make_vector_env("CartPol-v1")
    with pytest.raises(EnvError, match="Discrete"):
        make_vector_env("Pendulum-v1")
    with pytest.raises(EnvError, match="backend"):
        make_vector_env("CartPole-v1", backend="gpu")
    with pytest.raises(EnvError, match="Atari games only"):
        make_vector_env("CartPole-v1", backend="ale-vector")
    with pytest.raises(EnvError, match="num_envs"):
        make_vector_env("CartPole-v1", num_envs=0)
    with make_vector_env("CartPole-v1") as envs:
        envs.reset()
        with pytest.raises(ValueError, match="shape"):
            envs.step(np.array([0, 1]))
        with pytest.raises(ValueError, match=r"\[0, 2\)"):
            envs.step(np.array([2]))
    monkeypatch.setitem(sys.modules, "ale_py", None)  # as if ale-py were not installed
    with pytest.raises(EnvError, match=r'pip install "rlgen\[atari\]"'):
        make_vector_env("ALE/Pong-v5")


class _PixelToy(gym.Env):
    """Two actions, uint8 (2, 8, 8) observations, episodes of 5 steps."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (2, 8, 8), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full((2, 8, 8), self.t, np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.full((2, 8, 8), self.t, np.uint8), 1.0, self.t == 5, False, {}


def test_other_pixel_envs_keep_uint8():
    if "RlgenTest/PixelToy-v0" not in gym.registry:
        gym.register("RlgenTest/PixelToy-v0", entry_point=_PixelToy)
    with make_vector_env("RlgenTest/PixelToy-v0", num_envs=2) as envs:
        assert envs.obs_shape == (2, 8, 8) and not envs.is_atari
        assert envs.reset().dtype == np.uint8
        outs = rollout(envs, 5)
        assert outs[-1][2].all() and outs[-1][4][0, 0, 0, 0] == 5 and outs[-1][0][0, 0, 0, 0] == 0
        assert envs.pop_episodes() == [(5.0, 5), (5.0, 5)]
