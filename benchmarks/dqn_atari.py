"""DQN (Nature settings) on a real ALE game: speed of the learning phase and where time goes.

Runs ``rlgen.agents.dqn.train`` itself (not a copy of its loop) for ``--steps`` agent steps,
learning from ``--learning-starts`` on, and prints one JSON object per line:

- ``sps``: agent steps per second over the learning phase (one update per 4 steps, batch 32);
- ``time_fraction_env`` / ``_act`` / ``_sample`` / ``_wait`` / ``_update`` / ``_other``: the
  split of the learning phase between env stepping, action selection (epsilon-greedy forward),
  replay sampling, waiting for the target Q-values computed beside acting (``--prefetch-targets``),
  the gradient update (online forward/backward, Adam, and the target forward when it is not
  prefetched) and everything else (the framework's own overhead: replay insertion, episode
  stats, logging, checkpoints);
- ``peak_rss_mb`` (the process's peak resident memory) and ``replay_bytes_per_transition``
  (the replay's allocated bytes / its capacity).

Example: ``python benchmarks/dqn_atari.py --env ALE/Breakout-v5 --steps 6000
--learning-starts 2000 --buffer-size 10000 --threads 2``. Runs on the GPU when there is one
(``--device auto``); there ``--cuda-graph`` and ``--replay-device cpu|pinned|cuda`` choose the GPU
fast path's options, e.g. ``python benchmarks/dqn_atari.py --device cuda --steps 20000
--learning-starts 5000 --cuda-graph --replay-device cuda``.

Like the ``rlgen`` command, it applies ``rlgen.openmp``'s defaults (``GOMP_SPINCOUNT=10000``)
before torch starts; ``--no-openmp-defaults`` leaves the environment as it is, and
``--omp-wait-policy`` sets ``OMP_WAIT_POLICY``.

``--compare-reference R`` measures rlgen side by side with ``dqn_reference_cleanrl.py`` (a
rewrite of CleanRL's ``dqn_atari.py`` loop, see there) at the same settings: R rounds, each
running the reference and then rlgen as separate processes one after the other, so both see
the same machine load. It prints each run's ``sps`` (``impl`` rlgen or reference, ``round``),
then ``sps_ratio`` (rlgen / reference) per round and their median as the ``summary``. The
reference runs with the caller's environment, as a user would start CleanRL's script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/Breakout-v5", help="ALE game id")
    parser.add_argument("--steps", type=int, default=3000, help="total agent steps")
    parser.add_argument("--learning-starts", type=int, default=1000,
                        help="agent steps before the first update")
    parser.add_argument("--buffer-size", type=int, default=10_000, help="replay capacity")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-frequency", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--precision", default="32", choices=["32", "16-mixed", "bf16-mixed"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--backend", default="auto", help="vector env backend")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory format (default: auto = on for images)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the Q-network")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay the update from a CUDA graph (CUDA only)")
    parser.add_argument("--replay-device", default="auto",
                        choices=["auto", "cpu", "pinned", "cuda"],
                        help="where a CUDA learner's replay batches come from")
    parser.add_argument("--prefetch-targets", action=argparse.BooleanOptionalAction, default=None,
                        help="target Q-values on a second core while acting (default: auto)")
    parser.add_argument("--double", action="store_true")
    parser.add_argument("--dueling", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--omp-wait-policy", default="inherit",
                        choices=["passive", "active", "inherit"],
                        help="OMP_WAIT_POLICY for torch's threads (inherit: leave the env var)")
    parser.add_argument("--openmp-defaults", action=argparse.BooleanOptionalAction, default=True,
                        help="apply rlgen.openmp's defaults, as the rlgen command does")
    parser.add_argument("--compare-reference", type=int, default=0, metavar="ROUNDS",
                        help="rounds of reference-then-rlgen runs (0: rlgen alone)")
    args = parser.parse_args(argv)
    if args.steps <= args.learning_starts:
        parser.error(f"--steps ({args.steps}) must exceed --learning-starts "
                     f"({args.learning_starts})")
    if args.compare_reference < 0:
        parser.error(f"--compare-reference must be >= 0, got {args.compare_reference}")
    if args.compare_reference:
        return compare(args, [a for a in (argv if argv is not None else sys.argv[1:])])
    if "torch" in sys.modules and (args.openmp_defaults or args.omp_wait_policy != "inherit"):
        print("warning: torch already imported, OpenMP settings have no effect", file=sys.stderr)
    if args.omp_wait_policy != "inherit":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    if args.openmp_defaults:
        from rlgen.openmp import set_openmp_defaults

        set_openmp_defaults()

    import torch

    from rlgen.agents.dqn import DQNConfig, train
    from rlgen.runtime import resolve_device

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="rlgen-bench-dqn-") as run_dir:
        config = DQNConfig(
            env_id=args.env, total_timesteps=args.steps, learning_starts=args.learning_starts,
            buffer_size=args.buffer_size, batch_size=args.batch_size,
            train_frequency=args.train_frequency, device=str(device), precision=args.precision,
            torch_threads=args.threads, env_backend=args.backend, num_envs=args.num_envs,
            compile=args.compile, cuda_graph=args.cuda_graph, replay_device=args.replay_device,
            double=args.double, dueling=args.dueling, seed=args.seed,
            channels_last=args.channels_last, prefetch_targets=args.prefetch_targets,
            eval_episodes=0, checkpoint_frequency=0,
            progress=False, run_dir=run_dir,
        )
        start = time.perf_counter()
        metrics = train(config)
        wall = time.perf_counter() - start
    settings = {
        "env": args.env, "steps": args.steps, "learning_starts": args.learning_starts,
        "buffer_size": args.buffer_size, "batch_size": args.batch_size,
        "device": str(device), "precision": args.precision,
        "threads": args.threads or torch.get_num_threads(), "backend": args.backend,
        "num_envs": args.num_envs, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "channels_last": "auto" if args.channels_last is None else args.channels_last,
        "prefetch_targets": metrics["prefetch_targets"],
        "cuda_graph": metrics["cuda_graph"], "replay_device": metrics["replay_device"],
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
    }
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    rows = [
        ("sps", metrics["sps_learning"], "steps/s"),
        ("sps_overall", metrics["sps"], "steps/s"),
        ("cpu_ms_per_step", metrics["cpu_ms_per_step_learning"], "ms"),
        ("time_fraction_env", metrics["time_fraction_env"], "fraction"),
        ("time_fraction_act", metrics["time_fraction_act"], "fraction"),
        ("time_fraction_sample", metrics["time_fraction_sample"], "fraction"),
        ("time_fraction_wait", metrics["time_fraction_wait"], "fraction"),
        ("time_fraction_update", metrics["time_fraction_update"], "fraction"),
        ("time_fraction_other", metrics["time_fraction_other"], "fraction"),
        ("updates", metrics["num_updates"], "count"),
        ("peak_rss_mb", peak_rss_mb, "MiB"),
        ("replay_bytes_per_transition", metrics["replay_bytes"] / args.buffer_size, "bytes"),
        ("wall_time", wall, "s"),
    ]
    for metric, value, unit in rows:
        print(json.dumps({"benchmark": "dqn_atari", "metric": metric,
                          "value": round(float(value), 4), "unit": unit, **settings}))
    print(json.dumps({"benchmark": "dqn_atari", "metric": "summary",
                      "value": round(float(metrics["sps_learning"]), 2), "unit": "steps/s",
                      **{name: round(float(value), 4) for name, value, _ in rows}, **settings}))
    return 0


def _run(command: list[str]) -> dict[str, dict]:
    """Run a benchmark process; its JSON lines by metric."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["metric"]: row for row in rows}


def _without_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def compare(args: argparse.Namespace, argv: list[str]) -> int:
    """Alternate reference and rlgen runs; print both SPS and their ratio per round."""
    if args.device not in ("auto", "cpu") or args.num_envs != 1 or args.batch_size != 32 \
            or args.train_frequency != 4:
        raise SystemExit("--compare-reference runs CleanRL's settings: CPU, --num-envs 1, "
                         "--batch-size 32, --train-frequency 4")
    shared = ["--env", args.env, "--steps", str(args.steps), "--learning-starts",
              str(args.learning_starts), "--buffer-size", str(args.buffer_size),
              "--seed", str(args.seed)]
    if args.threads:
        shared += ["--threads", str(args.threads)]
    reference_cmd = [sys.executable, str(HERE / "dqn_reference_cleanrl.py"), *shared]
    rlgen_cmd = [sys.executable, str(Path(__file__).resolve()),
                 *_without_option(argv, "--compare-reference"), "--device", "cpu"]
    ratios = []
    for round_index in range(args.compare_reference):
        reference = _run(reference_cmd)
        ours = _run(rlgen_cmd)
        ratio = ours["sps"]["value"] / reference["sps"]["value"]
        ratios.append(ratio)
        for impl, rows in (("reference", reference), ("rlgen", ours)):
            for metric in ("sps", "cpu_ms_per_step", "peak_rss_mb", "replay_bytes_per_transition"):
                print(json.dumps({**rows[metric], "benchmark": "dqn_atari_vs_reference",
                                  "impl": impl, "round": round_index}), flush=True)
        print(json.dumps({"benchmark": "dqn_atari_vs_reference", "metric": "sps_ratio",
                          "value": round(ratio, 4), "unit": "x", "round": round_index}),
              flush=True)
    print(json.dumps({"benchmark": "dqn_atari_vs_reference", "metric": "summary",
                      "value": round(statistics.median(ratios), 4), "unit": "x (median)",
                      "sps_ratios": [round(r, 4) for r in ratios], "env": args.env,
                      "steps": args.steps, "learning_starts": args.learning_starts,
                      "threads": args.threads or "default"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
