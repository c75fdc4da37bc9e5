"""DQN with the MinAtar paper's settings on the five MinAtar games: returns and speed.

Young & Tian, "MinAtar: An Atari-Inspired Testbed for Thorough and Reproducible Reinforcement
Learning Experiments", arXiv:1903.03176, 2019. Each run is ``rlgen.agents.dqn.train`` with
``DQNConfig.from_preset("minatar")`` (replay 100k, batch 32, one update per step, target copy
every 1,000 steps, 5,000 uniform random steps, then epsilon 1 -> 0.1 over 100k steps, centered
RMSProp lr 2.5e-4 alpha 0.95 eps 0.01 momentum 0.95, Huber loss, gamma 0.99; the paper's
network, ``minatar_cnn`` + 128 units) on ``MinAtar/{Game}-v0`` (all 6 actions, as the paper's
agents had), with MinAtar's sticky actions (0.1) and difficulty ramping, for ``--frames``
frames (= agent steps) per run.

Printed, one JSON object per line (``{"benchmark": "dqn_minatar", "metric", "value", "unit",
...}``):

- per game and seed: ``mean_return_last100`` (the mean game score of the last 100 training
  episodes, as MinAtar's own script reports training returns) and ``sps`` (agent steps per
  second over the whole run, warm-up included), with the episode count and the run's settings;
- per game: ``random_return`` (a uniform random policy's mean score over
  ``--random-episodes`` games, same sticky actions), the yardstick at small budgets;
- last, the ``summary``: per game the mean over seeds, and the markdown table (also written to
  stderr) with the paper's column.

The paper reports its DQN results at 5M frames as learning curves (its results figure), not as
a table of numbers; none are quoted here (``paper_dqn_5m`` is null) rather than figures read
off a plot. The full run: ``python benchmarks/dqn_minatar.py --games all --frames 5000000
--seeds 5``. ``--quick``: one game, 600 frames (learning from frame 400), for the smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")


def parse_games(text: str) -> list[str]:
    if text == "all":
        return list(GAMES)
    games = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in games if g not in GAMES]
    if unknown or not games:
        raise SystemExit(f"--games: expected 'all' or a comma-separated list of {', '.join(GAMES)}"
                         f", got {text!r}")
    return games


def random_return(env_id: str, episodes: int, seed: int) -> float:
    """A uniform random policy's mean game score over ``episodes`` games."""
    import numpy as np

    from rlgen.agents.envs import make_vector_env

    rng = np.random.default_rng(seed)
    scores: list[float] = []
    with make_vector_env(env_id, num_envs=1, seed=seed) as envs:
        envs.reset()
        while len(scores) < episodes:
            envs.step(rng.integers(envs.num_actions, size=1))
            scores += [score for score, _ in envs.pop_episodes()]
    return float(np.mean(scores[:episodes]))


def train_one(env_id: str, frames: int, seed: int, args: argparse.Namespace,
              run_dir: Path) -> dict:
    from rlgen.agents.dqn import DQNConfig, train

    overrides = {}
    if args.quick:  # learn from frame 400 so the smoke test runs a few updates
        overrides = dict(random_steps=400, learning_starts=400, buffer_size=1000)
    config = DQNConfig.from_preset(
        "minatar", env_id=env_id, total_timesteps=frames, seed=seed, device=args.device,
        torch_threads=args.threads, run_dir=str(run_dir), eval_episodes=0,
        checkpoint_frequency=0, keep_checkpoints=1, progress=False, log_interval_s=0.0,
        **overrides)
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON lines only
        return train(config)


def emit(metric: str, value: float | None, unit: str, **fields) -> None:
    print(json.dumps({"benchmark": "dqn_minatar", "metric": metric, "value": value,
                      "unit": unit, **fields}), flush=True)


def markdown_table(rows: list[dict], frames: int, seeds: int) -> str:
    lines = [f"| game | rlgen DQN, last 100 training episodes ({frames:,} frames, {seeds} "
             f"seed{'s' if seeds > 1 else ''}) | random policy | paper DQN at 5M frames | SPS |",
             "|---|---|---|---|---|"]
    for row in rows:
        spread = f" ± {row['std']:.2f}" if row["std"] is not None else ""
        random = "-" if row["random"] is None else f"{row['random']:.2f}"
        lines.append(f"| {row['game']} | {row['mean']:.2f}{spread} | {random} | "
                     f"curves only (not quoted) | {row['sps']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", default="all",
                        help=f"'all' or a comma-separated list of {', '.join(GAMES)}")
    parser.add_argument("--frames", type=int, default=5_000_000,
                        help="frames (= agent steps) per run (the paper: 5,000,000)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per game (seeds 1..K)")
    parser.add_argument("--version", default="v0", choices=["v0", "v1"],
                        help="v0 = all 6 actions (the paper), v1 = each game's minimal set")
    parser.add_argument("--random-episodes", type=int, default=20,
                        help="games of the uniform random policy per game (0 = skip)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: Breakout, 600 frames, 1 seed, 2 random games")
    args = parser.parse_args(argv)
    if args.quick:
        args.games, args.frames, args.seeds, args.random_episodes = "Breakout", 600, 1, 2
    games = parse_games(args.games)
    if args.frames < 1 or args.seeds < 1 or args.random_episodes < 0:
        parser.error("--frames and --seeds must be >= 1, --random-episodes >= 0")

    from rlgen.openmp import set_openmp_defaults

    set_openmp_defaults()  # as the rlgen command does, before torch loads
    rows = []
    with tempfile.TemporaryDirectory(prefix="dqn_minatar_") as tmp:
        for game in games:
            env_id = f"MinAtar/{game}-{args.version}"
            returns, rates = [], []
            for seed in range(1, args.seeds + 1):
                start = time.perf_counter()
                metrics = train_one(env_id, args.frames, seed, args, Path(tmp) / f"{game}_{seed}")
                wall = time.perf_counter() - start
                common = dict(game=game, env_id=env_id, seed=seed, frames=args.frames,
                              episodes=metrics["episodes"], preset="minatar")
                emit("mean_return_last100", metrics["mean_return_last100"], "return", **common)
                emit("sps", metrics["sps"], "agent steps/s", wall_s=round(wall, 1), **common)
                returns.append(metrics["mean_return_last100"])
                rates.append(metrics["sps"])
            baseline = (random_return(env_id, args.random_episodes, seed=10_000)
                        if args.random_episodes else None)
            emit("random_return", baseline, "return", game=game, env_id=env_id,
                 episodes=args.random_episodes)
            rows.append({"game": game, "mean": statistics.fmean(returns),
                         "std": statistics.stdev(returns) if len(returns) > 1 else None,
                         "random": baseline, "sps": statistics.fmean(rates),
                         "paper_dqn_5m": None})
    table = markdown_table(rows, args.frames, args.seeds)
    print(table, file=sys.stderr)
    emit("summary", None, "", games=rows, frames=args.frames, seeds=args.seeds,
         version=args.version, markdown=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
