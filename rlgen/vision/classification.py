"""Image classification: any registered model (``create_model``) trained with cross-entropy on
any registered dataset, through the shared training run (precision, TensorBoard, resume,
torchrun come from there).

Inputs are standardised with the training split's mean and standard deviation (one scalar
each, stored in the checkpoint's ``meta`` with the model's name, classes and channels), the
optimizer is Adam, and the run ends with the held-out split's accuracy and loss. This is the
one way the project trains a classifier: the FID feature network of
``rlgen.generative.metrics`` is trained by ``train`` below.

    rlgen train classifier --model mnist_conv2_relu --dataset mnist-subset --epochs 10
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.registry import TRAINERS
from rlgen.training import TrainConfig, TrainingRun, check, total_steps


@dataclass
class ClassifierConfig(TrainConfig):
    """Train an image classifier (any registered model) with cross-entropy and Adam."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *TrainConfig.fixed_on_resume, "model", "dataset", "image_size")

    model: str = "mnist_conv2_relu"
    """registered model name (see `rlgen list models`), a user's plugin too"""
    dataset: str = "mnist"
    """dataset name (mnist, fashion-mnist, cifar10, folder, mnist-subset, shapes)"""
    data_root: str = "data"
    """directory holding the dataset files (for `folder`: the image folder)"""
    download: bool = False
    """download the dataset if it is missing"""
    image_size: int | None = None
    """resize images to this square size (None: the dataset's native size)"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    eval_batch_size: int = 512
    """images per forward pass in the held-out evaluation"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate),
              f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        check(self.eval_batch_size > 0,
              f"--eval-batch-size must be > 0, got {self.eval_batch_size}")
        check(bool(self.model), "--model must name a registered model")


class Standardize(nn.Module):
    """``(x - mean) / std`` with the training split's scalar statistics."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def pixel_statistics(images: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """Mean and standard deviation of all pixels of uint8 ``images`` in [0, 1] units, summed in
    float64 chunk by chunk (CIFAR-10's 150M pixels never exist as one float tensor)."""
    total = total_sq = 0.0
    for part in images.split(chunk):
        x = part.double().div_(255.0)
        total += float(x.sum())
        total_sq += float(x.square().sum())
    n = images.numel()
    mean = total / n
    variance = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return mean, math.sqrt(variance) or 1.0


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      standardize: Standardize, batch_size: int = 512) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` (eval mode) on uint8 or [0, 1] images."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size]
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            y = labels[start:start + batch_size]
            logits = model(standardize(x)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train(was_training)
    n = max(images.shape[0], 1)
    return {"eval/accuracy": correct / n, "eval/loss": loss_sum / n}


def train(config: ClassifierConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train ``config.model`` on the training split; returns the held-out accuracy and loss
    (``eval/accuracy``, ``eval/loss``) with the run directory and the last checkpoint."""
    from rlgen.data import load_dataset
    from rlgen.data.batches import TensorBatches
    from rlgen.runtime import Precision
    from rlgen.vision.backbones import create_model

    with TrainingRun("classifier", config, progress=progress) as run:
        config = run.config  # with --resume: the saved config and the flags given now
        kwargs = dict(root=config.data_root, download=config.download,
                      image_size=config.image_size)
        train_set = load_dataset(config.dataset, train=True, **kwargs)
        heldout = load_dataset(config.dataset, train=False, **kwargs)
        standardize = Standardize(*pixel_statistics(train_set.images))
        model = create_model(config.model, num_classes=train_set.num_classes,
                             in_channels=train_set.channels).to(run.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        precision = Precision(config.precision, run.device)
        data = TensorBatches(train_set.images, train_set.labels, config.batch_size,
                             **run.shard_args())

        run.start(total_steps(config, data.steps_per_epoch),
                  {"model": model, "optimizer": optimizer, "precision": precision},
                  meta={"model": config.model, "num_classes": train_set.num_classes,
                        "in_channels": train_set.channels, "classes": list(train_set.classes),
                        "mean": standardize.mean, "std": standardize.std},
                  items_per_step=data.batch_size)
        net = run.prepare(model)
        step = run.start_step
        for step, (x, y) in run.steps(data):
            with precision.autocast():
                logits = net(standardize(x))
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer)

            if run.due(step, config.log_every):
                accuracy = (logits.argmax(1) == y).float().mean()
                run.log(step, {"train/loss": loss, "train/accuracy": accuracy,
                               "train/skipped_steps": precision.skipped_steps},
                        show=("train/loss", "train/accuracy"))

        metrics = evaluate_accuracy(model, heldout.images.to(run.device),
                                    heldout.labels.to(run.device), standardize,
                                    config.eval_batch_size)
        metrics["eval/num_images"] = float(heldout.images.shape[0])
        run.log(step, metrics)
        return run.finish(step, metrics)


@TRAINERS.register("classifier", description="Image classifier: any registered model, "
                                              "cross-entropy, Adam")
def classifier_trainer():
    from rlgen.cli_spec import TrainerSpec

    return TrainerSpec(config=ClassifierConfig, train=train)
