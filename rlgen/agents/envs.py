"""Atari (ALE) preprocessing and vector environments behind one small interface.

Preprocessing follows Mnih et al., "Human-level control through deep reinforcement learning"
(Nature 2015) with the evaluation advice of Machado et al., "Revisiting the Arcade Learning
Environment" (JAIR 2018):

- up to ``noop_max`` no-op frames at reset (a FIRE frame first in games that need it, which
  counts as one of them), so starts differ;
- the action is repeated ``frame_skip`` (4) frames and the observation is the pixel-wise max
  of the last two, removing the flicker of sprites drawn every other frame;
- grayscale, resized to 84x84 with ``cv2.INTER_AREA``, a stack of the last 4 frames,
  uint8, channel first ``(4, 84, 84)``; the stack of a new game is zero-padded (as in the
  DeepMind code, ALE's vector env and EnvPool);
- training only: a lost life ends the agent's episode (``terminations``) while the game goes
  on (no reset, no extra FIRE: the Nature DQN code did the same), and rewards are clipped to
  their sign; evaluation (``training=False``) sees unclipped rewards and whole games;
- a game is truncated after ``max_episode_frames`` (108,000 frames = 30 minutes) emulator
  frames, no-op frames at reset not counted.

Backends, all normalized to the same-step autoreset of :class:`VecEnv` (an env that ends is
reset in the same ``step``, which returns the true final observation separately):
``"sync"`` / ``"async"`` run this module's gymnasium wrappers in gymnasium's
SyncVectorEnv / AsyncVectorEnv; ``"ale-vector"`` is ale-py's C++ ``AtariVectorEnv`` with the
same preprocessing built in (its FIRE and no-op reset, its stale-frame behaviour when a game
ends inside a frame skip, and even its no-op random numbers are reproduced by the wrappers
here, so for the same seed and actions both give identical observations); ``"envpool"`` if
that package is installed (frames stacked here with the same zero padding; identical to
``"ale-vector"`` with fire-on-reset and no no-op starts, see ``optional_tests/test_envpool.py``
for the measured differences otherwise). Lives, reward clipping and episode scores are handled in
:class:`VecEnv` itself, identically for every backend.

MinAtar (Young & Tian, "MinAtar: An Atari-Inspired Testbed for Thorough and Reproducible
Reinforcement Learning Experiments", arXiv:1903.03176, 2019): ``MinAtar/Breakout-v1`` (and
Asterix, Freeway, Seaquest, SpaceInvaders; ``-v0`` = all 6 actions, ``-v1`` = the game's
minimal set) through the ``minatar`` package's gymnasium ids, registered here on first use.
Its (10, 10, C) boolean channels-last grids become (C, 10, 10) uint8 planes of 0/1 (a view:
the vector env's batch is the one copy per step), with no Atari preprocessing; MinAtar's own
sticky actions (0.1) and difficulty ramping are on unless set, rewards are never clipped and
there are no lives, so an episode is a game and its return the game's score. Frames for videos
are drawn from the planes (one colour per channel, upscaled).

Other gymnasium environments (CartPole-v1, ...) get the same interface and none of the Atari
wrappers; their observations become float32, except uint8 (pixel) ones, which stay uint8.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from rlgen.errors import InputError

BACKENDS = ("auto", "sync", "async", "ale-vector", "envpool")
_ATARI_ENTRY_POINT = "ale_py.env:AtariEnv"
_INSTALL_ATARI = 'pip install "rlgen[atari]"'
_MINATAR_ENTRY_POINT = "minatar.gym:BaseEnv"
_INSTALL_MINATAR = 'pip install "rlgen[minatar]"'
MINATAR_STICKY_ACTIONS = 0.1  # MinAtar's default probability of repeating the last action


class EnvError(InputError):
    """A bad environment request: unknown id, unsupported space, missing package or backend."""


# --------------------------------------------------------------------------- env ids / imports


def _import_ale():
    try:
        import ale_py
    except ImportError as exc:
        raise EnvError(
            f"Atari environments need ale-py, which is not installed ({exc}). "
            f"Install it with: {_INSTALL_ATARI}"
        ) from exc
    gym.register_envs(ale_py)
    return ale_py


def _register_minatar() -> None:
    """Registers MinAtar's gymnasium ids (``MinAtar/Breakout-v1`` ...): on gymnasium 1.x the
    ``minatar`` package only does so when asked."""
    if "MinAtar/Breakout-v1" in gym.registry:
        return
    try:
        from minatar.gym import register_envs
    except ImportError as exc:
        raise EnvError(f"MinAtar environments need the minatar package, which is not installed "
                       f"({exc}). Install it with: {_INSTALL_MINATAR}") from exc
    register_envs()


def _looks_atari(env_id: str) -> bool:
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id:
        return True
    spec = gym.registry.get(env_id)
    return spec is not None and spec.entry_point == _ATARI_ENTRY_POINT


def resolve_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The gymnasium spec of ``env_id``; registers ale-py's ids first when ale-py is present."""
    if not isinstance(env_id, str) or not env_id:
        raise EnvError("env_id must be a non-empty string such as 'ALE/Breakout-v5', "
                       f"got {env_id!r}")
    try:
        _import_ale()
    except EnvError:
        if _looks_atari(env_id):
            raise
    if env_id.startswith("MinAtar/"):
        _register_minatar()
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.5)
        hint = f" Closest registered ids: {', '.join(close)}." if close else ""
        raise EnvError(f"Unknown environment id {env_id!r}.{hint}")
    return gym.spec(env_id)


# --------------------------------------------------------------------------- Atari wrappers


class _StdUniformNoops:
    """Draws the no-op count exactly as ale-py's C++ vector env does.

    ``std::mt19937(seed)`` is numpy's legacy ``RandomState(seed)`` generator (same seeding,
    same 32-bit stream); ``std::uniform_int_distribution`` (libstdc++ of GCC >= 11) turns a
    32-bit draw into ``[0, n)`` by Lemire's multiply-shift with rejection. Matching it makes
    the wrapper stack and ale-py's vector env start every game with the same number of no-ops
    (checked against ale-py 0.12.1: tests/agents/test_envs.py).
    """

    def __init__(self, seed: int | None) -> None:
        self._rs = np.random.RandomState(seed)

    def _draw(self) -> int:
        return int(self._rs.randint(0, 2**32, dtype=np.uint64))

    def integers(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` (``n >= 1``)."""
        product = self._draw() * n
        low = product & 0xFFFFFFFF
        if low < n:
            threshold = (2**32 - n) % n
            while low < threshold:
                product = self._draw() * n
                low = product & 0xFFFFFFFF
        return product >> 32


class AtariPreprocess(gym.Wrapper):
    """No-op / FIRE reset, frame skip with max-pool, grayscale and resize, game time limit.

    Wraps an ale-py ``AtariEnv`` created with ``frameskip=1`` and drives its ALE directly (one
    ``ale.act`` per emulator frame, screens read into preallocated buffers). Observations are
    single ``(screen_size, screen_size)`` uint8 frames (``(..., 3)`` when ``grayscale=False``);
    ``terminated`` means game over, ``info["lives"]`` carries the lives left. The sequence of
    emulator calls is the one of ale-py's ``AtariVectorEnv``, so both backends agree frame for
    frame: reset = ``reset_game``, one FIRE frame if the game has FIRE, then
    ``U[0, noop_max) - 1`` no-op frames; a step stops early on game over or the time limit, in
    which case the max-pool buffers keep the frames of the previous step (the standard
    behaviour of every frame-skip wrapper).
    """

    def __init__(self, env: gym.Env, *, frame_skip: int = 4, noop_max: int = 30,
                 screen_size: int = 84, grayscale: bool = True, fire_reset: bool = True,
                 max_episode_frames: int = 108_000) -> None:
        super().__init__(env)
        import cv2  # opencv ships with the [atari] extra

        self._cv2 = cv2
        self.ale = env.unwrapped.ale
        self.frame_skip = frame_skip
        self.noop_max = noop_max
        self.screen_size = screen_size
        self.grayscale = grayscale
        self.max_episode_frames = max_episode_frames
        self._action_set = list(env.unwrapped._action_set)
        from ale_py import Action

        self._noop = Action.NOOP
        self._fire = Action.FIRE
        self.fire_reset = fire_reset and Action.FIRE in self._action_set
        height, width = self.ale.getScreenDims()
        raw_shape = (height, width) if grayscale else (height, width, 3)
        self._raw = np.zeros((2, *raw_shape), dtype=np.uint8)
        out_shape = (screen_size, screen_size) if grayscale else (screen_size, screen_size, 3)
        self.observation_space = gym.spaces.Box(0, 255, out_shape, dtype=np.uint8)
        self._noops = _StdUniformNoops(None)
        self._elapsed = 0

    def _grab(self, slot: int) -> None:
        if self.grayscale:
            self.ale.getScreenGrayscale(self._raw[slot])
        else:
            self.ale.getScreenRGB(self._raw[slot])

    def _frame(self) -> np.ndarray:
        np.maximum(self._raw[0], self._raw[1], out=self._raw[0])
        size = (self.screen_size, self.screen_size)
        return self._cv2.resize(self._raw[0], size, interpolation=self._cv2.INTER_AREA)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            # Seed the emulator the way ale-py's vector env does (not AtariEnv's SeedSequence)
            # so both backends draw the same sticky actions.
            self.ale.setInt("random_seed", int(seed))
            self.env.unwrapped.load_game()
            self._noops = _StdUniformNoops(int(seed))
        self.ale.reset_game()
        if self.fire_reset:
            self.ale.act(self._fire)
        noops = (self._noops.integers(self.noop_max) if self.noop_max > 0 else 0)
        for _ in range(noops - int(self.fire_reset)):
            self.ale.act(self._noop)
            if self.ale.game_over():
                self.ale.reset_game()
        self._grab(0)
        self._raw[1].fill(0)
        self._elapsed = 0
        return self._frame(), {"lives": self.ale.lives()}

    def step(self, action):
        ale_action = self._action_set[int(action)]
        reward = 0
        game_over = False
        for skip_id in range(self.frame_skip, 0, -1):
            reward += self.ale.act(ale_action)
            self._elapsed += 1
            game_over = self.ale.game_over()
            if game_over or self._elapsed >= self.max_episode_frames:
                break
            if skip_id <= 2:
                self._grab(skip_id - 1)
        truncated = self._elapsed >= self.max_episode_frames and not game_over
        return self._frame(), float(reward), game_over, truncated, {"lives": self.ale.lives()}

    def render(self) -> np.ndarray:
        return self.ale.getScreenRGB()


class FrameStack(gym.ObservationWrapper):
    """Stacks the last ``k`` frames on a new first axis; a reset pads the stack with zeros."""

    def __init__(self, env: gym.Env, k: int) -> None:
        super().__init__(env)
        space = env.observation_space
        self._stack = np.zeros((k, *space.shape), dtype=space.dtype)
        self.observation_space = gym.spaces.Box(0, 255, self._stack.shape, dtype=space.dtype)

    def reset(self, **kwargs):
        self._stack.fill(0)
        return super().reset(**kwargs)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = observation
        return self._stack.copy()  # a fresh array: vector envs keep final_obs by reference


def make_atari_env(spec: gym.envs.registration.EnvSpec, *, frame_stack: int = 4,
                   frame_skip: int = 4, noop_max: int = 30, screen_size: int = 84,
                   grayscale: bool = True, repeat_action_probability: float = 0.0,
                   fire_reset: bool = True, max_episode_frames: int = 108_000) -> gym.Env:
    """One preprocessed Atari env (single, not vectorized) from an ale-py spec."""
    from ale_py.env import AtariEnv

    kwargs = dict(spec.kwargs)
    if kwargs.get("continuous"):
        raise EnvError(f"{spec.id} has a continuous action space; DQN needs discrete actions")
    # Our wrappers do the frame skip and the time limit, so the emulator must not.
    kwargs.update(frameskip=1, repeat_action_probability=repeat_action_probability,
                  max_num_frames_per_episode=None, obs_type="rgb", render_mode="rgb_array")
    env = AtariEnv(**kwargs)
    env = AtariPreprocess(env, frame_skip=frame_skip, noop_max=noop_max, screen_size=screen_size,
                          grayscale=grayscale, fire_reset=fire_reset,
                          max_episode_frames=max_episode_frames)
    return FrameStack(env, frame_stack)


# --------------------------------------------------------------------------- MinAtar


# One colour per channel (RGB), in channel order; a cell shows its highest active channel.
_PLANE_COLOURS = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255),
], dtype=np.uint8)


def render_planes(planes: np.ndarray, cell: int = 16) -> np.ndarray:
    """An RGB picture ``(H * cell, W * cell, 3)`` uint8 of binary planes ``(C, H, W)``: black
    where no channel is set, else the colour of the highest set channel (MinAtar's own
    display draws the same way), each grid cell ``cell`` pixels wide."""
    planes = np.asarray(planes)
    if planes.ndim != 3 or planes.shape[0] > len(_PLANE_COLOURS):
        raise ValueError(f"render_planes expects (C, H, W) planes with C <= "
                         f"{len(_PLANE_COLOURS)}, got shape {planes.shape}")
    channels = np.arange(1, planes.shape[0] + 1).reshape(-1, 1, 1)
    top = (planes.astype(bool) * channels).max(axis=0)  # 0 = empty, c + 1 = channel c
    palette = np.concatenate([np.zeros((1, 3), np.uint8), _PLANE_COLOURS])
    picture = palette[top]
    return picture.repeat(cell, axis=0).repeat(cell, axis=1)


class MinAtarPlanes(gym.ObservationWrapper):
    """MinAtar's (10, 10, C) bool channels-last grid as (C, 10, 10) uint8 planes of 0 / 1.

    The observation is a transposed uint8 *view* of the grid the game just built (MinAtar makes
    a new array per ``state()``), so nothing is copied here; the vector env's batch is the one
    copy. ``render()`` draws the planes (:func:`render_planes`), so no plotting package is
    needed for videos.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        height, width, channels = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 1, (channels, height, width), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation.view(np.uint8).transpose(2, 0, 1)

    def render(self) -> np.ndarray:
        return render_planes(self.observation(self.env.unwrapped.game.state()))


def make_minatar_env(spec: gym.envs.registration.EnvSpec, *,
                     repeat_action_probability: float = MINATAR_STICKY_ACTIONS,
                     difficulty_ramping: bool = True,
                     max_episode_frames: int = 108_000) -> gym.Env:
    """One MinAtar env (single, not vectorized): MinAtar's game with its sticky actions and
    difficulty ramping, observations as (C, 10, 10) uint8 planes, games cut after
    ``max_episode_frames`` steps (a MinAtar frame is one agent step; its games have no limit
    of their own except Freeway's 2,500 frames)."""
    with warnings.catch_warnings():  # -v0 (all 6 actions) is no older than -v1, only wider
        warnings.filterwarnings("ignore", message=".*is out of date", category=DeprecationWarning)
        env = gym.make(spec.id, sticky_action_prob=repeat_action_probability,
                       difficulty_ramping=difficulty_ramping, max_episode_steps=max_episode_frames)
    return MinAtarPlanes(env)


class _Float32Obs(gym.ObservationWrapper):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low.astype(np.float32),
                                                space.high.astype(np.float32), space.shape,
                                                dtype=np.float32)

    def observation(self, observation):
        return np.asarray(observation, dtype=np.float32)


# --------------------------------------------------------------------------- backends
# A backend returns raw (unclipped) rewards, ``game_over`` (real end of game), ``truncated``
# (time limit), ``final_obs`` (same-step autoreset already done) and lives (or None).


class _GymVectorBackend:
    def __init__(self, env_fns: list[Callable[[], gym.Env]], asynchronous: bool) -> None:
        cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
        self.vec = cls(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.asynchronous = asynchronous
        self.single_observation_space = self.vec.single_observation_space
        self.single_action_space = self.vec.single_action_space

    def reset(self, seed: int | None):
        obs, info = self.vec.reset(seed=seed)
        return obs, info.get("lives")

    def step(self, actions: np.ndarray):
        obs, rewards, terminated, truncated, info = self.vec.step(actions)
        final_obs = obs
        if "_final_obs" in info and info["_final_obs"].any():
            final_obs = obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
        return (obs, np.asarray(rewards, dtype=np.float64), np.asarray(terminated, dtype=bool),
                np.asarray(truncated, dtype=bool), final_obs, info.get("lives"))

    def render(self, i: int) -> np.ndarray:
        if self.asynchronous:
            return self.vec.call("render")[i]
        return self.vec.envs[i].render()

    def close(self) -> None:
        self.vec.close()


class _AleVectorBackend:
    def __init__(self, game: str, num_envs: int, *, frame_stack: int, frame_skip: int,
                 noop_max: int, screen_size: int, grayscale: bool,
                 repeat_action_probability: float, fire_reset: bool,
                 max_episode_frames: int) -> None:
        from ale_py.vector_env import AtariVectorEnv

        # Lives and reward clipping are left to VecEnv: ale-py's episodic_life resets the whole
        # game on a life loss, which is not the Nature DQN protocol.
        self.vec = AtariVectorEnv(
            game, num_envs, frameskip=frame_skip, stack_num=frame_stack, img_height=screen_size,
            img_width=screen_size, grayscale=grayscale, maxpool=True, noop_max=noop_max,
            use_fire_reset=fire_reset, episodic_life=False, life_loss_info=False,
            reward_clipping=False, max_num_frames_per_episode=max_episode_frames,
            repeat_action_probability=repeat_action_probability,
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.single_observation_space = self.vec.single_observation_space
        self.single_action_space = self.vec.single_action_space

    def reset(self, seed: int | None):
        obs, info = self.vec.reset(seed=seed)
        return obs, info["lives"].copy()

    def step(self, actions: np.ndarray):
        obs, rewards, terminated, truncated, info = self.vec.step(actions.astype(np.int32))
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        final_obs = obs
        if done.any():
            # ale-py fills final_obs for every env; only the rows of envs that reset are real.
            final_obs = obs.copy()
            final_obs[done] = info["final_obs"][done]
        return (obs, rewards.astype(np.float64), terminated, truncated, final_obs,
                info["lives"].copy())

    def render(self, i: int) -> np.ndarray:
        raise EnvError("the ale-vector backend cannot render frames; use backend='sync' "
                       "(or capture_video=True with backend='auto') for videos")

    def close(self) -> None:
        self.vec.close()


class _EnvPoolBackend:
    """EnvPool's Atari envs, with rlgen's frame stacking and same-step autoreset.

    EnvPool stacks frames itself but pads a new game's stack with copies of its first frame,
    and resets an env on the step *after* its episode ended. Here EnvPool delivers single
    frames (``stack_num=1``); the stack is kept in numpy with zero padding like the other
    backends, and the envs that just ended are reset at once (``reset(env_id=...)``). EnvPool
    crashes with ``noop_max=0``; its ``noop_max=1`` (always zero no-ops) means the same.
    """

    def __init__(self, task_id: str, num_envs: int, seed: int, *, frame_stack: int,
                 frame_skip: int, noop_max: int, screen_size: int, grayscale: bool,
                 repeat_action_probability: float, fire_reset: bool,
                 max_episode_frames: int) -> None:
        try:
            envpool = importlib.import_module("envpool")
        except ImportError as exc:
            raise EnvError("backend='envpool' needs EnvPool: pip install envpool "
                           "(or use backend='ale-vector' / 'sync')") from exc
        self.vec = envpool.make(
            task_id, env_type="gymnasium", num_envs=num_envs, seed=seed,
            episodic_life=False, reward_clip=False, stack_num=1,
            frame_skip=frame_skip, noop_max=max(noop_max, 1), img_height=screen_size,
            img_width=screen_size, gray_scale=grayscale, use_fire_reset=fire_reset,
            repeat_action_probability=repeat_action_probability,
            max_episode_steps=max(1, max_episode_frames // frame_skip))
        self.num_envs = num_envs
        frame = self.vec.observation_space
        self._stack = np.zeros((num_envs, frame_stack, *frame.shape[1:]), dtype=frame.dtype)
        self.single_observation_space = gym.spaces.Box(
            0, 255, self._stack.shape[1:], dtype=frame.dtype)
        self.single_action_space = self.vec.action_space

    def _restart(self, ids: np.ndarray, first_frames: np.ndarray) -> None:
        self._stack[ids] = 0
        self._stack[ids, -1] = first_frames[:, 0]

    def reset(self, seed: int | None):
        obs, info = self.vec.reset()
        self._restart(np.arange(self.num_envs), obs)
        return self._stack.copy(), np.asarray(info["lives"])

    def step(self, actions: np.ndarray):
        frames, rewards, terminated, truncated, info = self.vec.step(actions)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        lives = np.asarray(info["lives"]).copy()
        self._stack[:, :-1] = self._stack[:, 1:]
        self._stack[:, -1] = frames[:, 0]
        final_obs = self._stack.copy()
        done = terminated | truncated
        if done.any():
            ids = np.flatnonzero(done)
            new_frames, new_info = self.vec.reset(env_id=ids)
            self._restart(ids, new_frames)
            lives[ids] = np.asarray(new_info["lives"])
        obs = self._stack.copy() if done.any() else final_obs
        return obs, np.asarray(rewards, dtype=np.float64), terminated, truncated, final_obs, lives

    def render(self, i: int) -> np.ndarray:
        raise EnvError("the envpool backend cannot render frames; use backend='sync'")

    def close(self) -> None:
        self.vec.close()


# --------------------------------------------------------------------------- the interface


class VecEnv:
    """A batch of ``num_envs`` environments with same-step autoreset (see AGENTS_API.md).

    ``step`` returns ``(obs, rewards, terminations, truncations, final_obs)``; for an env whose
    episode ended at this step ``obs[i]`` is already the first observation of the next one and
    ``final_obs[i]`` the last observation of the ended one. With episodic life a lost life is a
    termination but not a reset, so there ``final_obs[i] == obs[i]``: the game goes on.
    ``pop_episodes()`` reports finished *games* (unclipped score over all lives, length in agent
    steps), whatever the life and clipping settings.
    """

    def __init__(self, backend: Any, *, env_id: str, backend_name: str, num_envs: int,
                 seed: int, is_atari: bool, terminal_on_life_loss: bool,
                 clip_rewards: bool, frame_stack: int | None = None) -> None:
        self._backend = backend
        self.env_id = env_id
        self.backend = backend_name
        self.num_envs = num_envs
        self.seed = seed
        self.is_atari = is_atari
        # Frames stacked on the first observation axis (Atari: 4; MinAtar's planes: 1, they
        # are channels, not frames); None: unknown, the replay buffer decides.
        self.frame_stack = frame_stack
        self.terminal_on_life_loss = terminal_on_life_loss
        self.clip_rewards = clip_rewards
        self.single_observation_space = backend.single_observation_space
        self.single_action_space = backend.single_action_space
        self.obs_shape: tuple[int, ...] = tuple(self.single_observation_space.shape)
        self.obs_dtype = np.dtype(self.single_observation_space.dtype)
        self.num_actions = int(self.single_action_space.n)
        self.single_action_space.seed(seed)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._lives: np.ndarray | None = None
        self._episodes: list[tuple[float, int]] = []
        self._was_reset = False
        self._closed = False
        self.last_raw_rewards = np.zeros(num_envs, dtype=np.float64)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Resets every env. The first reset uses the ``seed`` given to ``make_vector_env``
        when ``seed`` is None (env ``i`` gets ``seed + i``); later ``reset()`` calls continue
        the random streams. Unfinished games are dropped from the episode statistics."""
        if seed is None and not self._was_reset:
            seed = self.seed
        if seed is not None and not 0 <= seed <= 2**31 - 1 - self.num_envs:
            raise ValueError(f"seed must be in [0, 2**31 - 1 - num_envs] (the emulator takes a "
                             f"32-bit seed per env), got {seed}")
        self._was_reset = True
        obs, lives = self._backend.reset(seed)
        self._lives = None if lives is None else np.asarray(lives).copy()
        self._returns[:] = 0
        self._lengths[:] = 0
        return obs

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._was_reset:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(f"actions must be an integer array of shape ({self.num_envs},), "
                             f"got {actions.dtype} {actions.shape}")
        if actions.min() < 0 or actions.max() >= self.num_actions:
            raise ValueError(f"actions must be in [0, {self.num_actions}), got {actions}")
        obs, raw, game_over, truncated, final_obs, lives = self._backend.step(
            actions.astype(np.int64))
        reset = game_over | truncated
        self._returns += raw
        self._lengths += 1
        for i in np.flatnonzero(reset):
            self._episodes.append((float(self._returns[i]), int(self._lengths[i])))
            self._returns[i] = 0
            self._lengths[i] = 0
        terminations = game_over.copy()
        if lives is not None:
            lives = np.asarray(lives)
            if self.terminal_on_life_loss and self._lives is not None:
                # A lost life that did not end the game (ALE's rule: lives left > 0).
                terminations |= (lives < self._lives) & (lives > 0) & ~reset
            self._lives = lives.copy()
        self.last_raw_rewards = raw
        rewards = np.sign(raw) if self.clip_rewards else raw
        return (obs, rewards.astype(np.float32), terminations, truncated & ~terminations,
                final_obs)

    def pop_episodes(self) -> list[tuple[float, int]]:
        """Games finished since the last call: (unclipped score over all lives, agent steps)."""
        episodes, self._episodes = self._episodes, []
        return episodes

    def render_frame(self, i: int = 0) -> np.ndarray:
        """The RGB screen of env ``i`` (H, W, 3) uint8, for evaluation videos."""
        if not 0 <= i < self.num_envs:
            raise ValueError(f"env index must be in [0, {self.num_envs}), got {i}")
        try:
            frame = self._backend.render(i)
        except EnvError:
            raise
        except Exception as exc:  # e.g. gymnasium's DependencyNotInstalled (pygame)
            raise EnvError(f"cannot render {self.env_id} with the {self.backend} backend: {exc}. "
                           "Create the env with capture_video=True (non-Atari envs need "
                           "render_mode='rgb_array' and their render dependencies).") from exc
        if frame is None:
            raise EnvError(f"{self.env_id} returned no frame; create it with capture_video=True")
        return np.asarray(frame)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._backend.close()

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VecEnv({self.env_id!r}, backend={self.backend!r}, num_envs={self.num_envs}, "
                f"obs_shape={self.obs_shape}, num_actions={self.num_actions})")


def _ale_vector_available() -> bool:
    try:
        importlib.import_module("ale_py.vector_env")
    except ImportError:
        return False
    return True


def make_vector_env(env_id: str, *, num_envs: int = 1, seed: int = 0, backend: str = "auto",
                    training: bool = True, frame_stack: int = 4, frame_skip: int = 4,
                    noop_max: int = 30, screen_size: int = 84, grayscale: bool = True,
                    repeat_action_probability: float | None = None,
                    terminal_on_life_loss: bool | None = None, fire_reset: bool = True,
                    clip_rewards: bool | None = None, max_episode_frames: int = 108_000,
                    capture_video: bool = False, difficulty_ramping: bool = True) -> VecEnv:
    """Builds ``num_envs`` copies of ``env_id`` behind :class:`VecEnv`.

    Atari ids (``ALE/Breakout-v5``, ``BreakoutNoFrameskip-v4``, ...) get the preprocessing of
    the module docstring whatever frame skip or sticky-action default their id registers:
    ``frame_skip`` and ``repeat_action_probability`` here win (None = 0.0 as in CleanRL's
    NoFrameskip-v4 runs; Machado et al. recommend 0.25). MinAtar ids (``MinAtar/Breakout-v1``)
    get MinAtar's planes, its sticky actions (``repeat_action_probability`` None = its 0.1) and
    ``difficulty_ramping``, with ``max_episode_frames`` as their step limit and nothing else of
    the Atari settings. ``training`` switches episodic life
    and (for Atari only) reward clipping on unless ``terminal_on_life_loss`` / ``clip_rewards``
    say otherwise.
    ``frame_stack``, ``frame_skip``, ``noop_max``, ``screen_size``, ``grayscale``,
    ``fire_reset`` and ``max_episode_frames`` apply to Atari only; other gymnasium envs keep
    their own time limit and return float32 observations (uint8 pixel ones stay uint8).
    ``backend="auto"`` picks ale-py's C++ vector env for Atari (the sync wrappers when
    ``capture_video`` asks for frames) and gymnasium's SyncVectorEnv otherwise.
    """
    if backend not in BACKENDS:
        raise EnvError(f"backend must be one of {BACKENDS}, got {backend!r}")
    checks = {"num_envs": (num_envs, 1), "frame_stack": (frame_stack, 1),
              "frame_skip": (frame_skip, 1), "noop_max": (noop_max, 0),
              "screen_size": (screen_size, 1), "max_episode_frames": (max_episode_frames, 1)}
    for name, (value, low) in checks.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise EnvError(f"{name} must be an integer >= {low}, got {value!r}")
    if repeat_action_probability is not None and not 0.0 <= repeat_action_probability <= 1.0:
        raise EnvError("repeat_action_probability must be in [0, 1] (or None: the suite's "
                       f"default), got {repeat_action_probability}")
    spec = resolve_spec(env_id)
    if spec.entry_point == _MINATAR_ENTRY_POINT:
        return _minatar_vector_env(spec, num_envs=num_envs, seed=seed, backend=backend,
                                   repeat_action_probability=repeat_action_probability,
                                   difficulty_ramping=difficulty_ramping,
                                   max_episode_frames=max_episode_frames,
                                   clip_rewards=bool(clip_rewards))
    if repeat_action_probability is None:
        repeat_action_probability = 0.0
    atari = spec.entry_point == _ATARI_ENTRY_POINT
    life_loss = training if terminal_on_life_loss is None else terminal_on_life_loss
    # Reward clipping is an Atari convention (scores differ by orders of magnitude between
    # games); other envs keep their rewards unless asked.
    clip = (training and atari) if clip_rewards is None else clip_rewards
    common = dict(env_id=env_id, num_envs=num_envs, seed=seed, is_atari=atari,
                  clip_rewards=clip)

    if not atari:
        if backend in ("ale-vector", "envpool"):
            raise EnvError(f"backend {backend!r} runs Atari games only; {env_id} is not one")
        probe = gym.make(env_id)
        try:
            if not isinstance(probe.action_space, gym.spaces.Discrete):
                raise EnvError(f"{env_id} has a {type(probe.action_space).__name__} action space "
                               f"{probe.action_space}; DQN needs a Discrete action space")
            if not isinstance(probe.observation_space, gym.spaces.Box):
                raise EnvError(f"{env_id} has a {type(probe.observation_space).__name__} "
                               "observation space; a Box observation space is expected")
        finally:
            probe.close()
        # render_mode only when asked: envs without rendering may not accept the argument
        make_kwargs = {"render_mode": "rgb_array"} if capture_video else {}

        # uint8 pixel observations stay uint8 (the replay stores frames); the rest -> float32.
        keep_dtype = probe.observation_space.dtype == np.uint8

        def make_classic() -> gym.Env:
            env = gym.make(env_id, **make_kwargs)
            return env if keep_dtype else _Float32Obs(env)

        fns = [make_classic] * num_envs
        return VecEnv(_GymVectorBackend(fns, asynchronous=backend == "async"),
                      backend_name="async" if backend == "async" else "sync",
                      terminal_on_life_loss=False, **common)

    if spec.kwargs.get("continuous"):
        raise EnvError(f"{env_id} has a continuous action space; DQN needs discrete actions")
    atari_kwargs = dict(frame_stack=frame_stack, frame_skip=frame_skip, noop_max=noop_max,
                        screen_size=screen_size, grayscale=grayscale,
                        repeat_action_probability=repeat_action_probability,
                        fire_reset=fire_reset, max_episode_frames=max_episode_frames)
    # ale-py's vector env knows no game mode / difficulty / full action space.
    plain = not any(spec.kwargs.get(k) for k in ("mode", "difficulty", "full_action_space"))
    if backend == "auto":
        backend = "ale-vector" if plain and not capture_video and _ale_vector_available() \
            else "sync"
    if backend == "ale-vector":
        if not plain:
            raise EnvError(f"the ale-vector backend does not support the mode / difficulty / "
                           f"full_action_space settings of {env_id}; use backend='sync'")
        if not _ale_vector_available():
            raise EnvError("the ale-vector backend needs ale-py >= 0.10 "
                           f"({_INSTALL_ATARI}); or use backend='sync'")
        impl: Any = _AleVectorBackend(spec.kwargs["game"], num_envs, **atari_kwargs)
    elif backend == "envpool":
        task = env_id.removeprefix("ALE/").replace("NoFrameskip-v4", "-v5")
        impl = _EnvPoolBackend(task, num_envs, seed, **atari_kwargs)
    else:
        def make_atari() -> gym.Env:
            return make_atari_env(spec, **atari_kwargs)

        impl = _GymVectorBackend([make_atari] * num_envs, asynchronous=backend == "async")
    return VecEnv(impl, backend_name=backend, terminal_on_life_loss=life_loss,
                  frame_stack=frame_stack, **common)


def _minatar_vector_env(spec: gym.envs.registration.EnvSpec, *, num_envs: int, seed: int,
                        backend: str, repeat_action_probability: float | None,
                        difficulty_ramping: bool, max_episode_frames: int,
                        clip_rewards: bool) -> VecEnv:
    """``num_envs`` MinAtar games in gymnasium's sync (``auto``) or async vector env."""
    if backend in ("ale-vector", "envpool"):
        raise EnvError(f"backend {backend!r} runs Atari games only; {spec.id} is a MinAtar "
                       "game (use sync or async)")
    sticky = MINATAR_STICKY_ACTIONS if repeat_action_probability is None \
        else repeat_action_probability

    def make_minatar() -> gym.Env:
        return make_minatar_env(spec, repeat_action_probability=sticky,
                                difficulty_ramping=difficulty_ramping,
                                max_episode_frames=max_episode_frames)

    impl = _GymVectorBackend([make_minatar] * num_envs, asynchronous=backend == "async")
    return VecEnv(impl, env_id=spec.id, backend_name="async" if backend == "async" else "sync",
                  num_envs=num_envs, seed=seed, is_atari=False, terminal_on_life_loss=False,
                  clip_rewards=clip_rewards, frame_stack=1)
