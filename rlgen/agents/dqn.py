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
import dataclasses
import json
import math
import pickle
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlgen.agents.dqn_eval import EpisodeRecorder, run_episodes
from rlgen.agents.qnetwork import (
    QNetwork,
    build_q_network,
    linear_schedule,
    observations_are_pixels,
    select_actions,
    td_loss,
    td_target,
    update_target,
)
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

# Fields that define what was learned: a resumed run keeps the saved values.
FIXED_ON_RESUME = (
    "env_id", "buffer_size", "gamma", "num_envs", "backbone", "hidden", "dueling", "n_step",
    "prioritized", "precision", "seed",
)


@dataclass
class DQNConfig:
    """Deep Q-Network (Nature DQN defaults as in CleanRL's dqn_atari.py)."""

    __cli_aliases__ = {"env_id": ("--env",)}

    env_id: str = "ALE/Breakout-v5"
    """gymnasium id: an Atari game (ALE/Breakout-v5, BreakoutNoFrameskip-v4) or a discrete-action
    env such as CartPole-v1"""
    total_timesteps: int = 10_000_000
    """agent steps (each Atari step is 4 emulator frames) summed over all envs"""
    learning_rate: float = 1e-4
    """Adam learning rate"""
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
    seed: int = 1
    """seed of the envs, the network initialization, exploration and replay sampling"""
    num_envs: int = 1
    """parallel environments (each step adds num_envs transitions)"""
    env_backend: str = "auto"
    """vector-env backend: auto, sync, async, ale-vector or envpool (see make_vector_env)"""
    backbone: str = "auto"
    """registered backbone name; auto = nature_cnn for image observations, mlp for vectors"""
    hidden: int | None = None
    """width of the Q-head's hidden layer; None = 512 (Nature) for images, 0 (linear) for mlp"""
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

    def __post_init__(self) -> None:
        def positive(name: str, minimum: float = 1) -> None:
            value = getattr(self, name)
            if value < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")

        for name in ("total_timesteps", "buffer_size", "target_network_frequency", "batch_size",
                     "train_frequency", "num_envs", "n_step", "log_frequency", "keep_checkpoints"):
            positive(name)
        for name in ("learning_starts", "checkpoint_frequency", "eval_episodes"):
            positive(name, 0)
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"--gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"--tau must be in (0, 1] (1 = hard copy), got {self.tau}")
        for name in ("start_e", "end_e", "exploration_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.loss not in ("huber", "mse"):
            raise ValueError(f"--loss must be huber or mse, got {self.loss!r}")
        if self.precision not in ("32", "16-mixed", "bf16-mixed"):
            raise ValueError(
                f"--precision must be 32, 16-mixed or bf16-mixed, got {self.precision!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"--max-grad-norm must be > 0 or None, got {self.max_grad_norm}")
        if self.hidden is not None and self.hidden < 0:
            raise ValueError(f"--hidden must be >= 0 (0 = linear head) or None, got {self.hidden}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"--torch-threads must be >= 1 or None, got {self.torch_threads}")
        if not 0.0 <= self.prioritized_alpha <= 1.0:
            raise ValueError(f"--prioritized-alpha must be in [0, 1], got {self.prioritized_alpha}")
        if not 0.0 <= self.prioritized_beta <= 1.0:
            raise ValueError(f"--prioritized-beta must be in [0, 1], got {self.prioritized_beta}")
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"--batch-size ({self.batch_size}) must not exceed "
                f"--buffer-size ({self.buffer_size})"
            )
        if not self.env_id:
            raise ValueError("--env-id must name a gymnasium environment, got an empty string")


# -- run control -----------------------------------------------------------------------------
class _StopOnCtrlC:
    """First Ctrl-C asks the loop to stop at the end of the current step (it then saves a
    checkpoint and raises KeyboardInterrupt); a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def resume_config(config: DQNConfig) -> tuple[DQNConfig, dict]:
    """The config of the run in ``config.resume``, updated with the fields this call sets to
    non-default values (e.g. a larger ``total_timesteps``), and its latest checkpoint."""
    from rlgen.checkpoint import load_checkpoint

    state = load_checkpoint(config.resume)
    saved = dict(state["config"])
    defaults = DQNConfig()
    for f in dataclasses.fields(DQNConfig):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name) or f.name == "resume":
            continue
        if f.name in FIXED_ON_RESUME and value != saved.get(f.name):
            raise ValueError(
                f"--{f.name.replace('_', '-')} cannot change when resuming (the run used "
                f"{saved.get(f.name)!r}, got {value!r})"
            )
        saved[f.name] = value
    saved["resume"] = config.resume
    known = {f.name for f in dataclasses.fields(DQNConfig)}
    return DQNConfig(**{k: v for k, v in saved.items() if k in known}), state


def _run_dir_of(resume: str) -> Path:
    path = Path(resume)
    if path.is_file():  # runs/x/checkpoints/ckpt_*.pt -> runs/x
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def _pickle_envs(envs: Any) -> torch.Tensor:
    """The vector env, pickled into a uint8 tensor (a checkpoint holds tensors only).
    cloudpickle (a gymnasium dependency) also handles the env factories that are closures."""
    import cloudpickle

    try:
        data = cloudpickle.dumps(envs)
    except Exception as exc:
        raise ValueError(
            f"--save-env-state needs environments that can be pickled (the sync backend over "
            f"Python envs); this one cannot: {type(exc).__name__}: {exc}"
        ) from exc
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _unpickle_envs(data: torch.Tensor) -> Any:
    return pickle.loads(data.numpy().tobytes())


def _pop_stats(envs: Any) -> list[tuple[float, int]]:
    return [(float(r), int(n)) for r, n in envs.pop_episodes()]


# -- the training loop -------------------------------------------------------------------------
def train(config: DQNConfig) -> dict:
    """Train a DQN agent; returns the final metrics (also in TensorBoard and metrics.jsonl)."""
    from rlgen.agents.envs import make_vector_env
    from rlgen.agents.replay import ReplayBatch, ReplayBuffer
    from rlgen.checkpoint import CheckpointManager, rng_state, set_rng_state
    from rlgen.logger import RunLogger, make_run_dir
    from rlgen.runtime import (
        Precision,
        prepare_module,
        resolve_device,
        seed_everything,
        torch_threads,
    )

    # 1. Configuration, devices, seeds.
    saved = None
    if config.resume:
        config, saved = resume_config(config)
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed, deterministic=config.deterministic)

    # 2. Environments, networks, optimizer, replay.
    envs = make_vector_env(config.env_id, num_envs=config.num_envs, seed=config.seed,
                           backend=config.env_backend, training=True,
                           capture_video=config.capture_video)
    if config.save_env_state:
        try:
            _pickle_envs(envs)  # fail now rather than at the first checkpoint
        except ValueError:
            envs.close()
            raise
    n_actions = int(envs.single_action_space.n)
    obs_shape = tuple(envs.obs_shape)
    obs_dtype = envs.single_observation_space.dtype
    pixels = observations_are_pixels(envs.single_observation_space)
    net_kwargs = dict(backbone=config.backbone, dueling=config.dueling, hidden=config.hidden,
                      pixels=pixels)
    q_network = build_q_network(obs_shape, n_actions, **net_kwargs)
    target_network = copy.deepcopy(q_network)
    channels_last = len(obs_shape) == 3 if config.channels_last is None else config.channels_last
    q_network.channels_last = target_network.channels_last = channels_last
    q_net = prepare_module(q_network, device=device, channels_last=channels_last,
                           compile=config.compile)
    target_net = prepare_module(target_network, device=device, channels_last=channels_last,
                                compile=config.compile)
    for p in target_network.parameters():
        p.requires_grad_(False)
    # Fused Adam: one kernel for all parameters instead of a Python loop (~10x faster on CPU).
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(q_network.parameters(), lr=config.learning_rate, fused=fused)
    precision = Precision(config.precision, device)
    rb = ReplayBuffer(config.buffer_size, obs_shape, config.num_envs, obs_dtype=obs_dtype,
                      device=device, n_step=config.n_step, gamma=config.gamma,
                      prioritized=config.prioritized, alpha=config.prioritized_alpha,
                      beta=config.prioritized_beta, seed=config.seed)
    explore_rng = np.random.default_rng(config.seed)
    learn_threads = torch.get_num_threads()
    act_threads = 1 if device.type == "cpu" and learn_threads > 1 else None
    # While the agent acts on one core, a second core computes the next update's target
    # Q-values (its batch is drawn right after the previous update); see prefetch_targets.
    prefetch = config.prefetch_targets
    if prefetch is None:
        prefetch = device.type == "cpu" and learn_threads > 1 and not config.compile

    # 3. Counters; a resumed run restores everything it saved.
    global_step = num_updates = episodes = 0
    buffer_start = 0  # step from which the replay holds data (warm-up restarts if it was not saved)
    run_dir = _run_dir_of(config.resume) if config.resume else Path(
        config.run_dir or make_run_dir("dqn", config.env_id.replace("/", "-"), config.seed))
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=config.keep_checkpoints)
    recent_returns: deque[float] = deque(maxlen=100)
    obs = envs.reset(seed=config.seed)
    if saved is not None:
        q_network.load_state_dict(saved["q_network"])
        target_network.load_state_dict(saved["target_network"])
        optimizer.load_state_dict(saved["optimizer"])
        precision.load_state_dict(saved["precision"])
        global_step, num_updates, episodes = (int(saved[k]) for k in
                                              ("global_step", "num_updates", "episodes"))
        set_rng_state(saved["rng"])
        explore_rng.bit_generator.state = json.loads(saved["explore_rng"])
        replay_path = run_dir / "checkpoints" / (saved.get("replay_file") or "-")
        if replay_path.is_file():
            rb.load(replay_path)
            buffer_start = int(saved["buffer_start"])
        else:
            buffer_start = global_step
        recent_returns.extend(saved["recent_returns"])
        if saved.get("env_pickle") is not None:
            envs.close()
            envs = _unpickle_envs(saved["env_pickle"])  # the very episodes that were running
            obs = saved["obs"].numpy()
        else:  # new episodes, seeded apart from the ones the run started with
            obs = envs.reset(seed=config.seed + global_step)

    def checkpoint() -> Path:
        replay_file = None
        if config.save_replay:
            replay_file = f"replay_{global_step:09d}.npz"
            checkpoints.directory.mkdir(parents=True, exist_ok=True)
            rb.save(run_dir / "checkpoints" / replay_file)
        state = {
            "format": "rlgen.dqn/1", "config": dataclasses.asdict(config),
            "obs_shape": list(obs_shape), "pixels": pixels,
            "n_actions": n_actions,
            "q_network": q_network.state_dict(), "target_network": target_network.state_dict(),
            "optimizer": optimizer.state_dict(), "precision": precision.state_dict(),
            "global_step": global_step, "num_updates": num_updates, "episodes": episodes,
            "buffer_start": buffer_start, "replay_file": replay_file,
            "recent_returns": list(recent_returns),
            "rng": rng_state(), "explore_rng": json.dumps(explore_rng.bit_generator.state),
            "env_pickle": _pickle_envs(envs) if config.save_env_state else None,
            "obs": torch.from_numpy(np.asarray(obs)),
            # The batch already drawn for the next update (its draw consumed replay RNG).
            "pending_batch": None if pending is None else torch.from_numpy(pending[0].indices),
            "pending_weights": None if pending is None else pending[0].weights.cpu(),
        }
        path = checkpoints.save(state, global_step)
        for old in (run_dir / "checkpoints").glob("replay_*.npz"):  # only the newest is kept
            if old.name != replay_file:
                old.unlink(missing_ok=True)
        return path

    recorder = EpisodeRecorder(run_dir / "videos") if config.capture_video else None
    logger = RunLogger(run_dir, task="dqn", seed=config.seed, config=config,
                       total_steps=config.total_timesteps, initial_step=global_step,
                       progress=None if config.progress else False,
                       description=f"dqn {config.env_id}")
    # "wait": blocked on the worker's target Q-values (prefetch_targets) before an update.
    timers = {"env": 0.0, "act": 0.0, "sample": 0.0, "wait": 0.0, "update": 0.0, "loop": 0.0}
    learning_timers: dict[str, float] | None = None  # timers when learning began
    learning_step0, learning_cpu0 = None, 0.0
    start_step, start_time = global_step, time.perf_counter()
    loss = q_taken = None

    def next_q_values(batch: ReplayBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Q-values of the batch's next observations: target net (and online net, Double)."""
        with torch.no_grad(), precision.autocast():
            target_q = target_net(batch.next_obs).float()
            online_q = q_net(batch.next_obs).float() if config.double else None
        return target_q, online_q

    def next_q_values_beside_acting(batch: ReplayBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        torch.set_num_threads(1)  # the acting thread has the other core
        return next_q_values(batch)

    def start_next_batch(batch: ReplayBatch) -> tuple[ReplayBatch, Future | None]:
        # Safe beside acting: the batch is a copy of the replay's frames, and the weights it
        # reads change only in the next optimizer step, after the result is collected.
        return batch, (worker.submit(next_q_values_beside_acting, batch) if worker else None)

    def beta_at(step: int) -> float:  # prioritized replay's importance exponent, annealed to 1
        return linear_schedule(config.prioritized_beta, 1.0, config.total_timesteps, step)

    worker = ThreadPoolExecutor(1, thread_name_prefix="rlgen-next-q") if prefetch else None
    # (batch, future of its next_q_values) of the next update, drawn right after the last one.
    pending: tuple[ReplayBatch, Future | None] | None = None
    if saved is not None and saved.get("pending_batch") is not None and len(rb) > 0:
        pending = start_next_batch(rb.gather(saved["pending_batch"].numpy(),
                                             saved["pending_weights"].numpy()))

    # 4. The loop: act, step, store, learn, log, checkpoint.
    try:
        with _StopOnCtrlC() as stop:
            while global_step < config.total_timesteps:
                t0 = time.perf_counter()
                epsilon = linear_schedule(config.start_e, config.end_e,
                                          config.exploration_fraction * config.total_timesteps,
                                          global_step)
                obs_t = torch.as_tensor(obs, device=device)
                # One intra-op thread for the tiny acting forward: more threads only add
                # synchronisation (and stall badly when another process holds a core).
                with torch_threads(act_threads), precision.autocast():
                    actions = select_actions(q_net, obs_t, epsilon, explore_rng, n_actions)
                t1 = time.perf_counter()
                next_obs, rewards, terminations, truncations, final_obs = envs.step(actions)
                t2 = time.perf_counter()
                # final_obs is the true next observation, also for envs that just auto-reset.
                rb.add(obs, actions, rewards, final_obs, terminations, truncations)
                if recorder is not None:
                    recorder.step(envs, game_over=bool(terminations[0] or truncations[0])
                                  and not np.array_equal(final_obs[0], next_obs[0]))
                obs = next_obs
                prev_step, global_step = global_step, global_step + config.num_envs

                for episodic_return, length in _pop_stats(envs):
                    episodes += 1
                    recent_returns.append(episodic_return)
                    logger.scalar("charts/episodic_return", episodic_return, global_step)
                    logger.scalar("charts/episodic_length", length, global_step)

                t3 = time.perf_counter()
                learning = global_step - buffer_start > config.learning_starts
                if learning:
                    if learning_timers is None:
                        learning_timers, learning_step0 = dict(timers), global_step
                        learning_cpu0 = time.process_time()
                    due = (global_step // config.train_frequency
                           - prev_step // config.train_frequency)
                    for _ in range(due):
                        if pending is not None:
                            (batch, future), pending = pending, None
                            tw = time.perf_counter()
                            next_q_target, next_q_online = (future.result() if future
                                                            else next_q_values(batch))
                            timers["wait"] += time.perf_counter() - tw
                        else:
                            ts = time.perf_counter()
                            batch = rb.sample(config.batch_size, beta=beta_at(global_step))
                            timers["sample"] += time.perf_counter() - ts
                            next_q_target, next_q_online = next_q_values(batch)
                        torch.set_num_threads(learn_threads)
                        target = td_target(batch.rewards, batch.discounts, next_q_target,
                                           next_q_online)
                        with precision.autocast():
                            q_values = q_net(batch.obs)
                        q_taken = q_values.float().gather(1, batch.actions[:, None]).squeeze(1)
                        weights = batch.weights if config.prioritized else None
                        loss, td_errors = td_loss(q_taken, target, config.loss, weights)
                        optimizer.zero_grad(set_to_none=True)
                        precision.step(loss, optimizer, clip_grad_norm=config.max_grad_norm)
                        if config.prioritized:
                            rb.update_priorities(batch.indices, td_errors.abs().cpu().numpy())
                        num_updates += 1
                    if (global_step // config.target_network_frequency
                            != prev_step // config.target_network_frequency):
                        update_target(target_network, q_network, config.tau)
                    if prefetch and due:
                        ts = time.perf_counter()
                        pending = start_next_batch(
                            rb.sample(config.batch_size, beta=beta_at(global_step)))
                        timers["sample"] += time.perf_counter() - ts
                t4 = time.perf_counter()
                timers["act"] += t1 - t0
                timers["env"] += t2 - t1
                timers["update"] += t4 - t3

                if global_step // config.log_frequency != prev_step // config.log_frequency:
                    sps = int((global_step - start_step) / max(t4 - start_time, 1e-9))
                    logger.scalar("charts/SPS", sps, global_step)
                    logger.scalar("charts/epsilon", epsilon, global_step)
                    if loss is not None:
                        logger.scalar("losses/td_loss", loss.item(), global_step)
                        logger.scalar("losses/q_values", q_taken.mean().item(), global_step)
                    mean_return = float(np.mean(recent_returns)) if recent_returns else math.nan
                    logger.progress(global_step, SPS=sps, ret=mean_return, eps=epsilon)
                if (config.checkpoint_frequency and global_step // config.checkpoint_frequency
                        != prev_step // config.checkpoint_frequency):
                    checkpoint()
                timers["loop"] += time.perf_counter() - t0
                if stop.requested:
                    path = checkpoint()
                    logger.print(f"stopped at step {global_step}; checkpoint {path}; continue "
                                 f"with: rlgen train dqn --resume {run_dir}")
                    raise KeyboardInterrupt

        # 5. Final checkpoint, evaluation (full games, unclipped score), summary.
        final_checkpoint = checkpoint()
        total_time = time.perf_counter() - start_time
        metrics: dict[str, Any] = {
            "global_step": global_step, "num_updates": num_updates, "episodes": episodes,
            "mean_return_last100": float(np.mean(recent_returns)) if recent_returns else math.nan,
            "sps": (global_step - start_step) / max(total_time, 1e-9),
            "replay_bytes": int(rb.nbytes), "prefetch_targets": prefetch,
        }
        if learning_timers is not None:
            phase = {k: timers[k] - learning_timers[k] for k in timers}
            metrics["sps_learning"] = (global_step - learning_step0) / max(phase["loop"], 1e-9)
            # CPU seconds of all threads per step: robust to other processes sharing the cores.
            metrics["cpu_ms_per_step_learning"] = (1000 * (time.process_time() - learning_cpu0)
                                                   / max(global_step - learning_step0, 1))
            phase["update"] -= phase["sample"] + phase["wait"]  # the update timer spans both
            parts = ("env", "act", "sample", "wait", "update")
            for k in parts:
                metrics[f"time_fraction_{k}"] = phase[k] / max(phase["loop"], 1e-9)
            metrics["time_fraction_other"] = 1.0 - sum(
                metrics[f"time_fraction_{k}"] for k in parts)
        if config.eval_episodes > 0:
            result = run_episodes(q_net, config.env_id, episodes=config.eval_episodes,
                                  seed=config.seed + 10_000, device=device, precision=precision)
            for i, episodic_return in enumerate(result["returns"]):
                logger.scalar("eval/episodic_return", episodic_return, i)  # CleanRL's x-axis
            metrics.update({f"eval_{k}": v for k, v in result.items() if k != "returns"})
            logger.print(f"eval over {config.eval_episodes} episodes: mean {result['mean']:.2f} "
                         f"std {result['std']:.2f} min {result['min']:.2f} max {result['max']:.2f}")
        metrics["run_dir"], metrics["checkpoint"] = str(run_dir), str(final_checkpoint)
        logger.print(f"dqn {config.env_id}: {global_step} steps at {metrics['sps']:.0f} SPS; "
                     f"checkpoint {final_checkpoint}; `tensorboard --logdir {run_dir.parent}`")
        logger.hparams({k: v for k, v in metrics.items()
                        if isinstance(v, int | float) and math.isfinite(v)})
        return metrics
    finally:
        if worker is not None:
            worker.shutdown(wait=True)
        logger.close()
        envs.close()
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


@TRAINERS.register("dqn")
def dqn_trainer():
    """Deep Q-Network on Atari / gymnasium (Nature, Double, Dueling)."""
    from rlgen.agents.dqn_eval import DQNEvalConfig, evaluate
    from rlgen.cli_spec import TrainerSpec

    return TrainerSpec(config=DQNConfig, train=train, evaluate=(DQNEvalConfig, evaluate))
