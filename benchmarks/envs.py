"""Steps per second of rlgen's environment backends on Atari with random actions.

For each backend (``sync``: this package's gymnasium wrappers in SyncVectorEnv, ``async``: the
same in AsyncVectorEnv subprocesses, ``ale-vector``: ale-py's C++ AtariVectorEnv) and each
``num_envs`` it builds ``make_vector_env`` with the training settings (frame skip 4, 84x84
grayscale stacks of 4, episodic life, clipped rewards), resets, and times ``--steps`` vector
steps of uniformly random actions. Reported: agent steps per second summed over the envs
(``env_steps_per_s``; emulator frames are 4x that) and per CPU-second of this process and its
children (``env_steps_per_cpu_s``), the figure that counts on a shared machine. Every
backend's observations are identical for the same seed and actions (tests/agents/test_envs.py),
so only speed differs.

    python benchmarks/envs.py                                   # Breakout, 1 and 4 envs
    python benchmarks/envs.py --backends sync,ale-vector,async --num-envs 1,8 --steps 5000
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np

from rlgen.agents.envs import make_vector_env


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its live child processes (the async
    backend's workers; os.times only counts children once they have exited)."""
    t = os.times()
    total = t.user + t.system
    ticks = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process went away
        if int(fields[1]) == me:  # ppid; utime and stime follow at fields 11 and 12
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="ALE/Breakout-v5")
    parser.add_argument("--backends", default="sync,ale-vector",
                        help="comma-separated: sync, async, ale-vector, envpool")
    parser.add_argument("--num-envs", default="1,4", help="comma-separated env counts")
    parser.add_argument("--steps", type=int, default=1500, help="vector steps timed per setting")
    parser.add_argument("--warmup", type=int, default=100, help="vector steps before timing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    summary: dict[str, float] = {}
    for backend in args.backends.split(","):
        for num_envs in (int(n) for n in args.num_envs.split(",")):
            settings = {"env_id": args.env_id, "backend": backend, "num_envs": num_envs,
                        "steps": args.steps}
            with make_vector_env(args.env_id, num_envs=num_envs, seed=args.seed,
                                 backend=backend) as envs:
                envs.reset()
                rng = np.random.default_rng(args.seed)
                actions = rng.integers(0, envs.num_actions, size=(args.steps + args.warmup,
                                                                  num_envs))
                for a in actions[:args.warmup]:
                    envs.step(a)
                wall, cpu = time.perf_counter(), cpu_seconds()
                for a in actions[args.warmup:]:
                    envs.step(a)
                wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            total = args.steps * num_envs
            for metric, value, unit in (("env_steps_per_s", total / wall, "steps/s"),
                                        ("env_steps_per_cpu_s", total / max(cpu, 1e-9),
                                         "steps/cpu-s")):
                print(json.dumps({"benchmark": "envs", "metric": metric, "value": round(value, 1),
                                  "unit": unit, **settings}), flush=True)
            summary[f"{backend}/{num_envs}"] = round(total / wall, 1)
    print(json.dumps({"benchmark": "envs", "metric": "summary", "value": summary,
                      "unit": "env_steps_per_s", "env_id": args.env_id, "steps": args.steps}))


if __name__ == "__main__":
    main()
