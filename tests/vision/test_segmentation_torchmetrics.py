"""rlgen's segmentation figures against torchmetrics' (in the ``dev`` extra, so CI runs this;
it fails, never skips, without torchmetrics).

Measured with torchmetrics 1.9.0: ``mean_iou`` equals ``MulticlassJaccardIndex(average=
"macro")`` (a class absent from both truth and predictions is left out of the mean, as here),
``frequency_weighted_iou`` its ``average="weighted"`` (weights: each class's pixels in the
truth), ``iou`` its ``average="none"`` where a class occurs, ``pixel_accuracy``
``MulticlassAccuracy(average="micro")`` and ``mean_class_accuracy`` its ``average="macro"``,
all with ``ignore_index=255``, accumulated over batches.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlgen.vision.segmentation import confusion_matrix, segmentation_scores


def test_torchmetrics_is_installed():
    import torchmetrics  # noqa: F401


@pytest.mark.parametrize("seed", range(3))
def test_figures_equal_torchmetrics(seed):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    k = 6
    g = torch.Generator().manual_seed(seed)
    metrics = {
        "mean_iou": MulticlassJaccardIndex(k, average="macro", ignore_index=255),
        "frequency_weighted_iou": MulticlassJaccardIndex(k, average="weighted",
                                                         ignore_index=255),
        "iou": MulticlassJaccardIndex(k, average="none", ignore_index=255),
        "pixel_accuracy": MulticlassAccuracy(k, average="micro", ignore_index=255),
        "mean_class_accuracy": MulticlassAccuracy(k, average="macro", ignore_index=255),
    }
    matrix = torch.zeros(k, k, dtype=torch.long)
    for _ in range(3):  # batches, one matrix
        target = torch.randint(0, k - 1, (2, 9, 11), generator=g)  # class k - 1 never occurs
        target[torch.rand(target.shape, generator=g) < 0.1] = 255
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.5, target.clamp(max=k - 2),
                           torch.randint(0, k - 1, target.shape, generator=g))
        matrix += confusion_matrix(pred, target, k, ignore_index=255)
        for metric in metrics.values():
            metric.update(pred, target)
    ours = segmentation_scores(matrix)
    for name, metric in metrics.items():
        theirs = metric.compute()
        if name == "iou":
            present = [i for i, v in enumerate(ours["iou"]) if not math.isnan(v)]
            assert present == list(range(k - 1))
            assert [ours["iou"][i] for i in present] == pytest.approx(theirs[present].tolist())
        else:
            assert ours[name] == pytest.approx(float(theirs), rel=1e-6), name
