"""Image classification: any registered model (``create_model``, a user's plugin too) trained
with cross-entropy through the shared training run (precision, TensorBoard, resume, torchrun
come from there), then evaluated alone or as an ensemble.

- Optimisers: SGD (momentum, Nesterov), Adam, AdamW; weight decay (L2; decoupled for AdamW).
- Learning rate: constant, ``plateau`` (divided by 10, ``--lr-factor``, when the validation
  accuracy has not improved for ``--lr-patience`` epochs: the "divide by 10 when validation
  stops improving" of the classic texts) or ``cosine`` (to zero at the last step), after an
  optional linear warm-up of ``--warmup-epochs``.
- Initialisation: the model's own, ``he`` (Kaiming normal, ReLU gain), ``xavier`` (Glorot
  uniform) or ``normal`` (N(0, 0.01)), on every conv and linear weight, biases zero.
- Validation: ``--val-fraction`` of the training split carved off with the seed (never the test
  split); after each epoch its accuracy decides the best epoch (``checkpoints/best.pt``), the
  plateau schedule and ``--early-stopping``. The run ends with the *test* accuracy of the
  best-validation weights: the test split never chooses anything.
- Data: inputs standardised with the training split's mean and standard deviation (stored in the
  checkpoint's ``meta``); Nielsen's expansion (``--expand-shifts``: every training image plus
  its four one-pixel shifts, 5x the examples); random augmentation on the device, seeded per
  step (``--augment crop flip rotate``: CIFAR's pad-4 crop with ``--crop-padding 4``, AlexNet's
  224 crops of larger images with ``--crop-size 224`` (evaluated on the centre crop), small
  rotations of ``--rotate-degrees``).
- Transfer: ``--weights FILE|torchvision:NAME`` (the head is replaced when the class count
  differs), ``--freeze backbone|stages:N``.

Commands: ``rlgen train classifier``, ``rlgen eval classifier --checkpoint A [--checkpoint B
...]`` (each member's and the ensemble's accuracy, a confusion-matrix image and a grid of the
misclassified images, one JSON line) and ``rlgen predict classifier --checkpoint A --image
x.png`` (top-5 classes). This trainer also trains the FID feature network of
``rlgen.generative.metrics``.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.errors import InputError
from rlgen.registry import TRAINERS
from rlgen.training import TrainConfig, TrainingRun, check, total_steps


@dataclass
class ClassifierConfig(TrainConfig):
    """Train an image classifier (any registered model) with cross-entropy."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *TrainConfig.fixed_on_resume, "model", "dataset", "image_size", "val_fraction",
        "expand_shifts", "dropout", "crop_size")

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
    weights: str | None = None
    """start from these weights: a checkpoint file (rlgen's or torchvision's format) or
    torchvision:NAME (published ImageNet weights); the head is replaced if its class count
    differs"""
    new_head: bool = False
    """with --weights: a fresh output layer even when the class count matches (new classes,
    e.g. digits 5-9 after 0-4)"""
    freeze: str = "none"
    """train only part of the model: none, backbone (only the head trains) or stages:N (the
    first N stages of the backbone stay fixed, batch-norm statistics included)"""
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    """sgd (with --momentum, --nesterov), adam or adamw"""
    learning_rate: float = 1e-3
    """peak learning rate"""
    momentum: float = 0.9
    """SGD momentum (0: plain SGD)"""
    nesterov: bool = False
    """SGD with Nesterov momentum"""
    weight_decay: float = 0.0
    """L2 penalty (sgd, adam); decoupled weight decay for adamw"""
    lr_schedule: Literal["constant", "plateau", "cosine"] = "constant"
    """constant, plateau (times --lr-factor when validation stops improving) or cosine"""
    lr_factor: float = 0.1
    """plateau: the factor applied to the learning rate at each drop"""
    lr_patience: int = 3
    """plateau: epochs without a better validation accuracy before the learning rate drops"""
    warmup_epochs: float = 0.0
    """linear learning-rate warm-up over this many epochs"""
    init: Literal["default", "he", "xavier", "normal"] = "default"
    """weight initialisation: the model's own, he, xavier or normal (N(0, 0.01))"""
    dropout: float | None = None
    """dropout probability of the models that have dropout (None: the model's default)"""
    val_fraction: float = 0.1
    """fraction of the training split held out for validation (0: none)"""
    early_stopping: int | None = None
    """stop after this many epochs without a better validation accuracy (None: never)"""
    expand_shifts: bool = False
    """add four one-pixel shifts of every training image (Nielsen's expanded MNIST: 5x)"""
    augment: tuple[str, ...] = ()
    """random augmentation on the device: any of crop, flip, rotate"""
    crop_size: int | None = None
    """crop: the side of the random crops (None: the image's); evaluation uses the centre crop"""
    crop_padding: int = 0
    """crop: zero padding added on every side first (CIFAR: 4)"""
    rotate_degrees: float = 10.0
    """rotate: the largest rotation, in degrees"""
    eval_batch_size: int = 512
    """images per forward pass in validation and test"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate),
              f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        check(bool(self.model), "--model must name a registered model")
        check(self.optimizer in ("sgd", "adam", "adamw"),
              f"--optimizer must be sgd, adam or adamw, got {self.optimizer!r}")
        check(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        check(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
              "--nesterov needs --optimizer sgd with --momentum > 0")
        check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        check(self.lr_schedule in ("constant", "plateau", "cosine"),
              f"--lr-schedule must be constant, plateau or cosine, got {self.lr_schedule!r}")
        check(0 < self.lr_factor < 1, f"--lr-factor must be in (0, 1), got {self.lr_factor}")
        check(self.lr_patience >= 1, f"--lr-patience must be >= 1, got {self.lr_patience}")
        check(self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        check(self.dropout is None or 0 <= self.dropout < 1,
              f"--dropout must be in [0, 1), got {self.dropout}")
        check(0 <= self.val_fraction < 1,
              f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check(self.early_stopping is None or self.early_stopping >= 1,
              f"--early-stopping must be >= 1 epochs (or omitted), got {self.early_stopping}")
        check(self.early_stopping is None or self.val_fraction > 0,
              "--early-stopping needs a validation split (--val-fraction > 0)")
        check(self.lr_schedule != "plateau" or self.val_fraction > 0,
              "--lr-schedule plateau needs a validation split (--val-fraction > 0)")
        unknown = [a for a in self.augment if a not in ("crop", "flip", "rotate")]
        check(not unknown, f"--augment takes crop, flip, rotate; got {unknown[:1]}")
        check(self.crop_size is None or self.crop_size >= 1,
              f"--crop-size must be >= 1, got {self.crop_size}")
        check(self.crop_padding >= 0, f"--crop-padding must be >= 0, got {self.crop_padding}")
        check(self.eval_batch_size > 0,
              f"--eval-batch-size must be > 0, got {self.eval_batch_size}")


# -- pieces ------------------------------------------------------------------------------------
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


def split_validation(images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    """``(train, validation)`` pairs: a seeded random ``fraction`` of the examples held out."""
    n = images.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))
    held = int(round(n * fraction))
    val, train = order[:held], order[held:]
    return (images[train], labels[train]), (images[val], labels[val])


def initialize(model: nn.Module, scheme: str) -> None:
    """Re-initialise every conv / linear weight (biases to zero): ``he`` (Kaiming normal for
    ReLU), ``xavier`` (Glorot uniform), ``normal`` (N(0, 0.01)); ``default`` keeps the model's."""
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if scheme == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def learning_rate_at(config: ClassifierConfig, step: int, total: int, steps_per_epoch: int,
                     drops: int = 0) -> float:
    """The learning rate of update ``step`` (1-based): the peak rate, times ``lr_factor`` per
    plateau drop, a linear warm-up over ``warmup_epochs``, then cosine decay to zero."""
    lr = config.learning_rate * config.lr_factor ** drops
    warmup = config.warmup_epochs * steps_per_epoch
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    if config.lr_schedule == "cosine":
        progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


class ValidationTracker:
    """The best validation epoch so far and what follows from it: plateau drops of the learning
    rate and early stopping. Saved in checkpoints, so a resumed run decides the same way."""

    def __init__(self, patience: int | None, lr_patience: int | None):
        self.patience, self.lr_patience = patience, lr_patience
        self.best_accuracy, self.best_epoch, self.best_step = -1.0, 0, 0
        self.since_best = self.since_change = self.drops = 0
        self.stopped = False

    def update(self, epoch: int, step: int, accuracy: float) -> bool:
        """Record an epoch's validation accuracy; True if it is the best so far."""
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch, self.best_step = accuracy, epoch, step
            self.since_best = self.since_change = 0
            return True
        self.since_best += 1
        self.since_change += 1
        if self.lr_patience and self.since_change >= self.lr_patience:
            self.drops += 1
            self.since_change = 0
        if self.patience and self.since_best >= self.patience:
            self.stopped = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best_accuracy", "best_epoch", "best_step",
                                              "since_best", "since_change", "drops", "stopped")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@torch.inference_mode()
def predict_probabilities(model: nn.Module, images: torch.Tensor, standardize: nn.Module,
                          batch_size: int = 512, crop: int | None = None) -> torch.Tensor:
    """Softmax probabilities ``(N, K)`` of ``model`` (eval mode) for uint8 or [0, 1] images."""
    from rlgen.data.augment import center_crop

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            if crop is not None and crop < min(x.shape[-2:]):
                x = center_crop(x, crop)
            out.append(torch.softmax(model(standardize(x)).float(), dim=1))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def classification_scores(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, top-5 accuracy and mean cross-entropy (of the probabilities) on ``labels``."""
    labels = labels.to(probabilities.device)
    k = min(5, probabilities.shape[1])
    top = probabilities.topk(k, dim=1).indices
    picked = probabilities.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12)
    return {"accuracy": (top[:, 0] == labels).double().mean().item(),
            "top5_accuracy": (top == labels[:, None]).any(1).double().mean().item(),
            "loss": (-picked.double().log()).mean().item()}


def confusion(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` counts: row = true class, column = predicted class."""
    index = labels.cpu().long() * num_classes + predictions.cpu().long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def build_classifier(config: ClassifierConfig, num_classes: int, in_channels: int,
                     input_size: int) -> nn.Module:
    """The configured model: registry builder (with ``dropout`` / ``input_size`` when it takes
    them), optional pretrained weights with a new head, initialisation, freezing."""
    from rlgen.registry import MODELS
    from rlgen.vision.backbones import create_model

    parameters = inspect.signature(MODELS.get(config.model)).parameters
    kwargs: dict[str, Any] = {}
    if config.dropout is not None:
        if "dropout" not in parameters:
            raise InputError(f"--dropout: model {config.model!r} has no dropout option")
        kwargs["dropout"] = config.dropout
    if "input_size" in parameters:
        kwargs["input_size"] = input_size
    model = create_model(config.model, num_classes=num_classes, in_channels=in_channels,
                         weights=config.weights, **kwargs)
    if config.weights is None:
        initialize(model, config.init)
    elif config.new_head:
        model.reset_classifier(num_classes)
    if config.freeze != "none":
        from rlgen.vision.transfer import freeze

        freeze(model, config.freeze)
    return model


def make_optimizer(config: ClassifierConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"--freeze {config.freeze} leaves no parameter to train")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def load_training_data(config: ClassifierConfig):
    """``(train_images, train_labels, val_images, val_labels, test_set, train_set)``: the
    validation part carved from the training split before any expansion."""
    from rlgen.data import expand_with_shifts, load_dataset

    kwargs = dict(root=config.data_root, download=config.download, image_size=config.image_size)
    train_set = load_dataset(config.dataset, train=True, **kwargs)
    test_set = load_dataset(config.dataset, train=False, **kwargs)
    labels = torch.as_tensor(train_set.labels).long()
    (x, y), (val_x, val_y) = split_validation(train_set.images, labels, config.val_fraction,
                                              config.seed)
    if config.expand_shifts:
        x, y = expand_with_shifts(x, y)
    return x, y, val_x, val_y, test_set, train_set


# -- training ----------------------------------------------------------------------------------
def train(config: ClassifierConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train ``config.model``; returns the best-validation weights' test figures
    (``test/accuracy``, ``test/top5_accuracy``, ``test/loss``, ``best/epoch``,
    ``best/val_accuracy``) with the run directory and the last checkpoint."""
    from rlgen.data.augment import Augment
    from rlgen.data.batches import TensorBatches
    from rlgen.runtime import Precision
    from rlgen.runtime import to_memory_format as fmt

    with TrainingRun("classifier", config, progress=progress) as run:
        config = run.config  # with --resume: the saved config and the flags given now
        x, y, val_x, val_y, test_set, train_set = load_training_data(config)
        standardize = Standardize(*pixel_statistics(x))
        crop = config.crop_size if "crop" in config.augment else None
        input_size = crop or int(x.shape[-1])
        model = build_classifier(config, train_set.num_classes, train_set.channels, input_size)
        model.to(run.device)
        optimizer = make_optimizer(config, model)
        precision = Precision(config.precision, run.device)
        tracker = ValidationTracker(config.early_stopping,
                                    config.lr_patience if config.lr_schedule == "plateau" else None)
        augment = Augment(config.augment, crop, config.crop_padding, config.rotate_degrees) \
            if config.augment else None
        data = TensorBatches(x, y, config.batch_size, transform=augment, **run.shard_args())
        steps, per_epoch = total_steps(config, data.steps_per_epoch), data.steps_per_epoch

        run.start(steps, {"model": model, "optimizer": optimizer, "precision": precision,
                          "validation": tracker},
                  meta={"model": config.model, "num_classes": train_set.num_classes,
                        "in_channels": train_set.channels, "classes": list(train_set.classes),
                        "mean": standardize.mean, "std": standardize.std,
                        "input_size": input_size, "eval_crop": crop},
                  items_per_step=data.batch_size)
        net = run.prepare(model)
        step = run.start_step
        # A run that stopped early has nothing left to train when it is resumed.
        batches = () if tracker.stopped else run.steps(data)
        for step, (xb, yb) in batches:
            lr = learning_rate_at(config, step, steps, per_epoch, tracker.drops)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with precision.autocast():
                logits = net(fmt(standardize(xb), config.channels_last))
            loss = F.cross_entropy(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer)

            if run.due(step, config.log_every):
                accuracy = (logits.argmax(1) == yb).float().mean()
                run.log(step, {"train/loss": loss, "train/accuracy": accuracy, "train/lr": lr,
                               "train/skipped_steps": precision.skipped_steps},
                        show=("train/loss", "train/accuracy"))
            if len(val_y) and (step % per_epoch == 0 or step == steps):
                validate(run, model, standardize, val_x, val_y, tracker, step, per_epoch, crop,
                         train_set.classes, config.eval_batch_size)
                if tracker.stopped:
                    run.print(f"early stopping at epoch {math.ceil(step / per_epoch)}: no "
                              f"better validation accuracy for {config.early_stopping} epochs")
                    break

        run.save_final(step)
        metrics = test_best(run, model, standardize, test_set, tracker, crop, config)
        run.log(step, metrics)
        return run.finish(step, metrics)


def validate(run: TrainingRun, model: nn.Module, standardize: nn.Module, val_x: torch.Tensor,
             val_y: torch.Tensor, tracker: ValidationTracker, step: int, per_epoch: int,
             crop: int | None, classes: list[str], batch_size: int) -> None:
    """One validation pass: log its figures and confusion matrix, update the best epoch
    (``best.pt`` holds its weights) and the plateau / early-stopping state."""
    from rlgen.vision.pictures import confusion_matrix_image

    probabilities = predict_probabilities(model, val_x, standardize, batch_size, crop)
    scores = classification_scores(probabilities, val_y)
    epoch = math.ceil(step / per_epoch)
    if tracker.update(epoch, step, scores["accuracy"]):
        run.save_snapshot("best.pt", step)
    run.log(step, {"val/accuracy": scores["accuracy"], "val/loss": scores["loss"],
                   "val/best_accuracy": tracker.best_accuracy, "charts/epoch": epoch})
    if run.logger is not None:
        matrix = confusion(probabilities.argmax(1), val_y, probabilities.shape[1])
        run.logger.image("val/confusion_matrix", confusion_matrix_image(matrix, classes), step)


def test_best(run: TrainingRun, model: nn.Module, standardize: nn.Module, test_set,
              tracker: ValidationTracker, crop: int | None, config: ClassifierConfig
              ) -> dict[str, float]:
    """The test split's figures for the best-validation weights (the last weights without a
    validation split); the model keeps the best weights afterwards."""
    best = Path(run.run_dir) / "checkpoints" / "best.pt"
    if tracker.best_step and best.is_file():
        from rlgen.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(best)["state"]["model"])
    labels = torch.as_tensor(test_set.labels).long()
    probabilities = predict_probabilities(model, test_set.images, standardize,
                                          config.eval_batch_size, crop)
    scores = classification_scores(probabilities, labels)
    metrics = {f"test/{k}": v for k, v in scores.items()}
    metrics["test/num_images"] = float(len(labels))
    if tracker.best_step:
        metrics["best/epoch"] = float(tracker.best_epoch)
        metrics["best/val_accuracy"] = tracker.best_accuracy
    return metrics


# -- loading, evaluation, prediction -----------------------------------------------------------
def classifier_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``best.pt`` (the best validation epoch) if it
    has one, else its newest checkpoint."""
    from rlgen.checkpoint import find_checkpoint

    path = Path(path)
    for best in (path / "checkpoints" / "best.pt", path / "best.pt"):
        if path.is_dir() and best.is_file():
            return best
    return find_checkpoint(path)


def load_classifier(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier of a ``rlgen train classifier`` checkpoint (eval mode) and its ``meta``
    (model name, classes, standardisation, input size)."""
    from rlgen.checkpoint import CheckpointError, load_checkpoint
    from rlgen.registry import MODELS
    from rlgen.vision.backbones import create_model

    path = classifier_checkpoint(path)
    state = load_checkpoint(path)
    if state.get("task") != "classifier" or "model" not in state.get("state", {}):
        raise CheckpointError(f"{path} is not a classifier checkpoint (it holds a "
                              f"{state.get('task')!r} run); pass one of `rlgen train classifier`")
    meta = state["meta"]
    kwargs: dict[str, Any] = {}
    if "input_size" in inspect.signature(MODELS.get(meta["model"])).parameters:
        kwargs["input_size"] = meta["input_size"]
    dropout = state.get("config", {}).get("dropout")
    if dropout is not None:
        kwargs["dropout"] = dropout
    model = create_model(meta["model"], num_classes=meta["num_classes"],
                         in_channels=meta["in_channels"], **kwargs)
    model.load_state_dict(state["state"]["model"])
    meta = {**meta, "checkpoint": str(path), "dataset": state["config"].get("dataset"),
            "data_root": state["config"].get("data_root"),
            "image_size": state["config"].get("image_size")}
    return model.to(device).eval(), meta


@dataclass
class ClassifierEvalConfig:
    """Accuracy of one classifier or an ensemble, with a confusion matrix and the mistakes."""

    checkpoint: tuple[str, ...] = ()
    """checkpoint files or run directories (best.pt when there is one); several = an ensemble"""
    combine: Literal["mean", "vote"] = "mean"
    """ensemble rule: mean (average the probabilities) or vote (majority of the members'
    predictions, ties to the lower class index)"""
    dataset: str | None = None
    """dataset (None: the first checkpoint's)"""
    data_root: str | None = None
    """dataset directory (None: the first checkpoint's)"""
    split: Literal["test", "train"] = "test"
    """which split to evaluate"""
    out_dir: str | None = None
    """where the pictures go (None: an `eval` folder beside the first checkpoint)"""
    max_misclassified: int = 64
    """misclassified images shown in the grid"""
    batch_size: int = 512
    """images per forward pass"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir; "
                                     "give several for an ensemble)")
        check(self.combine in ("mean", "vote"), f"--combine must be mean or vote, "
                                                f"got {self.combine!r}")
        check(self.max_misclassified >= 0,
              f"--max-misclassified must be >= 0, got {self.max_misclassified}")
        check(self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}")


def combine_members(probabilities: list[torch.Tensor], rule: str) -> torch.Tensor:
    """The ensemble's class scores ``(N, K)``: the members' mean probabilities, or (``vote``)
    each class's share of the members' predictions."""
    if rule == "mean":
        return torch.stack(probabilities).mean(0)
    k = probabilities[0].shape[1]
    votes = torch.stack([F.one_hot(p.argmax(1), k) for p in probabilities]).sum(0)
    return votes.float() / len(probabilities)


def evaluate(config: ClassifierEvalConfig) -> dict[str, Any]:
    """``rlgen eval classifier``: prints one JSON line and writes the pictures; returns it."""
    from rlgen.data import load_dataset
    from rlgen.data.images import save_image
    from rlgen.runtime import resolve_device
    from rlgen.vision.pictures import captioned_grid, confusion_matrix_image

    device = resolve_device(config.device)
    members = [load_classifier(path, device) for path in config.checkpoint]
    first = members[0][1]
    for _, meta in members[1:]:
        if meta["classes"] != first["classes"]:
            raise InputError(f"ensemble members disagree on the classes: {meta['checkpoint']} "
                             f"has {meta['classes'][:5]}..., {first['checkpoint']} "
                             f"{first['classes'][:5]}...")
    dataset = load_dataset(config.dataset or first["dataset"], train=config.split == "train",
                           root=config.data_root or first["data_root"] or "data",
                           image_size=first["image_size"])
    labels = torch.as_tensor(dataset.labels).long()
    probabilities = [
        predict_probabilities(model, dataset.images, Standardize(meta["mean"], meta["std"]),
                              config.batch_size, meta.get("eval_crop")).cpu()
        for model, meta in members]
    ensemble = combine_members(probabilities, config.combine)
    predicted = ensemble.argmax(1)
    # top-5 and the loss need probabilities: the members' mean, whatever --combine decides
    scores = classification_scores(combine_members(probabilities, "mean"), labels)
    scores["accuracy"] = (predicted == labels).double().mean().item()

    out = Path(config.out_dir) if config.out_dir else \
        Path(first["checkpoint"]).parent.parent / "eval"
    classes = first["classes"]
    matrix_path = save_image(confusion_matrix_image(confusion(predicted, labels, len(classes)),
                                                    classes).float() / 255,
                             out / "confusion_matrix.png")
    wrong = (predicted != labels).nonzero().squeeze(1)[: config.max_misclassified]
    captions = [f"true {classes[labels[i]]}\npred {classes[predicted[i]]}" for i in wrong]
    images = dataset.images[wrong].float() / 255
    grid_path = save_image(captioned_grid(images, captions).float() / 255,
                           out / "misclassified.png") if len(wrong) else None
    result = {
        "accuracy": scores["accuracy"], "top5_accuracy": scores["top5_accuracy"],
        "loss": scores["loss"],
        "member_accuracies": [classification_scores(p, labels)["accuracy"]
                              for p in probabilities],
        "combine": config.combine, "members": len(members), "images": int(len(labels)),
        "split": config.split, "confusion_matrix": str(matrix_path),
        "misclassified": str(grid_path) if grid_path else None,
    }
    print(json.dumps(result))
    return result


@dataclass
class ClassifierPredictConfig:
    """The top classes of your images under a trained classifier."""

    checkpoint: str = ""
    """checkpoint file or run directory (best.pt when there is one)"""
    image: tuple[str, ...] = ()
    """image files"""
    top: int = 5
    """how many classes to print per image"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(bool(self.image), "--image is required (one or more image files)")
        check(self.top >= 1, f"--top must be >= 1, got {self.top}")


def predict(config: ClassifierPredictConfig) -> dict[str, Any]:
    """``rlgen predict classifier``: one line per image, ``x.png: 7 0.981, 1 0.012, ...``."""
    from rlgen.data.folder import load_image
    from rlgen.runtime import resolve_device

    model, meta = load_classifier(config.checkpoint, resolve_device(config.device))
    mode = "L" if meta["in_channels"] == 1 else "RGB"
    side = meta["image_size"] or meta["input_size"]
    results = {}
    for path in config.image:
        image = torch.as_tensor(load_image(path, mode=mode, size=(side, side)).copy())[None]
        probabilities = predict_probabilities(model, image, Standardize(meta["mean"],
                                                                        meta["std"]),
                                              crop=meta.get("eval_crop"))[0]
        top = probabilities.topk(min(config.top, len(probabilities)))
        ranked = [(meta["classes"][i], float(p)) for p, i in zip(top.values, top.indices)]
        results[path] = ranked
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
    return {"predictions": results, "checkpoint": meta["checkpoint"]}


@TRAINERS.register("classifier", description="Image classifier: any registered model; "
                                              "ensembles, transfer learning")
def classifier_trainer():
    from rlgen.cli_spec import TrainerSpec

    return TrainerSpec(config=ClassifierConfig, train=train,
                       evaluate=(ClassifierEvalConfig, evaluate),
                       predict=(ClassifierPredictConfig, predict))
