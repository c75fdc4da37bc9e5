"""Smoke test of ``benchmarks/detection.py``: ``--help`` works and a ``--quick`` run (NMS on a
few hundred random boxes against the brute-force loop, YOLO v1 at 64x64 for one step) prints
valid JSON lines: NMS times and speed-ups, train / inference images/s, a summary line last."""

import json

from benchmark_script import REQUIRED, runner

run = runner("detection.py")


def test_help_exits_zero():
    result = run("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--models", "--backbone", "--size", "--precision", "--nms-sizes", "--device",
                 "--steps", "--quick"):
        assert flag in result.stdout


def test_quick_run_prints_json_lines():
    result = run("--quick", "--device", "cpu", "--threads", "1", "--models", "yolov1",
                 "--nms-sizes", "300", timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]  # JSON lines only
    for record in records:
        assert record.keys() >= REQUIRED and record["benchmark"] == "detection", record
    by_metric: dict[str, list[dict]] = {}
    for record in records[:-1]:
        by_metric.setdefault(record["metric"], []).append(record)
    times = by_metric["nms_ms"]
    assert sorted((r["op"], r["impl"]) for r in times) == [
        ("batched_nms", "reference"), ("batched_nms", "rlgen"), ("nms", "reference"),
        ("nms", "rlgen")]
    for r in times:
        assert r["boxes"] == 300 and r["unit"] == "ms" and r["value"] > 0 and r["kept"] > 0
    for speedup in by_metric["nms_speedup"]:
        pair = {r["impl"]: r["value"] for r in times if r["op"] == speedup["op"]}
        assert abs(speedup["value"] - pair["reference"] / pair["rlgen"]) < 0.01 * speedup["value"]
    for mode in ("train", "inference"):
        (rate,) = by_metric[f"{mode}_images_per_s"]
        assert rate["model"] == "yolov1" and rate["precision"] == "32"
        assert rate["unit"] == "images/s" and rate["value"] > 0 and rate["image_size"] == 64
    summary = records[-1]
    assert summary["metric"] == "summary" and summary["value"] > 0
    assert set(summary["images_per_s"]) == {"yolov1/32"}
    assert "| nms | 300 |" in result.stderr and "| yolov1 | lenet5 | 32 | 64 |" in result.stderr
