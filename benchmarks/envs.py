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

Saturation: with several ``--num-envs`` a ``saturating_num_envs`` line per backend names the
smallest env count whose throughput is within ``--saturation-tolerance`` (5%) of the best one
measured, i.e. how many envs it takes to keep this machine's cores busy with that backend
(``sync`` / ``ale-vector`` step the envs on one core; ``async`` spreads them over processes).

``--train-sps 1,4,8`` then times ``rlgen train dqn --num-envs N`` for each N, each a fresh
``python -m rlgen`` process with the same flags (``--train-steps`` agent steps, learning from
``--train-learning-starts``, Nature settings otherwise: one update per 4 agent steps, whatever
N), and reports ``train_sps``: agent steps per second over the learning phase, read from the
run's ``metrics.jsonl`` (the ``charts/SPS`` records' steps and times). The update schedule per
agent step is the same for every N (tests/agents/test_dqn_num_envs.py), so the figures compare
like with like.

    python benchmarks/envs.py --env-id MinAtar/Breakout-v1 --backends sync,async \
        --num-envs 1,2,4,8,16 --train-sps 1,4,8
    python benchmarks/envs.py --quick          # CartPole, seconds (the smoke test)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def env_throughput(env_id: str, backend: str, num_envs: int, steps: int, warmup: int,
                   seed: int) -> tuple[float, float]:
    """(agent steps per second, per CPU-second) of ``steps`` vector steps of random actions."""
    with make_vector_env(env_id, num_envs=num_envs, seed=seed, backend=backend) as envs:
        envs.reset()
        rng = np.random.default_rng(seed)
        actions = rng.integers(0, envs.num_actions, size=(steps + warmup, num_envs))
        for a in actions[:warmup]:
            envs.step(a)
        wall, cpu = time.perf_counter(), cpu_seconds()
        for a in actions[warmup:]:
            envs.step(a)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    total = steps * num_envs
    return total / wall, total / max(cpu, 1e-9)


def saturating(rates: dict[int, float], tolerance: float) -> int:
    """The smallest env count whose rate is within ``tolerance`` of the best rate."""
    best = max(rates.values())
    return min(n for n, rate in rates.items() if rate >= (1 - tolerance) * best)


def learning_sps(metrics_file: Path, learning_starts: int) -> float:
    """Agent steps per second between the first and last ``charts/SPS`` records after
    ``learning_starts`` (their steps and wall-clock times)."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    points = [(r["step"], r["time"]) for r in records
              if r["tag"] == "charts/SPS" and r["step"] > learning_starts]
    if len(points) < 2:
        raise SystemExit(f"{metrics_file}: fewer than 2 SPS records after step "
                         f"{learning_starts}; use more --train-steps")
    (s0, t0), (s1, t1) = points[0], points[-1]
    return (s1 - s0) / max(t1 - t0, 1e-9)


def train_sps(args: argparse.Namespace, num_envs: int) -> float:
    """Learning-phase SPS of one ``rlgen train dqn --num-envs N`` process."""
    with tempfile.TemporaryDirectory(prefix="rlgen-bench-envs-") as tmp:
        command = [sys.executable, "-m", "rlgen", "train", "dqn", "--env-id", args.env_id,
                   "--num-envs", str(num_envs), "--total-timesteps", str(args.train_steps),
                   "--learning-starts", str(args.train_learning_starts),
                   "--buffer-size", str(args.train_buffer_size), "--seed", str(args.seed),
                   "--eval-episodes", "0", "--checkpoint-frequency", "0",
                   "--log-frequency", str(args.train_log_frequency), "--no-progress",
                   "--run-dir", str(Path(tmp) / "run"), *args.train_args.split()]
        if args.threads:
            command += ["--torch-threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return learning_sps(Path(tmp) / "run" / "metrics.jsonl", args.train_learning_starts)


def emit(metric: str, value: object, unit: str, **settings: object) -> None:
    print(json.dumps({"benchmark": "envs", "metric": metric, "value": value, "unit": unit,
                      **settings}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="ALE/Breakout-v5")
    parser.add_argument("--backends", default="sync,ale-vector",
                        help="comma-separated: sync, async, ale-vector, envpool")
    parser.add_argument("--num-envs", default="1,4", help="comma-separated env counts")
    parser.add_argument("--steps", type=int, default=1500, help="vector steps timed per setting")
    parser.add_argument("--warmup", type=int, default=100, help="vector steps before timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--saturation-tolerance", type=float, default=0.05,
                        help="an env count saturates when within this fraction of the best")
    parser.add_argument("--train-sps", default="",
                        help="comma-separated --num-envs values to time `rlgen train dqn` with "
                             "(empty: none)")
    parser.add_argument("--train-steps", type=int, default=4000,
                        help="agent steps of each training run")
    parser.add_argument("--train-learning-starts", type=int, default=1000)
    parser.add_argument("--train-buffer-size", type=int, default=10_000)
    parser.add_argument("--train-log-frequency", type=int, default=200,
                        help="agent steps between the SPS records the rate is read from")
    parser.add_argument("--train-args", default="",
                        help="more `rlgen train dqn` flags, space-separated")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the training runs")
    parser.add_argument("--quick", action="store_true",
                        help="CartPole, sync backend, 1 and 2 envs, tiny runs (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.env_id, args.backends, args.num_envs = "CartPole-v1", "sync", "1,2"
        args.steps, args.warmup = 200, 10
        args.train_sps, args.train_steps, args.train_learning_starts = "1,2", 300, 100
        args.train_buffer_size, args.train_log_frequency = 1000, 50
        args.threads = args.threads or 1

    summary: dict[str, object] = {}
    for backend in args.backends.split(","):
        rates: dict[int, float] = {}
        for num_envs in (int(n) for n in args.num_envs.split(",")):
            settings = {"env_id": args.env_id, "backend": backend, "num_envs": num_envs,
                        "steps": args.steps}
            rate, per_cpu = env_throughput(args.env_id, backend, num_envs, args.steps,
                                           args.warmup, args.seed)
            emit("env_steps_per_s", round(rate, 1), "steps/s", **settings)
            emit("env_steps_per_cpu_s", round(per_cpu, 1), "steps/cpu-s", **settings)
            rates[num_envs] = rate
            summary[f"{backend}/{num_envs}"] = round(rate, 1)
        if len(rates) > 1:
            n = saturating(rates, args.saturation_tolerance)
            emit("saturating_num_envs", n, "envs", env_id=args.env_id, backend=backend,
                 cores=os.cpu_count(), tolerance=args.saturation_tolerance,
                 best_steps_per_s=round(max(rates.values()), 1))
            summary[f"{backend}/saturating_num_envs"] = n
    for num_envs in (int(n) for n in args.train_sps.split(",") if n):
        sps = train_sps(args, num_envs)
        emit("train_sps", round(sps, 1), "steps/s", env_id=args.env_id, num_envs=num_envs,
             steps=args.train_steps, learning_starts=args.train_learning_starts,
             buffer_size=args.train_buffer_size, threads=args.threads or "default",
             train_args=args.train_args)
        summary[f"train/{num_envs}"] = round(sps, 1)
    emit("summary", summary, "steps/s", env_id=args.env_id, steps=args.steps)


if __name__ == "__main__":
    main()
