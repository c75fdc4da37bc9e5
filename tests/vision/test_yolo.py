"""YOLO v1: the loss on a hand-built target computed by hand, decoding of a planted output,
the detector contract on several backbones, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from rlgen.errors import InputError
from rlgen.registry import DETECTION_MODELS
from rlgen.vision.detection.yolo import YOLOv1, assign_targets, decode_predictions, yolo_loss


def planted_raw() -> torch.Tensor:
    """S=2, B=2, C=2 outputs for two images; only the first has non-zero values."""
    raw = torch.zeros(2, 2, 2, 5 * 2 + 2)
    raw[0, 0, 0, 0:5] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.8])   # box 0 of cell (0, 0)
    raw[0, 0, 0, 5:10] = torch.tensor([0.7, 0.4, 0.7, 0.5, 0.3])  # box 1 of cell (0, 0)
    raw[0, 0, 0, 10:] = torch.tensor([0.2, 0.6])                  # classes of cell (0, 0)
    raw[0, 1, 1, 4] = 0.4                                         # a confident empty cell
    raw[0, 1, 1, 10:] = torch.tensor([0.5, 0.5])                  # its classes: not penalised
    return raw


# One object of class 1: pixels (8, 8)-(40, 24) in a 64x64 image, so relative to the image
# centre (0.375, 0.25), size 0.5 x 0.25: grid cell (row 0, column 0) of the 2x2 grid, offsets
# x = 0.375 * 2 - 0 = 0.75, y = 0.25 * 2 - 0 = 0.5, sqrt w = sqrt(0.5), sqrt h = 0.5.
TARGETS = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 24.0]]), "labels": torch.tensor([1])},
           {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


def by_hand(rescore: bool = True) -> dict[str, float]:
    truth = (0.125, 0.125, 0.625, 0.375)  # xyxy relative to the image

    def iou(cx, cy, w, h):
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        iw = min(box[2], truth[2]) - max(box[0], truth[0])
        ih = min(box[3], truth[3]) - max(box[1], truth[1])
        inter = max(iw, 0) * max(ih, 0)
        return inter / (w * h + 0.5 * 0.25 - inter)

    # Box 0: centre ((0 + 0.5) / 2, (0 + 0.5) / 2), size 0.5^2 x 0.5^2 -> IoU 0.5.
    iou0 = iou(0.25, 0.25, 0.25, 0.25)
    # Box 1: centre (0.7 / 2, 0.4 / 2), size 0.7^2 x 0.5^2 -> IoU 0.612: responsible.
    iou1 = iou(0.35, 0.2, 0.49, 0.25)
    assert iou0 == pytest.approx(0.5) and iou1 > iou0
    coord = (0.7 - 0.75) ** 2 + (0.4 - 0.5) ** 2 + (0.7 - math.sqrt(0.5)) ** 2 + (0.5 - 0.5) ** 2
    obj = (0.3 - (iou1 if rescore else 1.0)) ** 2
    noobj = 0.8 ** 2 + 0.4 ** 2  # box 0 of the object's cell + the confident empty cell
    cls = (0.2 - 0) ** 2 + (0.6 - 1) ** 2
    n = 2  # sums are divided by the number of images
    out = {"coord": coord / n, "obj": obj / n, "noobj": noobj / n, "class": cls / n}
    out["loss"] = 5 * out["coord"] + out["obj"] + 0.5 * out["noobj"] + out["class"]
    return out


@pytest.mark.parametrize("rescore", [True, False])
def test_loss_on_a_hand_built_target(rescore):
    losses = yolo_loss(planted_raw(), TARGETS, (64, 64), 2, 2, rescore=rescore)
    for key, value in by_hand(rescore).items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5), key
    assert losses["loss"].item() == pytest.approx(
        5 * losses["coord"].item() + losses["obj"].item() + 0.5 * losses["noobj"].item()
        + losses["class"].item(), rel=1e-6)


def test_loss_gradient_reaches_only_the_terms_of_the_paper():
    raw = planted_raw().requires_grad_(True)
    yolo_loss(raw, TARGETS, (64, 64), 2, 2)["loss"].backward()
    grad = raw.grad
    # Non-responsible box 0 of the object's cell: only its confidence (noobj) has a gradient.
    assert grad[0, 0, 0, :4].abs().sum() == 0 and grad[0, 0, 0, 4] == pytest.approx(
        0.5 * 2 * 0.8 / 2)
    # The empty cell's class outputs get none; its confidence gets lambda_noobj's.
    assert grad[0, 1, 1, 10:].abs().sum() == 0
    assert grad[0, 1, 1, 4] == pytest.approx(0.5 * 2 * 0.4 / 2)
    assert grad[1].abs().sum() == 0  # an image with no object and zero outputs: no loss


def test_one_object_per_cell_the_largest_wins_and_centres_choose_cells():
    targets = [{"boxes": torch.tensor([[0.0, 0, 30, 30], [10, 10, 20, 20], [40, 40, 64, 60]]),
                "labels": torch.tensor([0, 1, 2])}]
    assigned = assign_targets(targets, 2, (64, 64))
    assert assigned["has_object"][0].tolist() == [[True, False], [False, True]]
    assert assigned["label"][0].tolist() == [[0, -1], [-1, 2]]
    # the (40, 40)-(64, 60) box: centre (52, 50) -> cell (1, 1), offsets 52/32 - 1, 50/32 - 1
    torch.testing.assert_close(assigned["box"][0, 1, 1], torch.tensor(
        [52 / 32 - 1, 50 / 32 - 1, math.sqrt(24 / 64), math.sqrt(20 / 64)]))
    # A centre on the image's far edge stays in the last cell.
    edge = assign_targets([{"boxes": torch.tensor([[60.0, 60, 64, 64]]),
                            "labels": torch.tensor([1])}], 2, (64, 64))
    assert edge["has_object"][0, 1, 1]


def test_decode_of_a_planted_output():
    raw = torch.zeros(1, 2, 2, 12)
    raw[0, 1, 0, 0:5] = torch.tensor([0.5, 0.5, 0.5, math.sqrt(0.5), 0.9])
    raw[0, 1, 0, 5:10] = torch.tensor([0.52, 0.5, 0.5, math.sqrt(0.5), 0.45])  # a duplicate
    raw[0, 1, 0, 10:] = torch.tensor([0.1, 0.8])
    raw[0, 0, 1, 0:5] = torch.tensor([0.2, 0.9, 1.0, 0.5, 1.2])  # conf clamped to 1
    raw[0, 0, 1, 10:] = torch.tensor([-0.3, 1.1])  # class outputs clamped to [0, 1]
    found = decode_predictions(raw, (64, 96), 2, 2)[0]
    # Cell (row 1, col 0), box 0: centre ((0 + 0.5) / 2 * 96, (1 + 0.5) / 2 * 64) = (24, 48),
    # size (0.25 * 96, 0.5 * 64) = (24, 32). Cell (0, 1): centre (57.6, 28.8), size 96 x 16,
    # clipped to the 96-pixel width.
    expected = torch.tensor([[9.6, 20.8, 96.0, 36.8], [12, 32, 36, 64], [12, 32, 36, 64]])
    torch.testing.assert_close(found["boxes"], expected)
    torch.testing.assert_close(found["scores"], torch.tensor([1.0, 0.72, 0.09]))
    assert found["labels"].tolist() == [1, 1, 0]  # the duplicate (0.36, class 1) suppressed;
    # its class-0 score 0.045 is under the 0.05 threshold
    top = decode_predictions(raw, (64, 96), 2, 2, score_threshold=0.5, max_detections=1)[0]
    assert top["labels"].tolist() == [1] and top["scores"].tolist() == [1.0]


@pytest.mark.parametrize("backbone,options", [
    ("lenet5", {}),
    ("resnet18", {"head": "paper", "head_channels": 16, "hidden": 32}),
    ("vgg11", {"grid": 4, "boxes_per_cell": 3, "head_channels": 16}),
])
def test_contract_on_several_backbones(backbone, options):
    torch.manual_seed(0)
    model = DETECTION_MODELS.create("yolov1", num_classes=3, in_channels=2, backbone=backbone,
                                    image_size=(64, 64), **options)
    grid, b = options.get("grid", 7), options.get("boxes_per_cell", 2)
    images = torch.rand(2, 2, 64, 64)
    assert model.raw_outputs(images).shape == (2, grid, grid, 5 * b + 3)
    targets = [{"boxes": torch.tensor([[4.0, 6, 30, 40]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    assert set(losses) == {"coord", "obj", "noobj", "class", "loss"}
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    model.eval()
    model.score_threshold = 0.0
    found = model(images)
    assert len(found) == 2
    for d in found:
        k = len(d["scores"])
        assert 0 < k <= 100 and d["boxes"].shape == (k, 4) and d["labels"].dtype == torch.int64
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"][:, 0::2] <= 64).all()
        assert d["labels"].max() < 3


def test_autocast_keeps_the_loss_in_float32():
    model = YOLOv1(2, 3, "lenet5", 32, grid=4, head_channels=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(torch.rand(2, 3, 32, 32), TARGETS)
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])


def test_errors_name_the_model_and_what_is_expected():
    model = YOLOv1(2, 3, "lenet5", 32, grid=4, head_channels=8)
    good = [{"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([1])}]
    with pytest.raises(InputError, match=r"yolov1: images must be .*\(N, 3, H, W\)"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(InputError, match="built for 3 input channels"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(InputError, match=r"boxes must be \(N, 4\)"):
        model(torch.rand(1, 3, 32, 32), [{"boxes": torch.zeros(1, 3),
                                          "labels": torch.tensor([0])}])
    with pytest.raises(InputError, match=r"labels \[2\] are outside 0..1"):
        model(torch.rand(1, 3, 32, 32), [{**good[0], "labels": torch.tensor([2])}])
    with pytest.raises(InputError, match="list of 2 dicts"):
        model(torch.rand(2, 3, 32, 32), good)
    paper = YOLOv1(2, 3, "lenet5", 32, grid=2, head="paper", head_channels=8, hidden=8)
    with pytest.raises(InputError, match="takes 32x32 images"):
        paper(torch.rand(1, 3, 48, 48))
    with pytest.raises(ValueError, match="head must be one of conv, paper"):
        YOLOv1(2, 3, "lenet5", head="fc")
    with pytest.raises(ValueError, match="grid must be an integer >= 1"):
        YOLOv1(2, 3, "lenet5", grid=0)
    with pytest.raises(KeyError, match="unknown backbone"):
        YOLOv1(2, 3, "lenet6")
