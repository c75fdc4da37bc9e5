"""Smoke test of ``benchmarks/envs.py``: ``--help`` works and a ``--quick`` run (CartPole, sync
backend, 1 and 2 envs, two tiny ``rlgen train dqn`` processes) prints valid JSON lines: env
throughput per setting, the saturating env count, the training SPS per --num-envs, a summary
last."""

import json

from benchmark_script import REQUIRED, runner

run = runner("envs.py")


def test_help_exits_zero():
    result = run("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--backends", "--num-envs", "--train-sps", "--train-steps", "--quick",
                 "--saturation-tolerance"):
        assert flag in result.stdout


def test_quick_run_prints_json_lines():
    result = run("--quick", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]  # JSON lines only
    for record in records:
        assert record.keys() >= REQUIRED, record
        assert record["benchmark"] == "envs"
    by_metric: dict[str, list[dict]] = {}
    for record in records[:-1]:
        by_metric.setdefault(record["metric"], []).append(record)
    rates = by_metric["env_steps_per_s"]
    assert [r["num_envs"] for r in rates] == [1, 2] and all(r["value"] > 0 for r in rates)
    (saturation,) = by_metric["saturating_num_envs"]
    assert saturation["value"] in (1, 2)
    best = max(r["value"] for r in rates)
    chosen = next(r["value"] for r in rates if r["num_envs"] == saturation["value"])
    assert chosen >= 0.95 * best
    train = by_metric["train_sps"]
    assert [r["num_envs"] for r in train] == [1, 2] and all(r["value"] > 0 for r in train)
    assert records[-1]["metric"] == "summary"
    assert records[-1]["value"]["train/2"] == train[1]["value"]
