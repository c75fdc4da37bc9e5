"""The detection trainer: YOLO v1 learns the generated shapes (its mAP@0.5 against the untrained
detector's, computed here), train -> eval -> predict through the CLI, exact resume, TensorBoard
pictures, and bad flags."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlgen.checkpoint import load_checkpoint
from rlgen.errors import InputError
from rlgen.vision.detection.train import (
    DetectionConfig,
    build_detector,
    evaluate_detector,
    load_split,
    train,
)

# Small enough to learn in well under a minute of CPU: 32x32 images with one or two shapes,
# mnist_deep narrowed to three blocks (8-16-32 maps, stride 8) and a 4x4 grid.
SMALL = dict(backbone="mnist_deep", backbone_options=("widths=(8,16,32)",),
             model_options=("grid=4", "head_channels=32"), image_size=32,
             dataset_options=("num_images=600", "max_objects=2"), batch_size=16,
             learning_rate=5e-3, warmup_steps=30, log_every=100, sample_every=0,
             checkpoint_every=0, device="cpu")


def test_yolo_learns_the_shapes_far_above_the_untrained_detector(tmp_path):
    """Measured (seed 0, 600 images a split): untrained mAP@0.5 0.000; after 300 steps 0.136
    (COCO mAP 0.042, VOC mAP@0.5 0.133), about 30 s on a loaded 2-core CPU."""
    config = DetectionConfig(max_steps=300, run_dir=str(tmp_path / "run"), **SMALL)
    test_set = load_split(config, train=False)
    torch.manual_seed(config.seed)
    untrained = build_detector("yolov1", 4, 3, "mnist_deep", (32, 32),
                               {"grid": 4, "head_channels": 32}, {"widths": (8, 16, 32)})
    baseline = evaluate_detector(untrained, test_set)
    result = train(config, progress=False)
    assert result["test/map_50"] > baseline["map_50"] + 0.08, (result, baseline["map_50"])
    assert result["test/voc_map_50"] > baseline["voc_map_50"] + 0.08
    assert result["test/map"] > baseline["map"]
    learned = [v["ap_50"] for v in result["test/per_class"].values()]
    assert sum(ap > 0.05 for ap in learned) >= 2, result["test/per_class"]
    state = load_checkpoint(result["checkpoint"])
    assert state["task"] == "detection" and state["meta"]["classes"] == [
        "circle", "square", "triangle", "ellipse"]


def test_train_eval_predict_commands(tmp_path, capsys):
    from PIL import Image

    from rlgen.cli import main
    from rlgen.data.images import save_image

    run = tmp_path / "run"
    assert main(["train", "detection", "--backbone", "mnist_deep", "--backbone-options",
                 "widths=(8,16)", "--model-options", "grid=4", "head_channels=8",
                 "--dataset", "det-shapes", "--dataset-options", "num_images=48",
                 "--image-size", "32", "--batch-size", "8", "--max-steps", "4",
                 "--optimizer", "sgd", "--learning-rate", "0.01", "--eval-every", "2",
                 "--scale", "1.0", "1.2", "--device", "cpu", "--run-dir", str(run)]) == 0
    assert (run / "checkpoints" / "best.pt").is_file()
    capsys.readouterr()
    assert main(["eval", "detection", "--checkpoint", str(run), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert {"map_50", "map", "voc_map_50", "per_class_ap_50", "per_class_ap"} <= set(result)
    assert result["images"] == 48 and result["split"] == "test"
    assert lines[0].split() == ["class", "AP@0.5", "AP@[.5:.95]"]
    assert [line.split()[0] for line in lines[1:5]] == list(result["per_class_ap_50"])
    assert all(-1 <= v <= 1 for v in result["per_class_ap_50"].values())

    test_set = load_split(DetectionConfig(dataset_options=("num_images=48",), image_size=32),
                          train=False)
    picture = torch.nn.functional.interpolate(test_set.images[:1].float(), size=(40, 56))
    path = save_image(picture / 255, tmp_path / "shapes.png")
    with Image.open(path) as source:
        width, height = source.size  # save_image's 2-pixel frame included
    out = tmp_path / "boxes.png"
    assert main(["predict", "detection", "--checkpoint", str(run), "--image", str(path),
                 "--out", str(out), "--score-threshold", "0", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(printed["out"]) == out and out.is_file()
    assert 0 < len(printed["detections"]) <= 100
    scores = [d["score"] for d in printed["detections"]]
    assert scores == sorted(scores, reverse=True)
    for d in printed["detections"]:  # boxes in the image's own pixels, not the 32x32 input's
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert d["label"] in ("circle", "square", "triangle", "ellipse")
    with Image.open(out) as drawn:
        scale = -(-256 // min(width, height))  # enlarged so the shorter side is >= 256
        assert drawn.size == (width * scale, height * scale)


def test_resumed_run_matches_the_uninterrupted_one(tmp_path):
    settings = dict(SMALL, dataset_options=("num_images=64",), model_options=(
        "grid=4", "head_channels=8"), backbone_options=("widths=(8,16)",), batch_size=8,
        scale=(0.8, 1.2), checkpoint_every=3, lr_schedule="constant")  # cosine follows
    # the run's length: a run extended on resume decays from there, unlike a longer one
    whole = train(DetectionConfig(max_steps=6, run_dir=str(tmp_path / "whole"), **settings),
                  progress=False)
    train(DetectionConfig(max_steps=3, run_dir=str(tmp_path / "part"), **settings),
          progress=False)
    resumed = train(DetectionConfig(max_steps=6, resume=str(tmp_path / "part"), **settings),
                    progress=False)
    a = load_checkpoint(whole["checkpoint"])["state"]["model"]
    b = load_checkpoint(resumed["checkpoint"])["state"]["model"]
    assert resumed["step"] == 6 and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed["test/map_50"] == whole["test/map_50"]


def test_tensorboard_shows_predictions_beside_the_truth(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(DetectionConfig(**dict(SMALL, dataset_options=("num_images=16",), sample_every=2,
                                 model_options=("grid=4", "head_channels=8"),
                                 backbone_options=("widths=(8,16)",), batch_size=8),
                          max_steps=2, run_dir=str(tmp_path / "run")), progress=False)
    logged = []
    for events in (tmp_path / "run").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        if "samples/predictions_truth" in accumulator.Tags()["images"]:
            logged += accumulator.Images("samples/predictions_truth")
    (logged,) = logged
    with Image.open(io.BytesIO(logged.encoded_image_string)) as png:
        sheet = np.asarray(png.convert("RGB"))
    # four rows of two 128x128 panels (32-pixel images enlarged 4x), 4-pixel gaps
    assert sheet.shape == (4 * 128 + 3 * 4, 2 * 128 + 4, 3)


@pytest.mark.parametrize("flags,message", [
    (dict(optimizer="adam"), "--optimizer must be sgd or adamw"),
    (dict(model="yolo"), "unknown detection-model 'yolo'"),
    (dict(model_options=("grid",)), "--model-options takes KEY=VALUE"),
    (dict(scale=(1.2, 1.0)), "--scale takes two numbers"),
    (dict(learning_rate=0.0), "--learning-rate must be"),
    (dict(warmup_steps=-1), "--warmup-steps must be >= 0"),
    (dict(eval_every=-2), "--eval-every must be >= 0"),
    (dict(image_size=8), "--image-size must be >= 16"),
])
def test_bad_flags_are_refused_with_the_reason(flags, message):
    with pytest.raises((InputError, KeyError), match=message):
        DetectionConfig(**flags)


def test_wrong_dataset_or_options_are_the_users_error(tmp_path):
    base = dict(SMALL, max_steps=1, run_dir=str(tmp_path / "x"))
    with pytest.raises(InputError, match="has no boxes"):
        train(DetectionConfig(**dict(base, dataset="seg-shapes", dataset_options=(
            "num_images=8",))), progress=False)
    with pytest.raises(InputError, match="--dataset-options colour=red is not accepted"):
        train(DetectionConfig(**dict(base, dataset_options=("colour=red",))), progress=False)
    with pytest.raises(InputError, match="--model-options .*not accepted by yolov1"):
        train(DetectionConfig(**dict(base, dataset_options=("num_images=8",),
                                     model_options=("anchors=3",))), progress=False)
    with pytest.raises(InputError, match="--backbone-options .*not accepted by mnist_deep"):
        train(DetectionConfig(**dict(base, dataset_options=("num_images=8",),
                                     backbone_options=("depth=3",))), progress=False)
