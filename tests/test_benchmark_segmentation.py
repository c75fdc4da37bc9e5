"""Smoke test of ``benchmarks/segmentation.py``: ``--help`` works and a ``--quick`` run (a small
U-Net beside its plain-PyTorch twin, 64x64, one step) prints valid JSON lines: images/s and peak
memory per side, the rlgen / plain ratio per setting, and a summary line last."""

import json

from benchmark_script import REQUIRED, runner

run = runner("segmentation.py")
MODES = ("train", "inference")


def test_help_exits_zero():
    result = run("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--models", "--size", "--precision", "--memory-format", "--batch-size",
                 "--device", "--steps", "--quick"):
        assert flag in result.stdout


def test_quick_run_prints_json_lines():
    result = run("--quick", "--device", "cpu", "--threads", "1", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines]  # stdout holds JSON lines only
    for record in records:
        assert record.keys() >= REQUIRED, record
        assert record["benchmark"] == "segmentation"
    by_metric: dict[str, list[dict]] = {}
    for record in records[:-1]:
        by_metric.setdefault(record["metric"], []).append(record)
    for mode in MODES:
        rates = by_metric[f"{mode}_images_per_s"]
        assert sorted(r["impl"] for r in rates) == ["plain", "rlgen"]
        for r in rates:
            assert r["unit"] == "images/s" and r["value"] > 0
            assert r["model"] == "unet" and r["image_size"] == 64 and r["batch_size"] == 1
        assert rates[0]["params"] == rates[1]["params"] > 0  # asserted equal by the script
        memory = by_metric[f"{mode}_peak_memory_mb"]
        assert sorted(m["impl"] for m in memory) == ["plain", "rlgen"]
        for m in memory:
            assert m["unit"] == "MiB" and m["memory_source"]
            assert m["value"] is None or m["value"] >= 0
        (ratio,) = by_metric[f"{mode}_rlgen_over_plain"]
        expected = ratio["rlgen_images_per_s"] / ratio["plain_images_per_s"]
        assert abs(ratio["value"] - expected) < 0.01 * expected + 1e-3
    summary = records[-1]
    assert summary["metric"] == "summary" and summary["value"] > 0
    assert set(summary["ratios"]["unet"]) == {f"{m}/64/32/contiguous" for m in MODES}
    assert "| unet | train | 64 |" in result.stderr  # the markdown table
