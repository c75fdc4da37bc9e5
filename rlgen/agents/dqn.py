"""DQN (Mnih et al., "Human-level control through deep reinforcement learning", Nature 2015),
with Double DQN (van Hasselt et al., AAAI 2016), Dueling heads (Wang et al., ICML 2016),
n-step returns and prioritized replay (Schaul et al., ICLR 2016) as options.

``train(DQNConfig(...))`` is the whole algorithm in one function that reads top to bottom, as
CleanRL's ``dqn_atari.py`` does, built from rlgen's shared pieces: ``make_vector_env`` (Atari
preprocessing), ``ReplayBuffer`` (each frame stored once), ``QNetwork`` (any registered
backbone + head), ``Precision``, ``RunLogger`` (TensorBoard with CleanRL's tag names) and
``CheckpointManager`` (resume everything, Ctrl-C saves first). Defaults are the Nature settings
as CleanRL uses them.

Command line: ``rlgen train dqn --env-id ALE/Breakout-v5`` (flags = the fields of ``DQNConfig``),
``rlgen eval dqn --checkpoint RUN_DIR --episodes 10`` (see ``rlgen.agents.dqn_eval``).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import pickle
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from rlgen.agents.cuda_graph import GraphedUpdate, check_cuda_graph, graph_stats, make_capturable
from rlgen.agents.device_step import DeviceStep
from rlgen.agents.dqn_eval import EpisodeRecorder, run_episodes
from rlgen.agents.dqn_presets import DQN_PRESETS
from rlgen.agents.qnetwork import (
    QNetwork,
    build_q_network,
    exploration_epsilon,
    linear_schedule,
    observations_are_pixels,
    select_actions,
    td_loss,
    td_target,
    update_target,
)
from rlgen.agents.replay import STORAGES, replay_storage
from rlgen.agents.schedule import TARGET_SYNC, env_epsilons, learner_events
from rlgen.errors import InputError
from rlgen.presets import Preset, with_preset
from rlgen.registry import TRAINERS

__all__ = [
    "DQNConfig",
    "QNetwork",
    "build_q_network",
    "linear_schedule",
    "select_actions",
    "td_loss",
    "td_target",
    "train",
    "update_target",
]


@dataclass
class DQNConfig:
    """Deep Q-Network (Nature DQN defaults as in CleanRL's dqn_atari.py)."""

    # Fields that define what was learned: a resumed run keeps the saved values.
    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        "env_id", "buffer_size", "gamma", "num_envs", "backbone", "hidden", "dueling", "n_step",
        "prioritized", "precision", "seed", "optimizer")
    __cli_aliases__ = {"env_id": ("--env",)}
    presets: ClassVar[dict[str, Preset]] = DQN_PRESETS  # --preset nature|cleanrl|minatar

    @classmethod
    def from_preset(cls, name: str, /, **given: Any) -> DQNConfig:
        """The preset ``name`` (nature, cleanrl, minatar) with the fields ``given`` over it."""
        return with_preset(cls, name, **given)

    env_id: str = "ALE/Breakout-v5"
    """gymnasium id: an Atari game (ALE/Breakout-v5, BreakoutNoFrameskip-v4), a MinAtar game
    (MinAtar/Breakout-v1; -v0 = all 6 actions) or a discrete-action env such as CartPole-v1"""
    total_timesteps: int = 10_000_000
    """agent steps (each Atari step is 4 emulator frames) summed over all envs"""
    learning_rate: float = 1e-4
    """learning rate of the optimizer (Adam or RMSProp)"""
    buffer_size: int = 1_000_000
    """replay capacity in transitions"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 1.0
    """target update rate: 1.0 = hard copy (Nature); < 1 = Polyak averaging"""
    target_network_frequency: int = 1000
    """agent steps between target-network updates"""
    batch_size: int = 32
    """transitions per gradient step"""
    start_e: float = 1.0
    """initial exploration epsilon"""
    end_e: float = 0.01
    """final exploration epsilon"""
    exploration_fraction: float = 0.10
    """fraction of total_timesteps over which epsilon decays linearly from start_e to end_e"""
    learning_starts: int = 80_000
    """agent steps of random-ish experience collected before the first gradient step"""
    train_frequency: int = 4
    """agent steps per gradient step"""
    # -- published settings, optimizer, exploration warm-up, MinAtar (one group) --
    preset: Literal["nature", "cleanrl", "minatar"] | None = None
    """published settings laid under the flags given (explicit flags win; config.json shows
    the resolved values); see rlgen.agents.dqn_presets"""
    optimizer: Literal["adam", "rmsprop"] = "adam"
    """adam (CleanRL) or rmsprop (the Nature and MinAtar papers: torch.optim.RMSprop with
    --rmsprop-alpha, --rmsprop-eps, --rmsprop-centered, --momentum)"""
    rmsprop_alpha: float = 0.95
    """RMSProp's decay of the mean squared gradient (the papers' squared gradient momentum)"""
    rmsprop_eps: float = 0.01
    """RMSProp's eps, added to the root of the mean square (the papers' min squared gradient)"""
    rmsprop_centered: bool = True
    """centered RMSProp (divide by the gradient's running standard deviation), as DQN uses"""
    momentum: float = 0.0
    """RMSProp momentum (MinAtar: 0.95; Nature: 0)"""
    random_steps: int = 0
    """agent steps played first by a uniform random policy; epsilon's schedule starts after
    them (MinAtar: 5000, Nature: 50000, each its replay start)"""
    exploration_steps: int | None = None
    """agent steps over which epsilon goes from start_e to end_e after random_steps (MinAtar:
    100000); None = exploration_fraction * total_timesteps"""
    repeat_action_probability: float | None = None
    """sticky actions: probability of repeating the previous action; None = the suite's default
    (MinAtar 0.1, Atari 0.0; Machado et al. use 0.25)"""
    difficulty_ramping: bool = True
    """MinAtar games speed up as they go on (MinAtar's default)"""
    seed: int = 1
    """seed of the envs, the network initialization, exploration and replay sampling"""
    num_envs: int = 1
    """parallel environments (each step adds num_envs transitions)"""
    env_backend: str = "auto"
    """vector-env backend: auto, sync, async, ale-vector or envpool (see make_vector_env)"""
    backbone: str = "auto"
    """registered backbone name; auto = nature_cnn for Atari frames, minatar_cnn for MinAtar's
    10x10 grids, mlp for vectors"""
    hidden: int | None = None
    """width of the Q-head's hidden layer; None = 512 (Nature) for images, 128 (MinAtar) for
    minatar_cnn, 0 (linear) for mlp"""
    double: bool = False
    """Double DQN targets (the online network picks the next action)"""
    dueling: bool = False
    """Dueling head: Q = V + A - mean(A)"""
    loss: Literal["huber", "mse"] = "huber"
    """TD loss: huber = the Nature paper's error clipping; mse = what CleanRL uses"""
    max_grad_norm: float | None = None
    """clip the gradient norm to this value (None = no clipping, as Nature/CleanRL; SB3 uses 10)"""
    n_step: int = 1
    """n-step returns (1 = the one-step TD target of Nature DQN)"""
    prioritized: bool = False
    """prioritized replay (proportional variant)"""
    prioritized_alpha: float = 0.6
    """priority exponent alpha of prioritized replay"""
    prioritized_beta: float = 0.4
    """initial importance-sampling exponent beta, annealed linearly to 1 over training"""
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    """numeric precision of forward passes (bf16 is slow on CPUs without bf16 units)"""
    device: str = "auto"
    """auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps"""
    channels_last: bool | None = None
    """channels_last memory format for CNN backbones; None = on for image observations (oneDNN's
    channels-last kernels run the Nature CNN update faster on CPU; tensor cores like it)"""
    compile: bool = False
    """torch.compile the Q-network"""
    cuda_graph: bool = False
    """replay the whole update (target and online forward, backward, optimizer step) from one
    CUDA graph (CUDA only; not with --compile or --precision 16-mixed; see
    rlgen.agents.cuda_graph)"""
    replay_device: Literal["auto", "cpu", "pinned", "cuda"] = "auto"
    """where replay batches come from for a CUDA learner: cpu (host memory, staged through
    page-locked memory), pinned (gathered straight into page-locked memory), cuda (a copy of
    the frames on the GPU, batches gathered there); auto = pinned on CUDA, cpu otherwise"""
    prefetch_targets: bool | None = None
    """compute the next update's target Q-values on a second CPU core while the agent acts (the
    next batch is then drawn right after an update, so it never holds the train_frequency newest
    transitions); None = on for CPU runs with >= 2 torch threads and no --compile"""
    torch_threads: int | None = None
    """torch intra-op threads (None = torch's default, usually the number of cores)"""
    deterministic: bool = False
    """force deterministic torch kernels (slower; for exact reproduction)"""
    run_dir: str | None = None
    """where logs and checkpoints go (default runs/dqn__{env}__{seed}__{time})"""
    checkpoint_frequency: int = 500_000
    """agent steps between checkpoints (0 = only at the end); one is always written at the end"""
    keep_checkpoints: int = 3
    """number of newest checkpoints kept in {run_dir}/checkpoints"""
    save_replay: bool = False
    """also save the replay buffer (compact: each frame once) next to each checkpoint"""
    save_env_state: bool = False
    """also save the running episodes (pickled envs; sync backend) so a resumed run continues
    them exactly; resume such run dirs only if you trust them (unpickling runs code)"""
    resume: str | None = None
    """run directory (or checkpoint file) of a stopped run to continue"""
    eval_episodes: int = 10
    """evaluation episodes at the end (epsilon 0.05, full games, unclipped score); 0 = none"""
    capture_video: bool = False
    """write videos of env 0's training games 0, 1, 8, 27, ... (cubic schedule, then every
    1000th) to {run_dir}/videos (mp4 with OpenCV, else gif; sync backend)"""
    log_frequency: int = 100
    """agent steps between losses/SPS logs"""
    progress: bool = True
    """show a progress bar (only when stdout is a terminal)"""
    log_interval_s: float = 30.0
    """off a terminal (a job log), print a progress line every this many seconds (0: never)"""

    def __post_init__(self) -> None:
        def positive(name: str, minimum: float = 1) -> None:
            value = getattr(self, name)
            if value < minimum:
                raise InputError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")

        for name in ("total_timesteps", "buffer_size", "target_network_frequency", "batch_size",
                     "train_frequency", "num_envs", "n_step", "log_frequency", "keep_checkpoints"):
            positive(name)
        for name in ("learning_starts", "checkpoint_frequency", "eval_episodes"):
            positive(name, 0)
        if not self.learning_rate > 0:
            raise InputError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.gamma <= 1.0:
            raise InputError(f"--gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise InputError(f"--tau must be in (0, 1] (1 = hard copy), got {self.tau}")
        for name in ("start_e", "end_e", "exploration_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.loss not in ("huber", "mse"):
            raise InputError(f"--loss must be huber or mse, got {self.loss!r}")
        if self.precision not in ("32", "16-mixed", "bf16-mixed"):
            raise InputError(
                f"--precision must be 32, 16-mixed or bf16-mixed, got {self.precision!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise InputError(f"--max-grad-norm must be > 0 or None, got {self.max_grad_norm}")
        if self.hidden is not None and self.hidden < 0:
            raise InputError(f"--hidden must be >= 0 (0 = linear head) or None, got {self.hidden}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise InputError(f"--torch-threads must be >= 1 or None, got {self.torch_threads}")
        if not 0.0 <= self.prioritized_alpha <= 1.0:
            raise InputError(f"--prioritized-alpha must be in [0, 1], got {self.prioritized_alpha}")
        if not 0.0 <= self.prioritized_beta <= 1.0:
            raise InputError(f"--prioritized-beta must be in [0, 1], got {self.prioritized_beta}")
        if self.batch_size > self.buffer_size:
            raise InputError(
                f"--batch-size ({self.batch_size}) must not exceed "
                f"--buffer-size ({self.buffer_size})"
            )
        if not self.env_id:
            raise InputError("--env-id must name a gymnasium environment, got an empty string")
        if self.replay_device not in ("auto", *STORAGES):
            raise InputError(f"--replay-device must be auto, {', '.join(STORAGES)}, "
                             f"got {self.replay_device!r}")
        self._check_published_settings()

    def _check_published_settings(self) -> None:
        """Validation of the preset / optimizer / warm-up / MinAtar group of fields."""
        if self.preset is not None and self.preset not in self.presets:
            raise InputError(f"--preset must be one of {', '.join(self.presets)}, "
                             f"got {self.preset!r}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise InputError(f"--optimizer must be adam or rmsprop, got {self.optimizer!r}")
        if not 0.0 <= self.rmsprop_alpha < 1.0:
            raise InputError(f"--rmsprop-alpha must be in [0, 1), got {self.rmsprop_alpha}")
        if not self.rmsprop_eps > 0:
            raise InputError(f"--rmsprop-eps must be > 0, got {self.rmsprop_eps}")
        if not 0.0 <= self.momentum < 1.0:
            raise InputError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.random_steps < 0:
            raise InputError(f"--random-steps must be >= 0, got {self.random_steps}")
        if self.exploration_steps is not None and self.exploration_steps < 0:
            raise InputError(f"--exploration-steps must be >= 0 or None, "
                             f"got {self.exploration_steps}")
        p = self.repeat_action_probability
        if p is not None and not 0.0 <= p <= 1.0:
            raise InputError(f"--repeat-action-probability must be in [0, 1] or None, got {p}")


# -- what the loop carries from step to step -----------------------------------------------------
class LoopState:
    """DQN's loop state besides networks and replay, saved in every checkpoint so a resumed run
    continues exactly: the counters, the last 100 returns, the exploration RNG, the current
    observations, and (``save_env_state``) the running environments themselves."""

    def __init__(self, envs: Any, seed: int, save_env_state: bool):
        self.global_step = 0  # agent steps, summed over the envs
        self.num_updates = 0
        self.episodes = 0
        self.buffer_start = 0  # the step since which the replay holds data
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.explore_rng = np.random.default_rng(seed)
        self.envs, self.seed, self.save_env_state = envs, seed, save_env_state
        self.obs = envs.reset(seed=seed)
        if save_env_state:
            _pickle_envs(envs)  # fail now rather than at the first checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step, "num_updates": self.num_updates,
            "episodes": self.episodes, "buffer_start": self.buffer_start,
            "recent_returns": list(self.recent_returns),
            "explore_rng": json.dumps(self.explore_rng.bit_generator.state),
            "obs": torch.from_numpy(np.asarray(self.obs)),
            "env_pickle": _pickle_envs(self.envs) if self.save_env_state else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step, self.num_updates, self.episodes, self.buffer_start = (
            int(state[k]) for k in ("global_step", "num_updates", "episodes", "buffer_start"))
        self.recent_returns.extend(state["recent_returns"])
        self.explore_rng.bit_generator.state = json.loads(state["explore_rng"])
        if state.get("env_pickle") is not None:  # the very episodes that were running
            self.envs.close()
            self.envs = pickle.loads(state["env_pickle"].numpy().tobytes())
            self.obs = state["obs"].numpy()
        else:  # new episodes, seeded apart from the ones the run started with
            self.obs = self.envs.reset(seed=self.seed + self.global_step)


def _pickle_envs(envs: Any) -> torch.Tensor:
    """The vector env, pickled into a uint8 tensor (a checkpoint holds tensors only).
    cloudpickle (a gymnasium dependency) also handles the env factories that are closures."""
    import cloudpickle

    try:
        data = cloudpickle.dumps(envs)
    except Exception as exc:
        raise InputError(
            f"--save-env-state needs environments that can be pickled (the sync backend over "
            f"Python envs); this one cannot: {type(exc).__name__}: {exc}"
        ) from exc
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class ReplayFile:
    """The replay beside each checkpoint (``--save-replay``): ``replay_{step}.npz``, written
    compactly (each frame once) before the checkpoint that names it. Older replay files are
    deleted only once that checkpoint is safely on disk, so a crash or a full disk mid-save
    leaves the previous checkpoint resumable with its replay; older checkpoints resume with an
    empty replay (see ``load_state_dict``)."""

    def __init__(self, replay: Any, run: Any, loop: LoopState, enabled: bool):
        self.replay, self.run, self.loop, self.enabled = replay, run, loop, enabled
        self.restored = False
        self._written: str | None = None

    def state_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {"file": None}
        self._written = f"replay_{self.loop.global_step:09d}.npz"
        self.replay.save(self.run.checkpoints.directory / self._written)
        return {"file": self._written}

    def checkpoint_saved(self, path: Path) -> None:
        """Called by the run once the checkpoint naming the new replay is written."""
        if self._written is None:
            return
        for old in path.parent.glob("replay_*.npz"):
            if old.name != self._written:
                old.unlink(missing_ok=True)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load the saved replay. A checkpoint without one (not saved, an older checkpoint
        whose replay was replaced, a file deleted) resumes with an empty replay, and the
        warm-up of ``--learning-starts`` steps runs again; a corrupt file stops the resume."""
        from rlgen.checkpoint import CheckpointError

        if not state.get("file"):
            return
        path = self.run.resume_path.parent / state["file"]
        if not path.is_file():
            warnings.warn(f"--resume {self.run.resume_path}: its replay file {path} is not "
                          f"there; resuming with an empty replay (the warm-up of "
                          f"--learning-starts steps runs again)", RuntimeWarning, stacklevel=2)
            return
        try:
            self.replay.load(path)
        except ValueError as exc:  # truncated / corrupt npz, foreign file, other capacity
            raise CheckpointError(
                f"--resume {self.run.resume_path}: cannot read its replay file {path} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); delete "
                f"the file to resume with an empty replay (the warm-up of --learning-starts "
                f"steps then runs again)") from exc
        self.restored = True


# -- the pieces of an update -------------------------------------------------------------------
def next_q_values(target_net: torch.nn.Module, online_net: torch.nn.Module | None,
                  precision: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Q-values of the batch's next observations: the target network's, and the online
    network's for Double DQN (``online_net`` given)."""
    with torch.no_grad(), precision.autocast():
        target_q = target_net(batch.next_obs).float()
        online_q = online_net(batch.next_obs).float() if online_net is not None else None
    return target_q, online_q


def full_update(q_net: torch.nn.Module, target_net: torch.nn.Module,
                optimizer: torch.optim.Optimizer, precision: Any, config: DQNConfig,
                batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target Q-values and the gradient step in one call (what ``--cuda-graph`` captures)."""
    next_q = next_q_values(target_net, q_net if config.double else None, precision, batch)
    return gradient_step(q_net, optimizer, precision, batch, next_q, config)


def gradient_step(q_net: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: Any,
                  batch: Any, next_q: tuple[torch.Tensor, torch.Tensor | None],
                  config: DQNConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DQN update on ``batch``: TD target, loss (importance-weighted when prioritized),
    optimizer step; returns ``(loss, Q of the taken actions, TD errors)``."""
    target = td_target(batch.rewards, batch.discounts, *next_q)
    with precision.autocast():
        q_values = q_net(batch.obs)
    q_taken = q_values.float().gather(1, batch.actions[:, None]).squeeze(1)
    weights = batch.weights if config.prioritized else None
    loss, td_errors = td_loss(q_taken, target, config.loss, weights)
    optimizer.zero_grad(set_to_none=True)
    precision.step(loss, optimizer, clip_grad_norm=config.max_grad_norm)
    return loss, q_taken, td_errors


def build_networks(config: DQNConfig, obs_shape: tuple[int, ...], n_actions: int, pixels: bool,
                   device: torch.device) -> tuple[torch.nn.Module, ...]:
    """``(q_network, target_network, q_network_compiled, target_network_compiled)``: the
    online network, its frozen copy, and the modules the loop calls (their torch.compile
    wrappers with ``--compile``, else the same modules), on ``device``, channels_last for
    images unless ``--no-channels-last``."""
    from rlgen.runtime import prepare_module

    q_network = build_q_network(obs_shape, n_actions, backbone=config.backbone,
                                dueling=config.dueling, hidden=config.hidden, pixels=pixels)
    target_network = copy.deepcopy(q_network).requires_grad_(False)
    channels_last = len(obs_shape) == 3 if config.channels_last is None else config.channels_last
    q_network.channels_last = target_network.channels_last = channels_last
    compiled = [prepare_module(net, device=device, channels_last=channels_last,
                               compile=config.compile) for net in (q_network, target_network)]
    return q_network, target_network, *compiled


def build_optimizer(params: Any, config: DQNConfig, device: torch.device) -> torch.optim.Optimizer:
    """``--optimizer adam``: Adam (CleanRL), fused into one kernel on CPU / CUDA (~10x faster on
    CPU than its Python loop); ``rmsprop``: ``torch.optim.RMSprop(lr, alpha, eps, centered,
    momentum)`` from the ``--rmsprop-*`` / ``--momentum`` flags, as the DQN papers use it."""
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.learning_rate, alpha=config.rmsprop_alpha,
                                   eps=config.rmsprop_eps, centered=config.rmsprop_centered,
                                   momentum=config.momentum)
    return torch.optim.Adam(params, lr=config.learning_rate,
                            fused=device.type in ("cpu", "cuda"))


def exploration_duration(config: DQNConfig) -> float:
    """Agent steps over which epsilon anneals: ``exploration_steps``, else the fraction."""
    if config.exploration_steps is not None:
        return config.exploration_steps
    return config.exploration_fraction * config.total_timesteps


def env_options(config: DQNConfig) -> dict[str, Any]:
    """The environment settings of the config that training and evaluation share."""
    return {"repeat_action_probability": config.repeat_action_probability,
            "difficulty_ramping": config.difficulty_ramping}


def crossed(step: int, previous: int, every: int) -> bool:
    """A multiple of ``every`` lies in ``(previous, step]`` (``every == 0``: never)."""
    return every > 0 and step // every != previous // every


# -- the training loop -------------------------------------------------------------------------
def train(config: DQNConfig) -> dict:
    """Train a DQN agent; returns the final metrics (also in TensorBoard and metrics.jsonl)."""
    from rlgen.agents.envs import make_vector_env
    from rlgen.agents.prefetch import TargetPrefetcher
    from rlgen.agents.replay import ReplayBuffer
    from rlgen.runtime import Precision, torch_threads
    from rlgen.timing import PhaseTimer
    from rlgen.training import TrainingRun

    run = TrainingRun("dqn", config, name=config.env_id, distributed=False,
                      checkpoint_every=config.checkpoint_frequency,
                      keep_checkpoints=config.keep_checkpoints,
                      progress=None if config.progress else False,
                      description=f"dqn {config.env_id}")
    with torch_threads(config.torch_threads), run:
        # 1. Configuration (with --resume: the saved one and the flags given now), envs, nets.
        config, device = run.config, run.device
        envs = make_vector_env(config.env_id, num_envs=config.num_envs, seed=config.seed,
                               backend=config.env_backend, training=True,
                               capture_video=config.capture_video, **env_options(config))
        loop = LoopState(envs, config.seed, config.save_env_state)
        n_actions = int(envs.single_action_space.n)
        obs_shape = tuple(envs.obs_shape)
        pixels = observations_are_pixels(envs.single_observation_space)
        # The plain modules own the weights (optimizer, checkpoints, target updates); the
        # loop calls their torch.compile wrappers (the same modules without --compile).
        q_network, target_network, q_network_compiled, target_network_compiled = \
            build_networks(config, obs_shape, n_actions, pixels, device)
        optimizer = build_optimizer(q_network.parameters(), config, device)
        precision = Precision(config.precision, device)
        if config.cuda_graph:
            check_cuda_graph(device, compile=config.compile, precision=config.precision)
        # The optimizer step with its gradient check kept on the device (no per-update read).
        updater = DeviceStep(precision, optimizer, graph_safe=config.cuda_graph)
        rb = ReplayBuffer(config.buffer_size, obs_shape, config.num_envs,
                          obs_dtype=envs.single_observation_space.dtype, device=device,
                          frame_stack=envs.frame_stack,
                          n_step=config.n_step, gamma=config.gamma,
                          prioritized=config.prioritized, alpha=config.prioritized_alpha,
                          beta=config.prioritized_beta, seed=config.seed,
                          storage=replay_storage(config.replay_device, device))
        learn_threads = torch.get_num_threads()
        # One intra-op thread for the tiny acting forward: more threads only add
        # synchronisation (and stall badly when another process holds a core).
        act_threads = 1 if device.type == "cpu" and learn_threads > 1 else None
        prefetch = config.prefetch_targets if config.prefetch_targets is not None else \
            device.type == "cpu" and learn_threads > 1 and not config.compile
        prefetcher = TargetPrefetcher(
            functools.partial(next_q_values, target_network_compiled,
                              q_network_compiled if config.double else None, precision),
            rb, enabled=prefetch)
        replay_file = ReplayFile(rb, run, loop, config.save_replay)

        # 2. Resume (restored in this order: the prefetched batch needs the replay and nets).
        run.start(config.total_timesteps, {
            "q_network": q_network, "target_network": target_network, "optimizer": optimizer,
            "precision": precision, "loop": loop, "replay": replay_file,
            "prefetch": prefetcher,
        }, meta={"obs_shape": list(obs_shape), "n_actions": n_actions, "pixels": pixels})
        if run.resumed is not None and not replay_file.restored:
            loop.buffer_start = loop.global_step  # the replay refills before learning again
        envs = loop.envs  # the restored episodes, with --save-env-state
        graphed = None
        if config.cuda_graph:  # after the resume: the optimizer's state moves to the GPU
            make_capturable(optimizer)
            graphed = GraphedUpdate(functools.partial(
                full_update, q_network_compiled, target_network_compiled, optimizer, updater,
                config), optimizer)
        recorder = EpisodeRecorder(run.run_dir / "videos") if config.capture_video else None
        timer = PhaseTimer("act", "env", "sample", "wait", "update")
        learning_since = None  # the timer's mark when learning began (for the time split)
        start_step, start_time = loop.global_step, time.perf_counter()
        loss = q_taken = None

        def beta_at(step: int) -> float:  # prioritized replay's IS exponent, annealed to 1
            return linear_schedule(config.prioritized_beta, 1.0, config.total_timesteps, step)

        def epsilon_at(step: int) -> float:  # exploration epsilon after `step` agent steps
            return exploration_epsilon(step, start_e=config.start_e, end_e=config.end_e,
                                       duration=exploration_duration(config),
                                       random_steps=config.random_steps)

        # 3. The loop: act, step, store, learn, sync the target, log (checkpoints: the run).
        try:
            while loop.global_step < config.total_timesteps:
                epsilon = epsilon_at(loop.global_step)
                with timer("act"), torch_threads(act_threads), precision.autocast():
                    obs = torch.as_tensor(loop.obs, device=device)
                    actions = select_actions(  # env i takes agent step global_step + i + 1
                        q_network_compiled, obs,
                        env_epsilons(epsilon_at, loop.global_step, config.num_envs),
                        loop.explore_rng, n_actions)
                with timer("env"):
                    next_obs, rewards, terminations, truncations, final_obs = envs.step(actions)
                # final_obs is the true next observation, also for envs that just auto-reset.
                rb.add(loop.obs, actions, rewards, final_obs, terminations, truncations)
                if recorder is not None:
                    recorder.step(envs, game_over=bool(terminations[0] or truncations[0])
                                  and not np.array_equal(final_obs[0], next_obs[0]))
                loop.obs = next_obs
                previous, loop.global_step = loop.global_step, loop.global_step + config.num_envs
                global_step = loop.global_step

                for episodic_return, length in envs.pop_episodes():
                    loop.episodes += 1
                    loop.recent_returns.append(float(episodic_return))
                    run.scalar("charts/episodic_return", float(episodic_return), global_step)
                    run.scalar("charts/episodic_length", int(length), global_step)

                learning_from = loop.buffer_start + config.learning_starts
                if global_step > learning_from:
                    if learning_since is None:
                        learning_since, learning_step0 = timer.mark(), global_step
                    # The single-env schedule over the agent steps (previous, global_step].
                    updates = 0
                    for at_step, event in learner_events(
                            previous, global_step, learning_from=learning_from,
                            train_frequency=config.train_frequency,
                            target_frequency=config.target_network_frequency):
                        if event == TARGET_SYNC:
                            with prefetcher.holding():  # no target forward reads meanwhile
                                update_target(target_network, q_network, config.tau)
                            continue
                        updates += 1
                        if prefetcher.pending:  # drawn right after the last update
                            with timer("wait"):
                                batch, next_q = prefetcher.take()
                        else:
                            with timer("sample"):
                                batch = rb.sample(config.batch_size, beta=beta_at(at_step))
                            next_q = None
                        with timer("update"):
                            torch.set_num_threads(learn_threads)
                            if graphed is not None:
                                loss, q_taken, td_errors = graphed(batch)
                            else:
                                if next_q is None:
                                    next_q = prefetcher.compute(batch)
                                loss, q_taken, td_errors = gradient_step(
                                    q_network_compiled, optimizer, updater, batch, next_q, config)
                            if config.prioritized:
                                rb.update_priorities(batch.indices, td_errors.abs().cpu().numpy())
                        loop.num_updates += 1
                    if prefetcher.enabled and updates:
                        with timer("sample"):
                            prefetcher.start(rb.sample(config.batch_size,
                                                       beta=beta_at(global_step)))

                if crossed(global_step, previous, config.log_frequency):
                    sps = int((global_step - start_step) / (time.perf_counter() - start_time))
                    updater.check()  # the loop's reads of the device: here and at checkpoints
                    log_scalars(run, loop, sps, epsilon, loss, q_taken)
                if crossed(global_step, previous, config.checkpoint_frequency):
                    updater.check()  # never a checkpoint of weights a NaN gradient reached
                run.end_of_step(global_step)  # periodic checkpoint; Ctrl-C: checkpoint, stop
        finally:
            prefetcher.close()
            loop.envs.close()

        # 4. Final checkpoint, evaluation (full games, unclipped score), summary.
        metrics: dict[str, Any] = {
            "global_step": loop.global_step, "num_updates": loop.num_updates,
            "episodes": loop.episodes,
            "mean_return_last100": float(np.mean(loop.recent_returns)) if loop.recent_returns
            else math.nan,
            "sps": (loop.global_step - start_step) / (time.perf_counter() - start_time),
            "replay_bytes": int(rb.nbytes), "prefetch_targets": prefetch,
            "replay_device": rb.storage, **graph_stats(graphed),
        }
        if learning_since is not None:
            metrics.update(time_split(timer.since(learning_since),
                                      loop.global_step - learning_step0))
        updater.check()
        run.save_final(loop.global_step)
        if config.eval_episodes > 0:
            metrics.update(evaluate_at_end(run, q_network_compiled, config, device, precision))
        return run.finish(loop.global_step, metrics, summary=(
            f"dqn {config.env_id}: {loop.global_step} steps at {metrics['sps']:.0f} SPS; "
            f"checkpoint {run.last_checkpoint}; `tensorboard --logdir {run.run_dir.parent}`"))


def log_scalars(run: Any, loop: LoopState, sps: int, epsilon: float,
                loss: torch.Tensor | None, q_taken: torch.Tensor | None) -> None:
    """CleanRL's scalars at ``loop.global_step`` and the progress (SPS, mean return, epsilon)."""
    step = loop.global_step
    run.scalar("charts/SPS", sps, step)
    run.scalar("charts/epsilon", epsilon, step)
    if loss is not None:
        run.scalar("losses/td_loss", loss.item(), step)
        run.scalar("losses/q_values", q_taken.mean().item(), step)
    mean_return = float(np.mean(loop.recent_returns)) if loop.recent_returns else math.nan
    run.progress(step, SPS=sps, ret=mean_return, eps=epsilon)


def evaluate_at_end(run: Any, q_network: torch.nn.Module, config: DQNConfig,
                    device: torch.device, precision: Any) -> dict[str, float]:
    """Nature's evaluation protocol over ``config.eval_episodes`` full games (epsilon 0.05,
    unclipped score), logged as ``eval/episodic_return``; returns ``eval_mean`` etc."""
    result = run_episodes(q_network, config.env_id, episodes=config.eval_episodes,
                          seed=config.seed + 10_000, device=device, precision=precision,
                          env_options=env_options(config))
    for i, episodic_return in enumerate(result["returns"]):
        run.scalar("eval/episodic_return", episodic_return, i)  # CleanRL's x-axis
    run.print(f"eval over {config.eval_episodes} episodes: mean {result['mean']:.2f} "
              f"std {result['std']:.2f} min {result['min']:.2f} max {result['max']:.2f}")
    return {f"eval_{k}": v for k, v in result.items() if k != "returns"}


def time_split(split: dict[str, float], steps: int) -> dict[str, float]:
    """The learning phase's figures from a ``PhaseTimer`` split: SPS, CPU ms per step, and the
    fraction of wall time per phase (``update`` excludes sampling and waiting; ``other`` is
    the loop's own overhead: replay insertion, episode stats, logging, checkpoints)."""
    wall = max(split["wall"], 1e-9)
    figures = {"sps_learning": steps / wall,
               "cpu_ms_per_step_learning": 1000 * split["cpu"] / max(steps, 1)}
    parts = ("env", "act", "sample", "wait", "update")
    for k in parts:
        figures[f"time_fraction_{k}"] = split[k] / wall
    figures["time_fraction_other"] = 1.0 - sum(figures[f"time_fraction_{k}"] for k in parts)
    return figures


@TRAINERS.register("dqn")
def dqn_trainer():
    """Deep Q-Network on Atari / gymnasium (Nature, Double, Dueling)."""
    from rlgen.agents.dqn_eval import DQNEvalConfig, evaluate
    from rlgen.cli_spec import TrainerSpec

    return TrainerSpec(config=DQNConfig, train=train, evaluate=(DQNEvalConfig, evaluate))
