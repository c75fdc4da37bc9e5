"""Segmentation figures from one confusion matrix (the FCN paper's definitions), checked by hand
and against a per-pixel loop; the losses and the class weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlgen.vision.segmentation.metrics import (
    confusion_matrix,
    dice_loss,
    median_frequency_weights,
    segmentation_loss,
    segmentation_scores,
)


def test_a_hand_computed_example_with_an_ignore_index():
    # 3 classes; the 255 pixel counts nowhere
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    matrix = confusion_matrix(pred, target, 3, ignore_index=255)
    assert matrix.tolist() == [[1, 1, 0],   # true 0: one right, one called 1
                               [0, 2, 0],   # true 1: both right
                               [0, 1, 0]]   # true 2: called 1
    scores = segmentation_scores(matrix)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)
    assert scores["class_accuracy"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert scores["mean_class_accuracy"] == pytest.approx(0.5)
    # IoU: class 0: 1 / (2 + 1 - 1); class 1: 2 / (2 + 4 - 2); class 2: 0 / (1 + 0 - 0)
    assert scores["iou"] == pytest.approx([0.5, 0.5, 0.0])
    assert scores["mean_iou"] == pytest.approx(1 / 3)
    assert scores["frequency_weighted_iou"] == pytest.approx((2 * 0.5 + 2 * 0.5 + 1 * 0) / 5)


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_the_means():
    target = torch.tensor([[0, 1], [1, 0]])
    pred = torch.tensor([[0, 1], [0, 0]])
    scores = segmentation_scores(confusion_matrix(pred[None], target[None], 4))
    assert math.isnan(scores["iou"][2]) and math.isnan(scores["iou"][3])
    assert scores["mean_iou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def _reference_scores(pred: np.ndarray, target: np.ndarray, k: int, ignore: int):
    """The definitions written out pixel by pixel."""
    pairs = [(t, p) for t, p in zip(target.ravel(), pred.ravel()) if t != ignore]
    n = np.zeros((k, k))
    for t, p in pairs:
        n[t, p] += 1
    ious, accs = [], []
    for i in range(k):
        union = n[i].sum() + n[:, i].sum() - n[i, i]
        ious.append(n[i, i] / union if union else np.nan)
        accs.append(n[i, i] / n[i].sum() if n[i].sum() else np.nan)
    freq = n.sum(1) / n.sum()
    return {"pixel_accuracy": np.trace(n) / n.sum(), "mean_iou": np.nanmean(ious),
            "mean_class_accuracy": np.nanmean(accs),
            "frequency_weighted_iou": sum(f * iou for f, iou in zip(freq, ious) if f > 0)}


@pytest.mark.parametrize("seed", range(4))
def test_random_maps_match_the_definitions_and_accumulate_over_batches(seed):
    g = torch.Generator().manual_seed(seed)
    k = 5
    target = torch.randint(0, k, (3, 7, 9), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=k - 1),
                       torch.randint(0, k, target.shape, generator=g))
    logits = torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float()
    whole = confusion_matrix(logits, target, k, ignore_index=255)  # logits are reduced too
    summed = sum(confusion_matrix(pred[i:i + 1], target[i:i + 1], k, 255) for i in range(3))
    assert torch.equal(whole, summed)
    got = segmentation_scores(whole)
    want = _reference_scores(pred.numpy(), target.numpy(), k, 255)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), 2)
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 2\)"):
        confusion_matrix(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 5), 2)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_ignores_ignored_pixels():
    target = torch.tensor([[[0, 1], [2, 255]]])
    perfect = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2) * 50.0
    assert dice_loss(perfect, target, ignore_index=255).item() == pytest.approx(0.0, abs=1e-3)
    wrong_at_ignored = perfect.clone()
    wrong_at_ignored[0, :, 1, 1] = torch.tensor([50.0, -50.0, -50.0])
    assert dice_loss(wrong_at_ignored, target, 255).item() == pytest.approx(0.0, abs=1e-3)
    uniform = torch.zeros(1, 3, 2, 2)  # p = 1/3 everywhere: dice_k = (2/3 + 1)/(4/3 + 1)
    expected = 1 - (2 / 3 + 1) / (1 + 1 + 1)
    assert dice_loss(uniform, target, 255).item() == pytest.approx(expected, abs=1e-6)


def test_cross_entropy_uses_class_weights_and_skips_ignored_pixels():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = 255
    weights = torch.tensor([1.0, 2.0, 0.5])
    loss = segmentation_loss(logits, target, "ce", weights, 255)
    keep = target != 255
    log_p = torch.log_softmax(logits, 1).permute(0, 2, 3, 1)[keep]
    t = target[keep]
    w = weights[t]
    assert loss.item() == pytest.approx((-(log_p[torch.arange(len(t)), t] * w).sum()
                                         / w.sum()).item(), rel=1e-5)
    both = segmentation_loss(logits, target, "ce+dice", None, 255)
    assert both.item() == pytest.approx(segmentation_loss(logits, target, "ce", None, 255).item()
                                        + dice_loss(logits, target, 255).item(), rel=1e-5)


def test_median_frequency_weights():
    # class 0: 6 of 8 pixels in the 2 images it appears in; class 1: 2 of 4 pixels in 1 image
    w = median_frequency_weights(torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 0]]]), 3)
    freq0, freq1 = 6 / 8, 2 / 4
    median = np.median([freq0, freq1])
    assert w.tolist() == pytest.approx([median / freq0, median / freq1, 0.0])
