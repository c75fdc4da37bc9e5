"""``rlgen train|eval|predict segmentation``: FCN, SegNet or U-Net (on any encoder) trained
through the shared run on any dataset with per-pixel masks (``voc``, ``camvid``,
``seg-shapes``), evaluated with the confusion-matrix figures of ``metrics.py``.

- Loss: cross-entropy (``--class-weighting median-frequency``: SegNet's balancing), Dice, or
  their sum; pixels of ``ignore_index`` (VOC's borders) count nowhere.
- Data: inputs standardised with the training split's mean and standard deviation; joint random
  rescale / crop / flip of image and mask on the device (``--scale``, ``--crop-size``,
  ``--flip``); a seeded validation split of the training images picks the best epoch by mean
  IoU (``checkpoints/best.pt``); the run ends with the test split's figures for those weights.
- Encoders start from classifier weights with ``--encoder-weights FILE|torchvision:NAME``
  (VGG-16 into FCN with fc6 / fc7 reshaped into convolutions; VGG-16-BN into SegNet; any
  classifier of the encoder's architecture into U-Net's encoder).
- TensorBoard: losses, ``val/mean_iou`` and image | truth | prediction triplets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from rlgen.errors import InputError
from rlgen.registry import TRAINERS
from rlgen.training import TrainConfig, TrainingRun, check, total_steps
from rlgen.vision.classification import Standardize, pixel_statistics, split_validation
from rlgen.vision.segmentation.metrics import (
    confusion_matrix,
    median_frequency_weights,
    segmentation_loss,
    segmentation_scores,
)

#: short names accepted by ``--dataset`` (``shapes`` alone is the classification dataset)
DATASET_ALIASES = {"shapes": "seg-shapes"}


@dataclass
class SegmentationConfig(TrainConfig):
    """Train a semantic-segmentation model (FCN, SegNet, U-Net on any encoder)."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *TrainConfig.fixed_on_resume, "model", "encoder", "width", "dataset", "image_size",
        "val_fraction")

    model: str = "unet"
    """fcn32s, fcn16s, fcn8s, segnet or unet (see `rlgen list segmentation-models`)"""
    encoder: str | None = None
    """U-Net on a registered backbone (resnet34, a plugin, ...; None: the original U-Net);
    FCN: a VGG trunk (default vgg16)"""
    width: int | None = None
    """model width: the original U-Net's first-level channels (64 in the paper: a width
    multiplier), FCN's fc6 / fc7 channels (4096 in the paper); None: the paper's"""
    encoder_weights: str | None = None
    """classifier weights for the encoder: a file (rlgen or torchvision format) or
    torchvision:NAME"""
    dataset: str = "seg-shapes"
    """dataset with per-pixel masks: voc, camvid, seg-shapes (or shapes, short for seg-shapes)"""
    data_root: str = "data"
    """directory holding the dataset files"""
    download: bool = False
    """download the dataset if it is missing (voc)"""
    image_size: int | None = None
    """resize images (bilinear) and masks (nearest) to this square size"""
    optimizer: Literal["sgd", "adam"] = "adam"
    """sgd (with --momentum) or adam"""
    learning_rate: float = 1e-3
    """learning rate"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 0.0
    """L2 penalty"""
    loss: Literal["ce", "dice", "ce+dice"] = "ce"
    """ce (cross-entropy), dice (soft multi-class Dice) or ce+dice"""
    class_weighting: Literal["none", "median-frequency"] = "none"
    """cross-entropy class weights: none, or median-frequency (SegNet's balancing)"""
    scale: tuple[float, ...] = ()
    """random rescale range of the joint augmentation, e.g. 0.75 1.25 (empty: none)"""
    crop_size: int | None = None
    """random crop of image and mask to this square size (evaluation uses whole images)"""
    flip: bool = False
    """random horizontal flips of image and mask"""
    val_fraction: float = 0.1
    """fraction of the training images held out to pick the best epoch (0: none)"""
    eval_batch_size: int = 16
    """images per forward pass in validation and test"""

    def __post_init__(self) -> None:
        super().__post_init__()
        from rlgen.registry import SEGMENTATION_MODELS

        SEGMENTATION_MODELS.get(self.model)  # unknown names fail now, listing the closest
        self.dataset = DATASET_ALIASES.get(self.dataset, self.dataset)
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate),
              f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        check(self.optimizer in ("sgd", "adam"),
              f"--optimizer must be sgd or adam, got {self.optimizer!r}")
        check(self.loss in ("ce", "dice", "ce+dice"),
              f"--loss must be ce, dice or ce+dice, got {self.loss!r}")
        check(self.class_weighting in ("none", "median-frequency"),
              f"--class-weighting must be none or median-frequency, got "
              f"{self.class_weighting!r}")
        check(len(self.scale) in (0, 2) and all(s > 0 for s in self.scale),
              f"--scale takes two positive numbers (low high), got {list(self.scale)}")
        check(self.crop_size is None or self.crop_size >= 1,
              f"--crop-size must be >= 1, got {self.crop_size}")
        check(0 <= self.val_fraction < 1,
              f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check(self.eval_batch_size > 0,
              f"--eval-batch-size must be > 0, got {self.eval_batch_size}")
        check(self.width is None or self.width >= 1, f"--width must be >= 1, got {self.width}")


# -- pieces ------------------------------------------------------------------------------------
def build_model(config: SegmentationConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The configured model, its encoder started from ``--encoder-weights`` when given."""
    from rlgen.vision.segmentation.models import build_segmentation_model, load_vgg16_classifier

    model = build_segmentation_model(config.model, num_classes, in_channels,
                                     encoder=config.encoder, **width_kwargs(config))
    if config.encoder_weights:
        if config.model.startswith("fcn"):
            load_vgg16_classifier(model, config.encoder_weights)
        else:
            load_encoder_weights(model, config.encoder_weights)
    return model


def load_encoder_weights(model: nn.Module, weights: str) -> None:
    """A classifier's weights into ``model.encoder``: every encoder tensor must be in the file
    with its shape (the classifier's head is left out); a file of another architecture
    (VGG-16 into a VGG-16-BN encoder, ResNet-18 into ResNet-34) is a ``WeightsError`` naming
    the first keys that do not fit, instead of a silent partial load."""
    from rlgen.vision.backbones.weights import WeightsError, load_weights

    report = load_weights(model.encoder, weights, strict=False)
    if report.missing or report.mismatched:
        shapes = [f"{k}: encoder {list(a)} vs file {list(b)}" for k, a, b in report.mismatched]
        raise WeightsError(
            f"--encoder-weights {weights} does not fit the {model.name} encoder "
            f"{getattr(model.encoder, 'name', type(model.encoder).__name__)!r}: "
            f"missing {report.missing[:4]}{' ...' if len(report.missing) > 4 else ''}, "
            f"mismatched {shapes[:4]}; give a classifier of the encoder's architecture")


def width_kwargs(config: Any) -> dict[str, int]:
    """The builder's width argument for ``--width``: FCN's fc6/fc7 channels, or the original
    U-Net's first-level channels."""
    if config.width is None:
        return {}
    if config.model.startswith("fcn"):
        return {"fc_channels": config.width}
    if config.model == "unet" and config.encoder is None:
        return {"base_channels": config.width}
    raise InputError(f"--width applies to fcn* and to unet without --encoder, not to "
                     f"{config.model}{' on ' + config.encoder if config.encoder else ''}")


@torch.inference_mode()
def predict_masks(model: nn.Module, images: torch.Tensor, standardize: nn.Module,
                  batch_size: int = 16) -> torch.Tensor:
    """Class indices ``(N, H, W)`` (on the model's device) for uint8 or [0, 1] images."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            out.append(model(standardize(x)).argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate_masks(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                   standardize: nn.Module, num_classes: int, ignore_index: int | None,
                   batch_size: int = 16) -> tuple[dict[str, Any], torch.Tensor]:
    """The figures of one confusion matrix accumulated over the whole set, and the matrix."""
    device = next(model.parameters()).device
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for start in range(0, images.shape[0], batch_size):
        pred = predict_masks(model, images[start:start + batch_size], standardize, batch_size)
        matrix += confusion_matrix(pred, masks[start:start + batch_size].to(device),
                                   num_classes, ignore_index)
    return segmentation_scores(matrix), matrix


class BestTracker:
    """The best validation mean IoU so far and its epoch (saved in checkpoints)."""

    def __init__(self) -> None:
        self.best_iou, self.best_epoch, self.best_step = -1.0, 0, 0

    def update(self, epoch: int, step: int, mean_iou: float) -> bool:
        if not math.isnan(mean_iou) and mean_iou > self.best_iou:
            self.best_iou, self.best_epoch, self.best_step = mean_iou, epoch, step
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best_iou": self.best_iou, "best_epoch": self.best_epoch,
                "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_iou, self.best_epoch, self.best_step = (
            state["best_iou"], state["best_epoch"], state["best_step"])


# -- training ----------------------------------------------------------------------------------
def train(config: SegmentationConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train; returns the test figures of the best-validation weights (``test/mean_iou``,
    ``test/pixel_accuracy``, ...) with the run directory and the last checkpoint."""
    from rlgen.data import load_dataset
    from rlgen.data.batches import TensorBatches
    from rlgen.data.segmentation import SegmentationAugment
    from rlgen.runtime import Precision
    from rlgen.runtime import to_memory_format as fmt

    with TrainingRun("segmentation", config, progress=progress) as run:
        config = run.config  # with --resume: the saved config and the flags given now
        kwargs = dict(root=config.data_root, download=config.download,
                      image_size=config.image_size)
        train_set = load_dataset(config.dataset, train=True, **kwargs)
        test_set = load_dataset(config.dataset, train=False, **kwargs)
        if getattr(train_set, "masks", None) is None:
            raise InputError(f"--dataset {config.dataset} has no per-pixel masks; use voc, "
                             f"camvid or seg-shapes")
        (x, y), (val_x, val_y) = split_validation(train_set.images, train_set.masks,
                                                  config.val_fraction, config.seed)
        k, ignore = train_set.num_classes, train_set.ignore_index
        standardize = Standardize(*pixel_statistics(x))
        model = build_model(config, k, train_set.channels).to(run.device)
        optimizer = _optimizer(config, model)
        precision = Precision(config.precision, run.device)
        weights = median_frequency_weights(y, k, ignore).to(run.device) \
            if config.class_weighting == "median-frequency" else None
        augment = SegmentationAugment(scale=tuple(config.scale) or None, crop=config.crop_size,
                                      flip=config.flip, ignore_index=ignore) \
            if (config.scale or config.crop_size or config.flip) else None
        data = TensorBatches(x, y, config.batch_size, transform=augment, **run.shard_args())
        steps, per_epoch = total_steps(config, data.steps_per_epoch), data.steps_per_epoch
        tracker = BestTracker()
        shown = (val_x if len(val_x) else test_set.images)[:4]
        shown_masks = (val_y if len(val_y) else test_set.masks)[:4]

        run.start(steps, {"model": model, "optimizer": optimizer, "precision": precision,
                          "validation": tracker},
                  meta={"model": config.model, "encoder": config.encoder, "num_classes": k,
                        "in_channels": train_set.channels, "classes": list(train_set.classes),
                        "palette": train_set.palette.tolist(), "ignore_index": ignore,
                        "mean": standardize.mean, "std": standardize.std},
                  items_per_step=data.batch_size)
        net = run.prepare(model)
        step = run.start_step
        for step, (xb, yb) in run.steps(data):
            with precision.autocast():
                logits = net(fmt(standardize(xb), config.channels_last))
            loss = segmentation_loss(logits, yb, config.loss, weights, ignore)
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer)

            if run.due(step, config.log_every):
                accuracy = _pixel_accuracy(logits, yb, ignore)
                run.log(step, {"train/loss": loss, "train/pixel_accuracy": accuracy,
                               "train/skipped_steps": precision.skipped_steps},
                        show=("train/loss",))
            if run.due(step, config.sample_every) and run.logger is not None:
                from rlgen.vision.pictures import segmentation_triplets

                predicted = predict_masks(model, shown, standardize).cpu()
                run.logger.image("samples/image_truth_prediction", segmentation_triplets(
                    shown, shown_masks, predicted, train_set.palette, ignore), step)
            if len(val_y) and (step % per_epoch == 0 or step == steps):
                scores, _ = evaluate_masks(model, val_x, val_y, standardize, k, ignore,
                                           config.eval_batch_size)
                if tracker.update(math.ceil(step / per_epoch), step, scores["mean_iou"]):
                    run.save_snapshot("best.pt", step)
                run.log(step, {"val/mean_iou": scores["mean_iou"],
                               "val/pixel_accuracy": scores["pixel_accuracy"]})

        run.save_final(step)
        best = Path(run.run_dir) / "checkpoints" / "best.pt"
        if tracker.best_step and best.is_file():
            from rlgen.checkpoint import load_checkpoint

            model.load_state_dict(load_checkpoint(best)["state"]["model"])
        scores, _ = evaluate_masks(model, test_set.images, test_set.masks, standardize, k,
                                   ignore, config.eval_batch_size)
        metrics = {f"test/{key}": value for key, value in scores.items()
                   if not isinstance(value, list)}
        if tracker.best_step:
            metrics["best/epoch"], metrics["best/val_mean_iou"] = (float(tracker.best_epoch),
                                                                   tracker.best_iou)
        run.log(step, metrics)
        return {**run.finish(step, metrics), "test/iou": scores["iou"]}


def _optimizer(config: SegmentationConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate,
                               momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                            weight_decay=config.weight_decay)


def _pixel_accuracy(logits: torch.Tensor, target: torch.Tensor, ignore: int | None) -> float:
    keep = target != ignore if ignore is not None else torch.ones_like(target, dtype=torch.bool)
    return float((logits.argmax(1)[keep] == target[keep]).double().mean()) if keep.any() \
        else math.nan


# -- evaluation and prediction -----------------------------------------------------------------
def load_segmenter(path: str | Path, device: str | torch.device = "cpu"
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a ``rlgen train segmentation`` checkpoint (a run directory means its
    ``best.pt``), in eval mode, and its ``meta`` (classes, palette, standardisation)."""
    from rlgen.checkpoint import CheckpointError, load_checkpoint
    from rlgen.vision.classification import classifier_checkpoint
    from rlgen.vision.segmentation.models import build_segmentation_model

    path = classifier_checkpoint(path)
    state = load_checkpoint(path)
    if state.get("task") != "segmentation":
        raise CheckpointError(f"{path} is not a segmentation checkpoint (it holds a "
                              f"{state.get('task')!r} run)")
    meta = state["meta"]
    model = build_segmentation_model(meta["model"], meta["num_classes"], meta["in_channels"],
                                     encoder=meta["encoder"],
                                     **width_kwargs(_Widths(meta["model"], meta["encoder"],
                                                            state["config"].get("width"))))
    model.load_state_dict(state["state"]["model"])
    return model.to(device).eval(), {**meta, "checkpoint": str(path),
                                     "config": state.get("config", {})}


@dataclass
class _Widths:
    model: str
    encoder: str | None
    width: int | None


@dataclass
class SegmentationEvalConfig:
    """Pixel accuracy, mean class accuracy, per-class and mean IoU of a checkpoint."""

    checkpoint: str = ""
    """checkpoint file or run directory (its best.pt when there is one)"""
    dataset: str | None = None
    """dataset (None: the checkpoint's)"""
    data_root: str | None = None
    """dataset directory (None: the checkpoint's)"""
    split: Literal["test", "train"] = "test"
    """which split to evaluate"""
    batch_size: int = 16
    """images per forward pass"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}")
        if self.dataset is not None:
            self.dataset = DATASET_ALIASES.get(self.dataset, self.dataset)


def evaluate(config: SegmentationEvalConfig) -> dict[str, Any]:
    """``rlgen eval segmentation``: a per-class IoU table, then one JSON line."""
    from rlgen.data import load_dataset
    from rlgen.runtime import resolve_device

    model, meta = load_segmenter(config.checkpoint, resolve_device(config.device))
    trained = meta["config"]
    dataset = load_dataset(config.dataset or trained.get("dataset"),
                           train=config.split == "train",
                           root=config.data_root or trained.get("data_root", "data"),
                           image_size=trained.get("image_size"))
    scores, _ = evaluate_masks(model, dataset.images, dataset.masks,
                               Standardize(meta["mean"], meta["std"]), meta["num_classes"],
                               meta["ignore_index"], config.batch_size)
    width = max(len(c) for c in meta["classes"])
    print(f"{'class':<{width}}  IoU     accuracy")
    for name, iou, acc in zip(meta["classes"], scores["iou"], scores["class_accuracy"]):
        print(f"{name:<{width}}  {_pct(iou)}  {_pct(acc)}")
    result = {key: value for key, value in scores.items() if not isinstance(value, list)}
    result.update(checkpoint=meta["checkpoint"], split=config.split, images=len(dataset.images),
                  per_class_iou=dict(zip(meta["classes"], scores["iou"])))
    print(json.dumps(result))
    return result


def _pct(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{100 * value:6.2f}"


@dataclass
class SegmentationPredictConfig:
    """Colour each pixel of your image by its predicted class, blended over the image."""

    checkpoint: str = ""
    """checkpoint file or run directory (its best.pt when there is one)"""
    image: str = ""
    """the image file"""
    out: str = "overlay.png"
    """the picture written: the coloured mask over the image, with a legend"""
    alpha: float = 0.5
    """opacity of the colours"""
    size: int | None = None
    """resize the image to this square size first (None: the training size, if any)"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(bool(self.image), "--image is required")
        check(0 <= self.alpha <= 1, f"--alpha must be in [0, 1], got {self.alpha}")


def predict(config: SegmentationPredictConfig) -> dict[str, Any]:
    """``rlgen predict segmentation``: writes the overlay and prints the class shares."""
    from rlgen.data.folder import load_image
    from rlgen.data.images import save_image
    from rlgen.runtime import resolve_device
    from rlgen.vision.pictures import overlay

    model, meta = load_segmenter(config.checkpoint, resolve_device(config.device))
    side = config.size or meta["config"].get("image_size")
    mode = "L" if meta["in_channels"] == 1 else "RGB"
    image = torch.as_tensor(load_image(config.image, mode=mode,
                                       size=(side, side) if side else None).copy())
    mask = predict_masks(model, image[None], Standardize(meta["mean"], meta["std"]))[0].cpu()
    palette = torch.tensor(meta["palette"], dtype=torch.uint8)
    picture = overlay(image, mask, palette, meta["classes"], config.alpha, meta["ignore_index"])
    path = save_image(picture.float() / 255, config.out)
    shares = torch.bincount(mask.reshape(-1), minlength=meta["num_classes"]).double()
    shares /= shares.sum()
    present = {meta["classes"][i]: round(float(s), 4) for i, s in enumerate(shares) if s > 0}
    print(json.dumps({"out": str(path), "class_fractions": present}))
    return {"out": str(path), "mask": mask, "class_fractions": present}


@TRAINERS.register("segmentation", description="Semantic segmentation: FCN, SegNet, U-Net on "
                                                "any encoder")
def segmentation_trainer():
    from rlgen.cli_spec import TrainerSpec

    return TrainerSpec(config=SegmentationConfig, train=train,
                       evaluate=(SegmentationEvalConfig, evaluate),
                       predict=(SegmentationPredictConfig, predict))
