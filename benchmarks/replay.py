"""Memory and speed of rlgen's replay buffer on Atari-shaped data (4 x 84 x 84 uint8 stacks).

Fills a ``ReplayBuffer`` with a synthetic Atari stream (consistent rolling frame stacks, a lost
life every ~200 steps, a game over every ~1,000 steps with a zero-padded new stack), then times
sampling. Prints JSON lines:

- ``bytes_per_transition``: allocated bytes (``nbytes``, the sum of the numpy arrays' .nbytes)
  / capacity;
- ``resident_bytes_per_filled_slot``: growth of the process's resident memory during the fill
  / slots filled (the arrays are lazily zero-mapped, so an unfilled buffer costs little);
- ``add_transitions_per_s`` and ``sample_batches_per_s`` (batches moved to ``--device``);
- for comparison, COMPUTED (not measured) figures for Stable-Baselines3's ReplayBuffer with a
  Discrete action space, which stores obs and next_obs stacks (56,468 B) or, with
  ``optimize_memory_usage=True``, obs stacks only (28,244 B).

    python benchmarks/replay.py                                  # 1M capacity, 50k filled
    python benchmarks/replay.py --capacity 1000000 --fill all    # fill it all (~7 GB RAM)
    python benchmarks/replay.py --num-envs 4 --n-step 3 --prioritized --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

from rlgen.agents.replay import ReplayBuffer

STACK, SIZE = 4, 84


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sb3_bytes_per_transition(optimized: bool) -> int:
    """What SB3's ReplayBuffer allocates per transition for uint8 (4, 84, 84) observations and
    a Discrete action space: obs (+ next_obs unless optimized), int64 action, float32 reward,
    float32 done and float32 timeout."""
    obs = STACK * SIZE * SIZE
    return obs * (1 if optimized else 2) + 8 + 4 + 4 + 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fill", default="50000",
                        help="transitions (over all envs) to add before sampling, or 'all'")
    parser.add_argument("--n-step", type=int, default=1)
    parser.add_argument("--prioritized", action="store_true")
    parser.add_argument("--sample-seconds", type=float, default=5.0,
                        help="time spent sampling")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    settings = {"capacity": args.capacity, "num_envs": args.num_envs,
                "batch_size": args.batch_size, "device": args.device, "n_step": args.n_step,
                "prioritized": args.prioritized}
    results: dict[str, float] = {}

    def emit(metric: str, value: float, unit: str, **extra) -> None:
        results[metric] = value
        print(json.dumps({"benchmark": "replay", "metric": metric, "value": value,
                          "unit": unit, **settings, **extra}), flush=True)

    rss0 = rss_bytes()
    buf = ReplayBuffer(args.capacity, (STACK, SIZE, SIZE), args.num_envs, device=args.device,
                       n_step=args.n_step, prioritized=args.prioritized, seed=args.seed)
    emit("bytes_per_transition", buf.nbytes / args.capacity, "bytes",
         nbytes=buf.nbytes, resident_growth_at_allocation=rss_bytes() - rss0)

    fill = args.capacity if args.fill == "all" else int(args.fill)
    steps = math.ceil(fill / args.num_envs)
    rng = np.random.default_rng(args.seed)
    pool = rng.integers(0, 256, size=(257, SIZE, SIZE), dtype=np.uint8)  # frames to cycle
    n = args.num_envs
    stacks = np.zeros((n, STACK, SIZE, SIZE), np.uint8)
    stacks[:, -1] = pool[0]
    actions = np.zeros(n, np.int64)
    rewards = np.ones(n, np.float32)
    rss1 = rss_bytes()
    start = time.perf_counter()
    for t in range(steps):
        next_stacks = np.concatenate([stacks[:, 1:], pool[(t + np.arange(n)) % 257][:, None]],
                                     axis=1)
        lost_life = (t + 1) % 200 == 0
        game_over = (t + 1) % 1000 == 0
        terms = np.full(n, lost_life or game_over)
        buf.add(stacks, actions, rewards, next_stacks, terms, np.zeros(n, bool))
        if game_over:
            stacks = np.zeros_like(stacks)
            stacks[:, -1] = pool[(t + 7) % 257]
        else:
            stacks = next_stacks
    add_time = time.perf_counter() - start
    emit("add_transitions_per_s", steps * n / add_time, "transitions/s", filled=steps * n)
    emit("resident_bytes_per_filled_slot", (rss_bytes() - rss1) / min(steps * n, args.capacity),
         "bytes", filled=steps * n)

    batches = 0
    for _ in range(10):  # warm-up (pinned memory pool, caches)
        buf.sample(args.batch_size)
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    start = time.perf_counter()
    while time.perf_counter() - start < args.sample_seconds:
        for _ in range(20):
            batch = buf.sample(args.batch_size)
            if args.prioritized:
                buf.update_priorities(batch.indices, rng.random(args.batch_size))
        batches += 20
    sync()
    emit("sample_batches_per_s", batches / (time.perf_counter() - start), "batches/s",
         updates_priorities=args.prioritized)
    emit("sb3_bytes_per_transition_computed", sb3_bytes_per_transition(False), "bytes",
         note="computed from SB3's array layout, not measured")
    emit("sb3_optimized_bytes_per_transition_computed", sb3_bytes_per_transition(True), "bytes",
         note="computed from SB3's array layout (optimize_memory_usage=True), not measured")
    ratio = sb3_bytes_per_transition(False) / results["bytes_per_transition"]
    print(json.dumps({"benchmark": "replay", "metric": "summary", "value": results,
                      "unit": "mixed", "sb3_over_rlgen_memory_ratio": round(ratio, 2),
                      **settings}), flush=True)


if __name__ == "__main__":
    main()
