"""Evaluation of a trained DQN agent with the protocol of Mnih et al. (Nature 2015): epsilon
0.05, up to 30 no-op starts, full games (no episodic life, unclipped score), a cap of 108,000
emulator frames per episode (30 minutes of play; Nature used 5 minutes = 18,000 frames).

``rlgen eval dqn --checkpoint RUN_DIR --episodes 10 [--video best.gif|best.mp4]`` prints one
line (mean, std, min, max of the game score) and can write a video of the best episode.

Each episode ``k`` resets the environment with seed ``seed + k`` and draws its exploration from
its own generator seeded the same way, so an episode can be played again exactly: the video is
recorded by replaying the best episode, instead of keeping every episode's frames in memory.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlgen.errors import InputError

VIDEO_SUFFIXES = (".gif", ".mp4")


@dataclass
class DQNEvalConfig:
    """Evaluate a DQN checkpoint: epsilon-greedy full games, unclipped scores."""

    checkpoint: str
    """checkpoint file, or a run directory (its latest checkpoint is used)"""
    episodes: int = 10
    """number of evaluation episodes"""
    epsilon: float = 0.05
    """exploration during evaluation (0.05 in the Nature protocol)"""
    noop_max: int = 30
    """up to this many no-op actions at the start of each episode (Atari)"""
    max_episode_frames: int = 108_000
    """emulator frames before an episode is cut (Atari)"""
    env_id: str | None = None
    """environment to play (default: the one the checkpoint was trained on)"""
    seed: int = 0
    """episode k is seeded with seed + k"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    video: str | None = None
    """write the best episode to this .gif (Pillow) or .mp4 (OpenCV) file"""
    video_fps: int = 30
    """frames per second of the video"""
    video_max_frames: int = 4500
    """at most this many frames in the video (4,500 agent steps = Nature's 5 minutes of play)"""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise InputError("--checkpoint must name a checkpoint file or a run directory")
        if self.episodes < 1:
            raise InputError(f"--episodes must be >= 1, got {self.episodes}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise InputError(f"--epsilon must be in [0, 1], got {self.epsilon}")
        if self.noop_max < 0:
            raise InputError(f"--noop-max must be >= 0, got {self.noop_max}")
        if self.max_episode_frames < 1:
            raise InputError(f"--max-episode-frames must be >= 1, got {self.max_episode_frames}")
        if self.video is not None and Path(self.video).suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(f"--video must end in .gif or .mp4, got {self.video!r}")
        if self.video_fps < 1 or self.video_max_frames < 1:
            raise InputError("--video-fps and --video-max-frames must be >= 1")


def play_episode(
    q_network: torch.nn.Module,
    envs: Any,
    *,
    seed: int,
    epsilon: float,
    device: torch.device,
    precision: Any = None,
    frames: list[np.ndarray] | None = None,
    max_frames: int = 0,
) -> tuple[float, int]:
    """One full episode of env 0 of ``envs``; returns (game score, length in agent steps).
    ``frames``, when given, receives the rendered RGB frames (up to ``max_frames``)."""
    from rlgen.agents.qnetwork import select_actions

    rng = np.random.default_rng(seed)
    n_actions = int(envs.single_action_space.n)
    obs = envs.reset(seed=seed)
    envs.pop_episodes()
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    total, length = 0.0, 0
    with autocast:
        while True:
            if frames is not None and len(frames) < max_frames:
                frames.append(np.asarray(envs.render_frame(0)))
            obs_t = torch.as_tensor(obs, device=device)
            actions = select_actions(q_network, obs_t, epsilon, rng, n_actions)
            obs, rewards, terminations, truncations, _ = envs.step(actions)
            total += float(rewards[0])
            length += 1
            if terminations[0] or truncations[0]:
                break
    finished = envs.pop_episodes()
    if finished:  # the wrapper's count is the game score; the summed rewards are the fallback
        total, length = float(finished[0][0]), int(finished[0][1])
    return total, length


def run_episodes(
    q_network: torch.nn.Module,
    env_id: str,
    *,
    episodes: int = 10,
    epsilon: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: Any = None,
    noop_max: int = 30,
    max_episode_frames: int = 108_000,
    video: str | Path | None = None,
    video_fps: int = 30,
    video_max_frames: int = 4500,
    env_options: dict[str, Any] | None = None,
) -> dict:
    """Play ``episodes`` evaluation episodes (``training=False`` envs: full games, unclipped
    rewards); returns returns, lengths, mean, std, min, max (and the video path).
    ``env_options``: more ``make_vector_env`` settings, those the agent trained with (sticky
    actions, MinAtar's difficulty ramping)."""
    from rlgen.agents.envs import make_vector_env

    device = torch.device(device)
    was_training = q_network.training
    q_network.eval()
    envs = make_vector_env(env_id, num_envs=1, seed=seed, backend="sync", training=False,
                           noop_max=noop_max, max_episode_frames=max_episode_frames,
                           capture_video=video is not None, **(env_options or {}))
    try:
        returns, lengths = [], []
        for k in range(episodes):
            score, length = play_episode(q_network, envs, seed=seed + k, epsilon=epsilon,
                                         device=device, precision=precision)
            returns.append(score)
            lengths.append(length)
        result: dict[str, Any] = {
            "returns": returns, "lengths": lengths,
            "mean": float(np.mean(returns)), "std": float(np.std(returns)),
            "min": float(np.min(returns)), "max": float(np.max(returns)),
        }
        if video is not None:
            best = int(np.argmax(returns))
            frames: list[np.ndarray] = []
            score, _ = play_episode(q_network, envs, seed=seed + best, epsilon=epsilon,
                                    device=device, precision=precision, frames=frames,
                                    max_frames=video_max_frames)
            if score != returns[best]:
                warnings.warn(f"the replayed best episode scored {score}, not {returns[best]} "
                              "(non-deterministic kernels?); the video shows the replay",
                              RuntimeWarning, stacklevel=2)
            result["video"] = str(write_video(frames, video, fps=video_fps))
        return result
    finally:
        envs.close()
        q_network.train(was_training)


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 30) -> Path:
    """Write RGB frames ``(H, W, 3)`` uint8 to ``.gif`` (Pillow) or ``.mp4`` (OpenCV)."""
    path = Path(path)
    if not frames:
        raise InputError(f"no frames to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)), loop=0)
    elif suffix == ".mp4":
        try:
            import cv2
        except ImportError:
            raise InputError(f"writing {path} needs OpenCV (pip install opencv-python-headless); "
                             "or ask for a .gif") from None
        height, width = frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise InputError(f"OpenCV could not open {path} for writing (mp4v codec)")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(np.asarray(frame, dtype=np.uint8), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    else:
        raise InputError(f"video path must end in .gif or .mp4, got {path}")
    return path


class EpisodeRecorder:
    """Videos of env 0's training games on gymnasium's capped cubic schedule (games 0, 1, 8,
    27, ..., 729, 1000, then every 1000th), ``episode_{k}.mp4`` (``.gif`` without OpenCV)."""

    def __init__(self, directory: str | Path, max_frames: int = 4500, fps: int = 30):
        self.directory = Path(directory)
        self.max_frames, self.fps = max_frames, fps
        self.game = 0
        self.frames: list[np.ndarray] = []
        try:
            import cv2  # noqa: F401

            self.suffix = ".mp4"
        except ImportError:
            self.suffix = ".gif"

    def scheduled(self) -> bool:
        k = self.game
        return round(k ** (1 / 3)) ** 3 == k if k < 1000 else k % 1000 == 0

    def step(self, envs: Any, game_over: bool) -> Path | None:
        """Call after every env step; returns the video path when one was written."""
        written = None
        if self.scheduled() and len(self.frames) < self.max_frames:
            self.frames.append(np.asarray(envs.render_frame(0)))
        if game_over:
            if self.frames:
                written = write_video(self.frames, self.directory /
                                      f"episode_{self.game}{self.suffix}", fps=self.fps)
            self.frames = []
            self.game += 1
        return written


def load_q_network(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """The online Q-network and the checkpoint's state dict from a DQN checkpoint or run dir."""
    from rlgen.agents.qnetwork import build_q_network
    from rlgen.checkpoint import CheckpointError, load_checkpoint

    state = load_checkpoint(checkpoint, map_location="cpu")
    if state.get("task") != "dqn" or "q_network" not in state.get("state", {}):
        raise CheckpointError(f"{checkpoint} is not a DQN checkpoint (it holds a "
                              f"{state.get('task')!r} run); pass a run of `rlgen train dqn`")
    cfg, meta = state["config"], state["meta"]
    q_network = build_q_network(tuple(meta["obs_shape"]), int(meta["n_actions"]),
                                backbone=cfg["backbone"], dueling=cfg["dueling"],
                                hidden=cfg["hidden"], pixels=bool(meta["pixels"]))
    q_network.load_state_dict(state["state"]["q_network"])
    return q_network.to(device), state


def evaluate(config: DQNEvalConfig) -> dict:
    """``rlgen eval dqn``: play ``config.episodes`` episodes, print and return the statistics."""
    from rlgen.runtime import resolve_device

    device = resolve_device(config.device)
    q_network, state = load_q_network(config.checkpoint, device)
    env_id = config.env_id or state["config"]["env_id"]
    saved = state["config"]  # the training run's env settings (absent in older checkpoints)
    options = {k: saved[k] for k in ("repeat_action_probability", "difficulty_ramping")
               if k in saved}
    result = run_episodes(q_network, env_id, episodes=config.episodes, epsilon=config.epsilon,
                          seed=config.seed, device=device, noop_max=config.noop_max,
                          max_episode_frames=config.max_episode_frames, video=config.video,
                          video_fps=config.video_fps, video_max_frames=config.video_max_frames,
                          env_options=options)
    line = (f"eval dqn {env_id} step {state['step']}: {config.episodes} episodes, "
            f"mean {result['mean']:.2f} std {result['std']:.2f} "
            f"min {result['min']:.2f} max {result['max']:.2f}")
    if "video" in result:
        line += f" (video of the best episode: {result['video']})"
    print(line, flush=True)
    result["env_id"], result["global_step"] = env_id, int(state["step"])
    return result
