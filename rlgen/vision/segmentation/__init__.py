"""Semantic segmentation: FCN-32s/16s/8s, SegNet and U-Net on the shared backbones
(``models.py``), losses and the confusion-matrix figures (``metrics.py``), and the trainer
with its eval / predict commands (``train.py``).

    from rlgen.vision.segmentation import confusion_matrix, segmentation_scores
    matrix = confusion_matrix(pred, target, num_classes=21, ignore_index=255)  # summed over batches
    scores = segmentation_scores(matrix)   # pixel_accuracy, mean_iou, iou (per class), ...
"""

from rlgen.vision.segmentation.metrics import (
    confusion_matrix,
    dice_loss,
    median_frequency_weights,
    segmentation_loss,
    segmentation_scores,
)

__all__ = [
    "build_segmentation_model",
    "confusion_matrix",
    "dice_loss",
    "median_frequency_weights",
    "segmentation_loss",
    "segmentation_scores",
]


def __getattr__(name: str):
    # The models (VGG-16 sized) load on first use, so the metrics import stays light.
    if name in ("build_segmentation_model", "SEGMENTATION_MODELS"):
        from rlgen.vision.segmentation import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
