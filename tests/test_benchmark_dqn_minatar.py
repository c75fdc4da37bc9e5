"""Smoke test of ``benchmarks/dqn_minatar.py``: ``--help`` works, bad ``--games`` is refused,
and a ``--quick`` run (MinAtar Breakout, 600 frames with the paper's preset) prints valid JSON
lines: the training return and SPS of the run, the random policy's return, and a summary with
the markdown table last."""

import json

from benchmark_script import REQUIRED, runner

run = runner("dqn_minatar.py")


def test_help_and_bad_games():
    result = run("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--games", "--frames", "--seeds", "--version", "--random-episodes", "--quick"):
        assert flag in result.stdout
    bad = run("--games", "Pong", timeout=60)
    assert bad.returncode != 0 and "Asterix, Breakout" in bad.stderr


def test_quick_run_prints_json_lines():
    result = run("--quick", "--device", "cpu", "--threads", "1", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]  # JSON lines only
    for record in records:
        assert record.keys() >= REQUIRED and record["benchmark"] == "dqn_minatar", record
    by_metric = {r["metric"]: r for r in records}
    trained = by_metric["mean_return_last100"]
    assert trained["game"] == "Breakout" and trained["frames"] == 600
    assert trained["episodes"] > 0 and trained["value"] >= 0
    assert by_metric["sps"]["value"] > 0 and by_metric["random_return"]["value"] >= 0
    summary = records[-1]
    assert summary["metric"] == "summary" and summary["games"][0]["game"] == "Breakout"
    assert summary["games"][0]["paper_dqn_5m"] is None  # not quoted: the paper has curves only
    assert summary["markdown"].startswith("| game |") and "| Breakout |" in summary["markdown"]
