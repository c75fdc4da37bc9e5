"""The segmentation trainer on the generated shapes: each family (FCN, SegNet, U-Net) lifts the
mean IoU well above predicting background everywhere; eval prints the figures, predict writes
the overlay."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlgen.checkpoint import load_checkpoint
from rlgen.registry import BACKBONES
from rlgen.vision.backbones.vgg import VGGBackbone
from rlgen.vision.segmentation import confusion_matrix, segmentation_scores
from rlgen.vision.segmentation.train import SegmentationConfig, train

SLIM = [8, "M", 16, "M", 16, "M", 32, "M", 32, "M"]  # VGG's five blocks, narrow: CPU-sized


@pytest.fixture(scope="module", autouse=True)
def slim_vgg_bn():
    """A narrow VGG-BN trunk registered as a user would (FCN and SegNet take any VGG trunk)."""
    BACKBONES.register("vgg_slim_bn")(lambda in_channels=3: VGGBackbone(SLIM, True,
                                                                        in_channels))
    yield
    BACKBONES.unregister("vgg_slim_bn")


def background_only_scores() -> dict:
    """The trivial baseline: background predicted everywhere on the test split."""
    from rlgen.data import load_dataset

    test = load_dataset("seg-shapes", train=False, image_size=32)
    return segmentation_scores(confusion_matrix(torch.zeros_like(test.masks), test.masks,
                                                test.num_classes, test.ignore_index))


# The generated shapes are hard by design (textured fills and backgrounds, shapes 4-10 pixels
# across at 32x32), so a short CPU run learns to separate background from shapes and to find
# circles, not yet to tell squares, triangles and ellipses apart. Measured (test split, seed 0):
# background everywhere: mIoU 0.160, background IoU 0.80; unet 300 steps: mIoU 0.25, background
# IoU 0.94, circle 0.31; segnet 300 steps: 0.22 / 0.87 / 0.24; fcn8s (VGG's 100-pixel margin
# makes it the slowest here; on the batch-normed trunk, plain VGG gained only +0.03 in 150 steps)
# 200 steps: 0.208 / 0.856 / best shape 0.17 (150 steps: 0.201, 250: 0.233).
FAMILIES = {
    "unet": (dict(model="unet", width=8, max_steps=300), 0.05, 0.90, 0.20),
    "segnet": (dict(model="segnet", encoder="vgg_slim_bn", max_steps=300), 0.04, 0.84, 0.15),
    "fcn8s": (dict(model="fcn8s", encoder="vgg_slim_bn", width=64, max_steps=200), 0.03, 0.82,
              0.10),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_beats_predicting_background(tmp_path, family):
    settings, miou_margin, background_iou, best_shape_iou = FAMILIES[family]
    baseline = background_only_scores()
    result = train(SegmentationConfig(
        dataset="seg-shapes", image_size=32, batch_size=16, epochs=5, learning_rate=3e-3,
        log_every=100, checkpoint_every=0, val_fraction=0.0, device="cpu",
        run_dir=str(tmp_path / family), **settings), progress=False)
    iou = result["test/iou"]
    assert result["test/mean_iou"] > baseline["mean_iou"] + miou_margin, (family, iou)
    assert iou[0] > max(background_iou, baseline["iou"][0] - 0.05), (family, iou)
    assert max(iou[1:]) > best_shape_iou, (family, iou)  # the baseline finds no shape at all
    state = load_checkpoint(result["checkpoint"])
    assert state["meta"]["classes"][0] == "background" and state["task"] == "segmentation"


def test_eval_and_predict_commands(tmp_path, capsys):
    from rlgen.cli import main
    from rlgen.data import load_dataset
    from rlgen.data.images import save_image

    train(SegmentationConfig(dataset="seg-shapes", image_size=32, batch_size=16, max_steps=30,
                             model="unet", width=8, checkpoint_every=0, device="cpu",
                             val_fraction=0.2, run_dir=str(tmp_path / "run")), progress=False)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    capsys.readouterr()
    assert main(["eval", "segmentation", "--checkpoint", str(tmp_path / "run"),
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert {"pixel_accuracy", "mean_class_accuracy", "mean_iou",
            "frequency_weighted_iou"} <= set(result)
    assert lines[0].split() == ["class", "IoU", "accuracy"]
    assert [line.split()[0] for line in lines[1:6]] == list(result["per_class_iou"])
    image = load_dataset("seg-shapes", train=False, image_size=32).images[0]
    path = save_image(image.float() / 255, tmp_path / "shapes.png")
    out = tmp_path / "overlay.png"
    assert main(["predict", "segmentation", "--checkpoint", str(tmp_path / "run"), "--image",
                 str(path), "--out", str(out), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(printed["out"]) == out and out.is_file()
    assert sum(printed["class_fractions"].values()) == pytest.approx(1.0, abs=1e-3)
    from PIL import Image

    with Image.open(out) as picture:
        assert picture.size[0] > 32 and picture.size[1] >= 32  # the image plus its legend


def test_width_applies_only_where_it_means_something():
    from rlgen.errors import InputError
    from rlgen.vision.segmentation.train import build_model

    with pytest.raises(InputError, match="--width applies to fcn"):
        build_model(SegmentationConfig(model="segnet", width=8), 3, 3)


def test_tensorboard_shows_image_truth_prediction_triplets(tmp_path):
    """The logged picture holds, row by row, the first validation images, their true masks and
    the masks the model predicted at that step (the run's last, so its final checkpoint)."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlgen.data import load_dataset
    from rlgen.vision.classification import Standardize, split_validation
    from rlgen.vision.pictures import colorize
    from rlgen.vision.segmentation.train import load_segmenter, predict_masks

    result = train(SegmentationConfig(
        dataset="seg-shapes", image_size=32, batch_size=8, max_steps=6, model="unet", width=4,
        sample_every=1000, log_every=1000, checkpoint_every=0, val_fraction=0.2, device="cpu",
        run_dir=str(tmp_path / "run")), progress=False)
    logged = []
    for events in (tmp_path / "run").rglob("events.out.tfevents.*"):  # + the hparams' file
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        if "samples/image_truth_prediction" in accumulator.Tags()["images"]:
            logged += accumulator.Images("samples/image_truth_prediction")
    (logged,) = logged
    assert logged.step == 6
    with Image.open(io.BytesIO(logged.encoded_image_string)) as png:
        sheet = torch.from_numpy(np.asarray(png.convert("RGB")).copy()).permute(2, 0, 1)
    assert sheet.shape == (3, 4 * 32 + 3 * 4, 3 * 32 + 2 * 4)

    train_set = load_dataset("seg-shapes", train=True, image_size=32)
    _, (val_x, val_y) = split_validation(train_set.images, train_set.masks, 0.2, 0)
    model, meta = load_segmenter(result["checkpoint"])
    predicted = predict_masks(model, val_x[:4], Standardize(meta["mean"], meta["std"]))
    for row in range(4):
        panel = sheet[:, row * 36:row * 36 + 32]
        assert torch.equal(panel[:, :, :32], val_x[row])
        assert torch.equal(panel[:, :, 36:68], colorize(val_y[row], train_set.palette))
        assert torch.equal(panel[:, :, 72:104], colorize(predicted[row], train_set.palette))


def test_encoder_weights_load_whole_or_not_at_all(tmp_path):
    """--encoder-weights: a classifier of the encoder's architecture fills every encoder
    tensor (its head left out); one of another architecture (no batch norm) is refused by
    name, not loaded in part."""
    from rlgen.vision.backbones.vgg import VGG
    from rlgen.vision.backbones.weights import WeightsError
    from rlgen.vision.segmentation.train import build_model

    torch.manual_seed(0)
    classifier = VGG(SLIM, batch_norm=True, num_classes=5)
    torch.save(classifier.state_dict(), tmp_path / "vgg_slim_bn.pth")
    torch.save(VGG(SLIM, batch_norm=False, num_classes=5).state_dict(), tmp_path / "plain.pth")
    config = SegmentationConfig(model="segnet", encoder="vgg_slim_bn",
                                encoder_weights=str(tmp_path / "vgg_slim_bn.pth"))
    model = build_model(config, 3, 3)
    loaded = model.encoder.state_dict()
    for key, value in classifier.features.state_dict().items():
        assert torch.equal(loaded[f"features.{key}"], value), key
    config.encoder_weights = str(tmp_path / "plain.pth")
    with pytest.raises(WeightsError, match="does not fit the segnet encoder 'vgg_slim_bn'.*"
                                           "features.1.running_mean"):
        build_model(config, 3, 3)


def test_dataset_shapes_is_short_for_seg_shapes():
    """The issue's `--dataset shapes` (the registry's `shapes` is the classification set)."""
    from rlgen.cli import parse_config
    from rlgen.vision.segmentation.train import SegmentationEvalConfig

    config = parse_config(SegmentationConfig, ["--dataset", "shapes"], "rlgen train segmentation")
    assert config.dataset == "seg-shapes"
    assert SegmentationEvalConfig(checkpoint="run", dataset="shapes").dataset == "seg-shapes"
    assert SegmentationConfig(dataset="voc").dataset == "voc"
