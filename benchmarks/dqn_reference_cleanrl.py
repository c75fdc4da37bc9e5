"""The reference loop rlgen's DQN is measured against: CleanRL's ``dqn_atari.py``, rewritten.

CleanRL's script itself no longer runs here (it needs gymnasium 0.29 and Stable-Baselines3's
Atari wrappers; this project uses gymnasium 1.x), so this file is an independent rewrite of
what it does each step, at its settings, for speed comparisons only (``benchmarks/dqn_atari.py
--compare-reference``). Everything that costs time is kept as CleanRL has it:

- one env in a gymnasium ``SyncVectorEnv`` with CleanRL's wrapper stack in Python (those of
  Stable-Baselines3, rewritten here): up to 30 no-op starts, frame skip 4 with a max over the
  last two full-size RGB frames, life loss ends the episode, fire on reset, sign-clipped
  rewards, then gymnasium's 84x84 resize, grayscale and a stack of 4 frames;
- a Stable-Baselines3-style replay with ``optimize_memory_usage=True``: one ``(N, 1, 4, 84, 84)``
  uint8 array of 4-frame stacks, the next observation read from the following slot, batches
  copied to tensors with ``torch.tensor``;
- the Nature CNN as one ``nn.Sequential`` dividing by 255, default (for-loop) Adam, MSE loss;
- epsilon-greedy acting that skips the forward pass when it explores and otherwise runs it
  with autograd on (no ``no_grad``), as CleanRL does;
- an update every 4 steps (batch 32), the target copied every 1000 steps, TensorBoard scalars
  every 100 steps.

Prints JSON lines (``sps`` over the learning phase, ``cpu_ms_per_step``, ``peak_rss_mb``,
``replay_bytes_per_transition`` from the allocated arrays).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class NoopStart(gym.Wrapper):
    """1 to ``noop_max`` no-op steps after each reset."""

    def __init__(self, env, noop_max: int = 30):
        super().__init__(env)
        self.noop_max = noop_max

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.unwrapped.np_random.integers(1, self.noop_max + 1)):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


class RepeatAndMaxPool(gym.Wrapper):
    """Repeat each action ``skip`` times; return the summed reward and the pixel-wise max of the
    last two (full-size RGB) frames."""

    def __init__(self, env, skip: int = 4):
        super().__init__(env)
        self.skip = skip
        self.frames = np.zeros((2, *env.observation_space.shape), dtype=np.uint8)

    def step(self, action):
        total, terminated, truncated, info = 0.0, False, False, {}
        for i in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            if i >= self.skip - 2:
                self.frames[i - (self.skip - 2)] = obs
            total += float(reward)
            if terminated or truncated:
                break
        return self.frames.max(axis=0), total, terminated, truncated, info


class LifeLossEndsEpisode(gym.Wrapper):
    """A lost life ends the training episode; the game itself goes on (reset = a no-op step)
    until it is really over."""

    def __init__(self, env):
        super().__init__(env)
        self.lives, self.game_over = 0, True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, _, _, info = self.env.step(0)
        self.lives = self.unwrapped.ale.lives()
        return obs, info


class FireOnReset(gym.Wrapper):
    """Press FIRE (then action 2) after each reset, for games that wait for it."""

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def make_env(env_id: str, seed: int):
    """CleanRL's Atari stack (SB3's wrappers, then gymnasium's resize, grayscale, frame stack),
    on full-size RGB frames as there."""
    import ale_py

    gym.register_envs(ale_py)

    def thunk():
        env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = NoopStart(env, noop_max=30)
        env = RepeatAndMaxPool(env, skip=4)
        env = LifeLossEndsEpisode(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireOnReset(env)
        env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(r)))
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.GrayscaleObservation(env)
        env = gym.wrappers.FrameStackObservation(env, 4)
        env.action_space.seed(seed)
        return env

    return thunk


class QNetwork(nn.Module):
    def __init__(self, n_actions: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, n_actions),
        )

    def forward(self, x):
        return self.network(x / 255.0)


class StackReplay:
    """SB3's ReplayBuffer layout with optimize_memory_usage=True, one env."""

    def __init__(self, size: int, obs_shape: tuple[int, ...]):
        self.size, self.pos, self.full = size, 0, False
        self.observations = np.zeros((size, 1, *obs_shape), dtype=np.uint8)
        self.actions = np.zeros((size, 1, 1), dtype=np.int64)
        self.rewards = np.zeros((size, 1), dtype=np.float32)
        self.dones = np.zeros((size, 1), dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.observations, self.actions, self.rewards, self.dones))

    def add(self, obs, next_obs, action, reward, done):
        self.observations[self.pos] = obs
        self.observations[(self.pos + 1) % self.size] = next_obs
        self.actions[self.pos], self.rewards[self.pos], self.dones[self.pos] = action, reward, done
        self.pos = (self.pos + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, batch_size: int):
        if self.full:
            inds = (np.random.randint(1, self.size, size=batch_size) + self.pos) % self.size
        else:
            inds = np.random.randint(0, self.pos, size=batch_size)
        return (torch.tensor(self.observations[inds, 0]), torch.tensor(self.actions[inds, 0]),
                torch.tensor(self.observations[(inds + 1) % self.size, 0]),
                torch.tensor(self.dones[inds]), torch.tensor(self.rewards[inds]))


def linear_schedule(start_e: float, end_e: float, duration: float, t: int) -> float:
    return max(start_e + (end_e - start_e) / duration * t, end_e)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/Breakout-v5")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--buffer-size", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    from torch.utils.tensorboard import SummaryWriter

    envs = gym.vector.SyncVectorEnv([make_env(args.env, args.seed)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    n_actions = int(envs.single_action_space.n)
    q_network, target_network = QNetwork(n_actions), QNetwork(n_actions)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4)
    rb = StackReplay(args.buffer_size, envs.single_observation_space.shape)
    gamma, batch_size, train_frequency, target_frequency = 0.99, 32, 4, 1000
    with tempfile.TemporaryDirectory(prefix="rlgen-bench-ref-") as log_dir:
        writer = SummaryWriter(log_dir)
        obs, _ = envs.reset(seed=args.seed)
        start = time.perf_counter()
        for global_step in range(args.steps):
            if global_step == args.learning_starts:
                learn_wall, learn_cpu = time.perf_counter(), time.process_time()
            epsilon = linear_schedule(1.0, 0.01, 0.1 * args.steps, global_step)
            if random.random() < epsilon:
                actions = np.array([envs.single_action_space.sample()])
            else:
                q_values = q_network(torch.Tensor(obs))
                actions = torch.argmax(q_values, dim=1).cpu().numpy()
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            if "episode" in infos and infos["_episode"][0]:
                writer.add_scalar("charts/episodic_return", infos["episode"]["r"][0], global_step)
                writer.add_scalar("charts/episodic_length", infos["episode"]["l"][0], global_step)
            real_next_obs = next_obs.copy()
            if "final_obs" in infos and infos["_final_obs"][0]:
                real_next_obs[0] = infos["final_obs"][0]
            rb.add(obs, real_next_obs, actions, rewards, terminations)
            obs = next_obs
            if global_step > args.learning_starts and global_step % train_frequency == 0:
                b_obs, b_actions, b_next_obs, b_dones, b_rewards = rb.sample(batch_size)
                with torch.no_grad():
                    target_max, _ = target_network(b_next_obs).max(dim=1)
                    td_target = b_rewards.flatten() + gamma * target_max * (1 - b_dones.flatten())
                old_val = q_network(b_obs).gather(1, b_actions).squeeze()
                loss = F.mse_loss(td_target, old_val)
                if global_step % 100 == 0:
                    writer.add_scalar("losses/td_loss", loss, global_step)
                    writer.add_scalar("losses/q_values", old_val.mean().item(), global_step)
                    sps = int(global_step / (time.perf_counter() - start))
                    writer.add_scalar("charts/SPS", sps, global_step)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if global_step % target_frequency == 0:
                for target_param, param in zip(target_network.parameters(),
                                               q_network.parameters(), strict=True):
                    target_param.data.copy_(param.data)
        wall, cpu = time.perf_counter() - learn_wall, time.process_time() - learn_cpu
        writer.close()
    envs.close()
    learning_steps = args.steps - args.learning_starts
    settings = {"env": args.env, "steps": args.steps, "learning_starts": args.learning_starts,
                "buffer_size": args.buffer_size, "threads": torch.get_num_threads()}
    rows = [("sps", learning_steps / wall, "steps/s"),
            ("cpu_ms_per_step", 1000 * cpu / learning_steps, "ms"),
            ("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB"),
            ("replay_bytes_per_transition", rb.nbytes / args.buffer_size, "bytes")]
    for metric, value, unit in rows:
        print(json.dumps({"benchmark": "dqn_reference_cleanrl", "metric": metric,
                          "value": round(float(value), 4), "unit": unit, **settings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
