"""``rlgen train|eval|predict detection``: any detector of ``rlgen.registry.DETECTION_MODELS``
(``yolov1``, ``faster_rcnn``, a plugin) on any registered backbone, trained through the shared
run (precision, TensorBoard, resume, torchrun come from there) on a dataset with boxes
(``voc`` = ``voc-detection``, ``coco`` = ``coco-detection``, ``det-shapes``).

- Model: ``DETECTION_MODELS.create(model, num_classes=<the dataset's>, in_channels=...,
  backbone=..., image_size=(h, w), **options)`` with ``--model-options KEY=VALUE ...`` for the
  builder's own keywords (YOLO's ``grid=4 head=paper``, ...); the model returns its losses
  given targets and its detections without (the detector contract, see
  ``rlgen.vision.detection``).
- Optimisation: SGD with momentum (the papers') or AdamW, weight decay, a linear warm-up over
  ``--warmup-steps`` then a constant or cosine learning rate.
- Data: the whole split on the device, batches drawn by the seeded resumable order; each
  batch's random horizontal flip (boxes flipped with it) and optional scale jitter run on the
  device with the step's generator (``rlgen.data.detection.DetectionAugment``), so a resumed
  run sees the same batches.
- Evaluation: ``mean_average_precision`` (COCO ``map`` / ``map_50``, VOC ``voc_map_50``) on
  the dataset's held-out split (VOC 2007 test, COCO val, det-shapes test) every
  ``--eval-every`` steps and at the end; the best ``map_50`` so far is kept as
  ``checkpoints/best.pt`` and the run ends with the figures of those weights. (The best step is
  chosen on the split it is reported on; for an unbiased figure use ``--eval-every 0``.)
- TensorBoard: every loss term, ``eval/map_50`` ..., and pictures of predictions beside the
  truth (``samples/predictions_truth``).
"""

from __future__ import annotations

import ast
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

DATASET_ALIASES = {"voc": "voc-detection", "coco": "coco-detection", "shapes": "det-shapes"}


@dataclass
class DetectionConfig(TrainConfig):
    """Train an object detector (YOLO v1, Faster R-CNN) on any backbone."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *TrainConfig.fixed_on_resume, "model", "backbone", "backbone_options", "model_options",
        "dataset", "dataset_options", "image_size")

    model: str = "yolov1"
    """yolov1 or faster_rcnn (see `rlgen list detection-models`)"""
    backbone: str = "resnet18"
    """any registered backbone (a user's plugin too)"""
    backbone_options: tuple[str, ...] = ()
    """the backbone builder's keyword options as KEY=VALUE (e.g. widths=(8,16,32))"""
    model_options: tuple[str, ...] = ()
    """the detector builder's keyword options as KEY=VALUE (e.g. grid=4 head=paper)"""
    dataset: str = "det-shapes"
    """dataset with boxes: voc (voc-detection), coco (coco-detection), det-shapes"""
    data_root: str = "data"
    """directory holding the dataset files"""
    download: bool = False
    """download the dataset if it is missing (where the dataset offers it)"""
    image_size: int | None = None
    """resize images (and their boxes) to this square size (None: the dataset's default,
    det-shapes 64, VOC / COCO 448)"""
    dataset_options: tuple[str, ...] = ()
    """the dataset's keyword options as KEY=VALUE, for both splits (det-shapes: num_images=500
    max_objects=2; voc-detection: year=2012 limit=100)"""
    optimizer: Literal["sgd", "adamw"] = "adamw"
    """sgd (with --momentum) or adamw"""
    learning_rate: float = 1e-3
    """peak learning rate"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 5e-4
    """weight decay (YOLO v1: 5e-4)"""
    warmup_steps: int = 100
    """linear learning-rate warm-up from 1% over this many steps"""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """after the warm-up: constant, or cosine decay to 0 at the last step"""
    flip: bool = True
    """random horizontal flips of the training images and their boxes"""
    scale: tuple[float, ...] = ()
    """random zoom range of the training images, e.g. 1.0 1.2 (empty: none)"""
    eval_every: int = 0
    """evaluate mAP on the held-out split every this many steps (0: only at the end)"""
    eval_images: int | None = None
    """held-out images evaluated (None: all)"""
    eval_batch_size: int = 32
    """images per forward pass in evaluation"""

    def __post_init__(self) -> None:
        super().__post_init__()
        from rlgen.registry import DETECTION_MODELS

        DETECTION_MODELS.get(self.model)  # unknown names fail now, listing the closest
        for flag in ("backbone_options", "model_options", "dataset_options"):
            options(getattr(self, flag), flag)  # malformed options fail now
        check(self.optimizer in ("sgd", "adamw"),
              f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        check(self.lr_schedule in ("constant", "cosine"),
              f"--lr-schedule must be constant or cosine, got {self.lr_schedule!r}")
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate),
              f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        check(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        check(len(self.scale) in (0, 2) and all(s > 0 for s in self.scale)
              and (not self.scale or self.scale[0] <= self.scale[1]),
              f"--scale takes two numbers 0 < low <= high, got {list(self.scale)}")
        check(self.image_size is None or self.image_size >= 16,
              f"--image-size must be >= 16, got {self.image_size}")
        check(self.eval_every >= 0, f"--eval-every must be >= 0, got {self.eval_every}")
        check(self.eval_images is None or self.eval_images >= 1,
              f"--eval-images must be >= 1, got {self.eval_images}")
        check(self.eval_batch_size > 0,
              f"--eval-batch-size must be > 0, got {self.eval_batch_size}")


def options(pairs: tuple[str, ...] | list[str] | dict, flag: str = "model_options"
            ) -> dict[str, Any]:
    """``("grid=4", "head=paper")`` -> ``{"grid": 4, "head": "paper"}``: values read as Python
    literals (numbers, True, (1, 2)) where they are one, else as strings."""
    if isinstance(pairs, dict):
        return dict(pairs)
    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = str(item).partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--{flag.replace('_', '-')} takes KEY=VALUE pairs (e.g. "
                             f"grid=4), got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def dataset_name(name: str) -> str:
    return DATASET_ALIASES.get(name, name)


def load_split(config: Any, train: bool, image_size: int | None = None):
    """The configured dataset's training (``train=True``) or held-out split."""
    from rlgen.data import load_dataset

    name = dataset_name(config.dataset)
    kwargs: dict[str, Any] = dict(root=config.data_root, download=config.download,
                                  image_size=image_size or config.image_size)
    extra = options(config.dataset_options, "dataset_options")
    try:
        dataset = load_dataset(name, train=train, **kwargs, **extra)
    except TypeError as exc:
        if extra and "argument" in str(exc):
            raise InputError(f"--dataset-options {' '.join(config.dataset_options)} is not "
                             f"accepted by {name}: {exc}") from exc
        raise
    if not hasattr(dataset, "targets") or not hasattr(dataset, "padded"):
        raise InputError(f"--dataset {config.dataset} has no boxes; use voc, coco or "
                         "det-shapes")
    return dataset


def build_detector(name: str, num_classes: int, in_channels: int, backbone: str,
                   image_size: tuple[int, int], model_kwargs: dict[str, Any],
                   backbone_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``DETECTION_MODELS.create(name, num_classes, in_channels=, backbone=, image_size=,
    **model_kwargs)``, the backbone built first when it has options; a builder that rejects
    an option is reported as the user's error."""
    from rlgen.registry import DETECTION_MODELS
    from rlgen.vision.backbones import create_backbone

    builder = DETECTION_MODELS.get(name)
    net: str | nn.Module = backbone
    if backbone_kwargs:
        try:
            net = create_backbone(backbone, in_channels=in_channels, **backbone_kwargs)
        except TypeError as exc:
            raise InputError(f"--backbone-options {_shown(backbone_kwargs)} is not accepted by "
                             f"{backbone}: {exc}") from exc
    try:
        return builder(num_classes, in_channels=in_channels, backbone=net,
                       image_size=tuple(image_size), **model_kwargs)
    except TypeError as exc:
        if model_kwargs and "argument" in str(exc):
            raise InputError(f"--model-options {_shown(model_kwargs)} is not accepted by "
                             f"{name}: {exc}") from exc
        raise


def _shown(kwargs: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in kwargs.items())


# -- evaluation ---------------------------------------------------------------------------------
@torch.inference_mode()
def detect(model: nn.Module, images: torch.Tensor, batch_size: int = 32
           ) -> list[dict[str, torch.Tensor]]:
    """The model's detections (on the CPU) for uint8 or [0, 1] images, in eval mode (the
    model's mode is restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[dict[str, torch.Tensor]] = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            out += [{k: v.cpu() for k, v in d.items()} for d in model(x)]
    finally:
        model.train(was_training)
    return out


def evaluate_detector(model: nn.Module, dataset, count: int | None = None,
                      batch_size: int = 32) -> dict[str, Any]:
    """``mean_average_precision`` of the model on the first ``count`` images of ``dataset``,
    with ``per_class`` = ``{class name: {"ap_50": VOC all-point AP, "ap": COCO AP}}`` (-1 for
    classes without ground truth)."""
    from rlgen.vision.detection import mean_average_precision

    count = len(dataset) if count is None else min(count, len(dataset))
    predictions = detect(model, dataset.images[:count], batch_size)
    scores = mean_average_precision(predictions, dataset.targets[:count])
    per_class = {name: {"ap_50": -1.0, "ap": -1.0} for name in dataset.classes}
    for label, voc, coco in zip(scores["classes"], scores["voc_ap_per_class"],
                                scores["map_per_class"]):
        if 0 <= label < len(dataset.classes):
            per_class[dataset.classes[label]] = {"ap_50": voc, "ap": coco}
    scores["per_class"] = per_class
    return scores


HEADLINE = ("map_50", "map", "map_75", "voc_map_50", "voc07_map_50", "mar_100")


class BestTracker:
    """The best held-out mAP@0.5 so far and its step (saved in checkpoints)."""

    def __init__(self) -> None:
        self.best_map, self.best_step = -1.0, 0

    def update(self, step: int, value: float) -> bool:
        if not math.isnan(value) and value > self.best_map:
            self.best_map, self.best_step = value, step
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best_map": self.best_map, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_map, self.best_step = state["best_map"], state["best_step"]


def _schedule(config: DetectionConfig, steps: int):
    warm, cosine = config.warmup_steps, config.lr_schedule == "cosine"

    def factor(step: int) -> float:  # step: optimizer updates made so far
        if warm and step < warm:
            return 0.01 + 0.99 * step / warm
        if not cosine or steps <= warm:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (steps - warm))))

    return factor


# -- training -----------------------------------------------------------------------------------
def train(config: DetectionConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train; returns the held-out figures of the best weights (``test/map_50``,
    ``test/map``, ``test/voc_map_50``, ...), ``test/per_class``, the run directory and the
    last checkpoint."""
    from rlgen.data.batches import TensorBatches
    from rlgen.data.detection import DetectionAugment, unpad_targets
    from rlgen.runtime import Precision
    from rlgen.runtime import to_memory_format as fmt

    with TrainingRun("detection", config, progress=progress) as run:
        config = run.config  # with --resume: the saved config and the flags given now
        train_set, test_set = load_split(config, True), load_split(config, False)
        k, size = train_set.num_classes, train_set.image_size
        model_kwargs = options(config.model_options)
        backbone_kwargs = options(config.backbone_options, "backbone_options")
        model = build_detector(config.model, k, train_set.channels, config.backbone, size,
                               model_kwargs, backbone_kwargs).to(run.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=config.learning_rate,
                                        momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                          weight_decay=config.weight_decay)
        precision = Precision(config.precision, run.device)
        images = train_set.images.to(run.device)
        padded = {key: value.to(run.device) for key, value in train_set.padded().items()}
        data = TensorBatches(torch.arange(len(train_set)), None, config.batch_size,
                             **run.shard_args())
        steps = total_steps(config, data.steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, steps))
        augment = DetectionAugment(flip=config.flip, scale=tuple(config.scale) or None) \
            if (config.flip or config.scale) else None
        tracker = BestTracker()
        eval_count = config.eval_images

        run.start(steps, {"model": model, "optimizer": optimizer, "scheduler": scheduler,
                          "precision": precision, "validation": tracker},
                  meta={"model": config.model, "backbone": config.backbone,
                        "backbone_options": backbone_kwargs, "model_options": model_kwargs,
                        "num_classes": k,
                        "in_channels": train_set.channels, "image_size": list(size),
                        "classes": list(train_set.classes)},
                  items_per_step=data.batch_size)
        # A resumed optimizer keeps the rate it was built with (the schedule's first); the
        # restored schedule knows where it stood (from the saved run's base rate).
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
        net = run.prepare(model)
        step = run.start_step
        for step, (index, _) in run.steps(data):
            x = images[index].float().div_(255.0)
            y = {key: value[index] for key, value in padded.items()}
            if augment is not None:
                x, y = augment(x, y, data.order.generator(step, run.device))
            with precision.autocast():
                losses = net(fmt(x, config.channels_last), unpad_targets(y))
            optimizer.zero_grad(set_to_none=True)
            precision.step(losses["loss"], optimizer)
            scheduler.step()

            if run.due(step, config.log_every):
                run.log(step, {**{f"train/{key}": value for key, value in losses.items()},
                               "train/learning_rate": scheduler.get_last_lr()[0],
                               "train/skipped_steps": precision.skipped_steps},
                        show=("train/loss",))
            if run.due(step, config.sample_every) and run.logger is not None:
                _log_pictures(run, model, test_set, step)
            if config.eval_every and step % config.eval_every == 0 and step != steps:
                scores = evaluate_detector(model, test_set, eval_count, config.eval_batch_size)
                if tracker.update(step, scores["map_50"]):
                    run.save_snapshot("best.pt", step)
                run.log(step, {f"eval/{key}": scores[key] for key in HEADLINE})

        run.save_final(step)
        scores = evaluate_detector(model, test_set, eval_count, config.eval_batch_size)
        if config.eval_every and tracker.best_step and tracker.best_map > scores["map_50"]:
            from rlgen.checkpoint import load_checkpoint

            best = Path(run.run_dir) / "checkpoints" / "best.pt"
            model.load_state_dict(load_checkpoint(best)["state"]["model"])
            scores = evaluate_detector(model, test_set, eval_count, config.eval_batch_size)
        elif tracker.update(step, scores["map_50"]):
            run.save_snapshot("best.pt", step)
        metrics = {f"test/{key}": scores[key] for key in HEADLINE}
        metrics["best/step"] = float(tracker.best_step)
        run.log(step, metrics)
        return {**run.finish(step, metrics), "test/per_class": scores["per_class"]}


def _log_pictures(run: TrainingRun, model: nn.Module, dataset, step: int) -> None:
    """Four held-out images: predictions (score >= 0.3) beside the truth (dashed)."""
    from rlgen.vision.pictures import detection_panels

    shown = dataset.images[:4]
    predictions = [{key: value[d["scores"] >= 0.3] for key, value in d.items()}
                   for d in detect(model, shown)]
    run.logger.image("samples/predictions_truth", detection_panels(
        shown, predictions, dataset.targets[:4], dataset.classes, min_side=128), step)


# -- loading, evaluation, prediction ------------------------------------------------------------
def load_detector(path: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a ``rlgen train detection`` checkpoint (a run directory means its
    ``best.pt``), in eval mode, and its ``meta`` (classes, image size, ...) with ``config``
    and ``checkpoint``."""
    from rlgen.checkpoint import CheckpointError, load_checkpoint
    from rlgen.vision.classification import classifier_checkpoint

    path = classifier_checkpoint(path)
    state = load_checkpoint(path)
    if state.get("task") != "detection":
        raise CheckpointError(f"{path} is not a detection checkpoint (it holds a "
                              f"{state.get('task')!r} run)")
    meta = state["meta"]
    model = build_detector(meta["model"], meta["num_classes"], meta["in_channels"],
                           meta["backbone"], tuple(meta["image_size"]), meta["model_options"],
                           meta.get("backbone_options"))
    model.load_state_dict(state["state"]["model"])
    return model.to(device).eval(), {**meta, "checkpoint": str(path),
                                     "config": state.get("config", {})}


@dataclass
class DetectionEvalConfig:
    """COCO mAP (0.5:0.95 and 0.5) and VOC mAP@0.5 of a detector, with per-class AP."""

    checkpoint: str = ""
    """checkpoint file or run directory (its best.pt when there is one)"""
    dataset: str | None = None
    """dataset (None: the checkpoint's)"""
    data_root: str | None = None
    """dataset directory (None: the checkpoint's)"""
    split: Literal["test", "train"] = "test"
    """which split to evaluate (test: the held-out one)"""
    num_images: int | None = None
    """images to evaluate (None: the whole split)"""
    score_threshold: float | None = None
    """drop detections scoring below this (None: the model's, 0.05)"""
    batch_size: int = 32
    """images per forward pass"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}")
        check(self.num_images is None or self.num_images >= 1,
              f"--num-images must be >= 1, got {self.num_images}")
        check(self.score_threshold is None or 0 <= self.score_threshold <= 1,
              f"--score-threshold must be in [0, 1], got {self.score_threshold}")


def evaluate(config: DetectionEvalConfig) -> dict[str, Any]:
    """``rlgen eval detection``: a per-class AP table (VOC all-point AP at IoU 0.5 and COCO AP
    at 0.5:0.95, in percent), then one JSON line of figures."""
    from types import SimpleNamespace

    from rlgen.runtime import resolve_device

    model, meta = load_detector(config.checkpoint, resolve_device(config.device))
    if config.score_threshold is not None:
        model.score_threshold = config.score_threshold
    trained = meta["config"]
    source = SimpleNamespace(
        dataset=config.dataset or trained.get("dataset", "det-shapes"),
        data_root=config.data_root or trained.get("data_root", "data"), download=False,
        image_size=tuple(meta["image_size"]),
        dataset_options=trained.get("dataset_options", ()) if not config.dataset else ())
    dataset = load_split(source, config.split == "train")
    if list(dataset.classes) != list(meta["classes"]):
        raise InputError(f"{config.checkpoint} was trained on the classes {meta['classes']}, "
                         f"but {source.dataset} has {dataset.classes}")
    scores = evaluate_detector(model, dataset, config.num_images, config.batch_size)
    width = max(len(c) for c in meta["classes"])
    print(f"{'class':<{width}}  AP@0.5  AP@[.5:.95]")
    for name, ap in scores["per_class"].items():
        print(f"{name:<{width}}  {_pct(ap['ap_50'])}  {_pct(ap['ap'])}")
    result = {key: scores[key] for key in HEADLINE}
    result.update(checkpoint=meta["checkpoint"], split=config.split,
                  images=min(config.num_images or len(dataset), len(dataset)),
                  per_class_ap_50={n: v["ap_50"] for n, v in scores["per_class"].items()},
                  per_class_ap={n: v["ap"] for n, v in scores["per_class"].items()})
    print(json.dumps(result))
    return result


def _pct(value: float) -> str:
    return "   n/a" if value < 0 or math.isnan(value) else f"{100 * value:6.2f}"


@dataclass
class DetectionPredictConfig:
    """Find the objects in your image: labelled boxes with their scores."""

    checkpoint: str = ""
    """checkpoint file or run directory (its best.pt when there is one)"""
    image: str = ""
    """the image file"""
    out: str = "boxes.png"
    """the picture written: the image with labelled boxes and scores"""
    score_threshold: float = 0.3
    """draw and print the detections scoring at least this"""
    scale: int | None = None
    """enlarge the picture this many times (None: so its shorter side is >= 256 pixels)"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(bool(self.image), "--image is required")
        check(0 <= self.score_threshold <= 1,
              f"--score-threshold must be in [0, 1], got {self.score_threshold}")
        check(self.scale is None or self.scale >= 1, f"--scale must be >= 1, got {self.scale}")


def predict(config: DetectionPredictConfig) -> dict[str, Any]:
    """``rlgen predict detection``: the image is resized to the training size, detected, and
    the boxes mapped back to the image's own pixels, drawn and printed (one JSON line)."""
    from rlgen.data.folder import load_image
    from rlgen.data.images import save_image
    from rlgen.runtime import resolve_device
    from rlgen.vision.pictures import draw_boxes

    model, meta = load_detector(config.checkpoint, resolve_device(config.device))
    model.score_threshold = min(config.score_threshold, getattr(model, "score_threshold", 1.0))
    mode = "L" if meta["in_channels"] == 1 else "RGB"
    original = torch.as_tensor(load_image(config.image, mode=mode).copy())
    h, w = (int(s) for s in meta["image_size"])
    resized = torch.as_tensor(load_image(config.image, mode=mode, size=(h, w)).copy())
    found = detect(model, resized[None])[0]
    keep = found["scores"] >= config.score_threshold
    found = {key: value[keep] for key, value in found.items()}
    oh, ow = original.shape[1:]
    boxes = found["boxes"] * torch.tensor([ow / w, oh / h, ow / w, oh / h])
    scale = config.scale or max(1, -(-256 // min(oh, ow)))
    picture = draw_boxes(original, boxes, found["labels"], found["scores"], meta["classes"],
                         scale=scale)
    path = save_image(picture.float() / 255, config.out)
    listed = [{"label": meta["classes"][int(label)], "score": round(float(score), 4),
               "box": [round(float(v), 1) for v in box]}
              for box, label, score in zip(boxes, found["labels"], found["scores"])]
    print(json.dumps({"out": str(path), "detections": listed}))
    return {"out": str(path), "detections": listed, "boxes": boxes,
            "labels": found["labels"], "scores": found["scores"]}


@TRAINERS.register("detection", description="Object detection: YOLO v1, Faster R-CNN on any "
                                             "backbone")
def detection_trainer():
    from rlgen.cli_spec import TrainerSpec

    return TrainerSpec(config=DetectionConfig, train=train,
                       evaluate=(DetectionEvalConfig, evaluate),
                       predict=(DetectionPredictConfig, predict))
