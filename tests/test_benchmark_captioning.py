"""Smoke test of ``benchmarks/captioning.py``: ``--help`` works, bad flags are refused, and a
``--quick`` run (mnist_deep + LSTM beside its plain-PyTorch twin, checked equal by the script,
one step) prints valid JSON lines: captions/s and beam-search images/s per side, the
rlgen / plain ratio per setting, and a summary line last."""

import json

from benchmark_script import REQUIRED, runner

run = runner("captioning.py")


def test_help_and_bad_flags():
    result = run("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--encoder", "--rnn", "--precision", "--batch-size", "--beam-size", "--device",
                 "--steps", "--quick"):
        assert flag in result.stdout
    result = run("--quick", "--precision", "fp8", timeout=60)
    assert result.returncode == 2 and "--precision: unknown ['fp8']" in result.stderr


def test_quick_run_prints_json_lines():
    result = run("--quick", "--device", "cpu", "--threads", "1", timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]  # JSON lines only
    for record in records:
        assert record.keys() >= REQUIRED, record
        assert record["benchmark"] == "captioning"
    by_metric: dict[str, list[dict]] = {}
    for record in records[:-1]:
        by_metric.setdefault(record["metric"], []).append(record)
    for metric, unit in (("train_captions_per_s", "captions/s"),
                         ("beam_images_per_s", "images/s")):
        rates = by_metric[metric]
        assert sorted(r["impl"] for r in rates) == ["plain", "rlgen"]
        for r in rates:
            assert r["unit"] == unit and r["value"] > 0 and r["precision"] == "32"
            assert r["encoder"] == "mnist_deep" and r["image_size"] == 32
            assert r["params"] > 0  # the same for both: the script asserts it
        mode = metric.split("_")[0]
        (ratio,) = by_metric[f"{mode}_rlgen_over_plain"]
        expected = ratio["rlgen_per_s"] / ratio["plain_per_s"]
        assert abs(ratio["value"] - expected) < 0.01 * expected + 1e-3
    summary = records[-1]
    assert summary["metric"] == "summary" and summary["value"] > 0
    assert set(summary["ratios"]) == {"train/32", "beam/32"}
    assert "| mnist_deep | train | 32 | captions/s |" in result.stderr  # the markdown table
