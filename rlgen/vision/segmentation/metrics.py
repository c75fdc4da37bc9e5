"""Semantic-segmentation losses and figures, computed from one confusion matrix.

The figures follow the FCN paper's evaluation (Long et al. 2015, section 5; the reference
``label_accuracy_score`` of its code), which the VOC and CamVid literature reports:

- ``pixel_accuracy`` = sum_i n_ii / sum_i t_i
- ``mean_class_accuracy`` = mean_i n_ii / t_i
- ``iou[i]`` = n_ii / (t_i + sum_j n_ji - n_ii), ``mean_iou`` its mean
- ``frequency_weighted_iou`` = sum_i t_i iou[i] / sum_i t_i

with ``n_ij`` the pixels of true class ``i`` predicted ``j`` and ``t_i = sum_j n_ij``. A class
that is absent from both the truth and the predictions has no IoU (NaN) and is left out of the
means (NumPy's ``nanmean``, as the reference code does); pixels whose truth is
``ignore_index`` (VOC's 255 borders) count nowhere. Accumulate one matrix over the whole
evaluation set (``confusion_matrix`` on each batch, summed) rather than averaging per-image
figures: that is how the published numbers are computed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """``(K, K)`` int64 counts on ``pred``'s device: row = true class, column = predicted.

    ``pred``: class indices ``(N, H, W)`` (or logits ``(N, K, H, W)``, reduced by argmax);
    ``target``: ``(N, H, W)`` class indices, with ``ignore_index`` marking pixels to skip.
    """
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} "
                         f"must have the same shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).to(pred.device).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target classes must be in [0, {num_classes}) (or the ignore index "
                         f"{ignore_index}), found {int(target.min())}..{int(target.max())}")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predicted classes must be in [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float | list[float]]:
    """``pixel_accuracy``, ``mean_class_accuracy``, ``mean_iou``, ``frequency_weighted_iou``
    and the per-class ``class_accuracy`` / ``iou`` lists (NaN for a class with no pixels in the
    truth, resp. in truth and predictions) of a confusion matrix."""
    n = confusion.double().cpu()
    diagonal, truth, predicted = n.diagonal(), n.sum(1), n.sum(0)
    total = truth.sum()
    with torch.no_grad():
        class_accuracy = diagonal / truth  # 0/0 -> NaN: the class is absent from the truth
        iou = diagonal / (truth + predicted - diagonal)
    frequency = truth / total if total > 0 else truth
    present = frequency > 0
    return {
        "pixel_accuracy": float(diagonal.sum() / total) if total > 0 else math.nan,
        "mean_class_accuracy": _nanmean(class_accuracy),
        "mean_iou": _nanmean(iou),
        "frequency_weighted_iou": float((frequency[present] * iou[present]).sum())
        if present.any() else math.nan,
        "class_accuracy": class_accuracy.tolist(),
        "iou": iou.tolist(),
    }


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None,
              eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss: ``1 - mean_k (2 sum p_k t_k + eps) / (sum p_k + sum t_k +
    eps)`` over the classes present in the batch's truth, with ``p = softmax(logits)`` and ``t``
    the one-hot truth, ignored pixels left out of every sum (Milletari et al. 2016, V-Net,
    extended to several classes as segmentation_models_pytorch's multiclass mode does)."""
    num_classes = logits.shape[1]
    probabilities = torch.softmax(logits.float(), dim=1)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None \
        else target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    one_hot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).float()
    mask = valid[:, None].float()
    probabilities, one_hot = probabilities * mask, one_hot * mask
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    sizes = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + eps) / (sizes + eps)
    present = one_hot.sum(dims) > 0
    if not present.any():
        return logits.sum() * 0.0
    return 1.0 - dice[present].mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce",
                      class_weights: torch.Tensor | None = None,
                      ignore_index: int | None = 255) -> torch.Tensor:
    """``ce`` (cross-entropy with optional class weights, ignored pixels skipped), ``dice``, or
    ``ce+dice`` (their sum)."""
    if kind not in ("ce", "dice", "ce+dice"):
        raise ValueError(f"--loss must be ce, dice or ce+dice, got {kind!r}")
    loss = logits.new_zeros(())
    if kind in ("ce", "ce+dice"):
        loss = loss + F.cross_entropy(logits.float(), target.long(), weight=class_weights,
                                      ignore_index=-100 if ignore_index is None else ignore_index)
    if kind in ("dice", "ce+dice"):
        loss = loss + dice_loss(logits, target, ignore_index)
    return loss


def median_frequency_weights(masks: torch.Tensor, num_classes: int,
                             ignore_index: int | None = 255) -> torch.Tensor:
    """SegNet's median frequency balancing (Eigen & Fergus 2015): class weight = median of the
    class frequencies / the class's frequency, where a class's frequency is its pixel count
    over the pixels of the images it appears in. Absent classes get weight 0."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for mask in masks:
        flat = mask.reshape(-1).long()
        if ignore_index is not None:
            flat = flat[flat != ignore_index]
        per_class = torch.bincount(flat, minlength=num_classes).double()[:num_classes]
        counts += per_class
        image_pixels += (per_class > 0).double() * flat.numel()
    frequency = torch.where(image_pixels > 0, counts / image_pixels.clamp_min(1),
                            torch.zeros_like(counts))
    # the median as NumPy takes it (the mean of the two middle values for an even count)
    median = frequency[frequency > 0].quantile(0.5) if (frequency > 0).any() else 1.0
    return torch.where(frequency > 0, median / frequency.clamp_min(1e-12),
                       torch.zeros_like(frequency)).float()
