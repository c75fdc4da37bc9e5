"""Faster R-CNN (Ren, He, Girshick, Sun, "Faster R-CNN: Towards Real-Time Object Detection with
Region Proposal Networks", NIPS 2015) on any registered backbone, optionally with a feature
pyramid (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

How the R-CNN family relates:

- R-CNN (Girshick et al., CVPR 2014): about 2000 proposals per image from selective search;
  each is cropped, warped to 227x227 and run through the whole CNN on its own; per-class linear
  SVMs score the CNN features and per-class linear regressors refine the boxes. One CNN pass
  per proposal, three separately trained stages.
- Fast R-CNN (Girshick, ICCV 2015): the CNN runs once per image; each proposal's region of the
  shared feature map is max-pooled to a fixed 7x7 grid (RoI pooling), and one head (two fully
  connected layers, then a softmax over the classes plus background and per-class box
  regression) is trained end to end with a multi-task loss. That head is ``RoIHeads`` here;
  run it on proposals of your own (selective search, ground truth, another detector's boxes)
  with ``model.detect_from_proposals(images, proposals)`` (or ``model(images, targets,
  proposals=...)`` to train it: then only the head's losses are returned).
- Faster R-CNN: the proposals come from a region proposal network sharing the same features
  (``rpn.py``): objectness and box deltas for anchors of several sizes and aspect ratios at
  every feature-map location (``anchors.py``), then NMS. RoI Align (Mask R-CNN's bilinear
  pooling without rounding, ``roi_pooling.py``) replaces RoI max pooling by default
  (``pool="max"`` restores it). Training here is end to end (the paper's "approximate joint
  training": proposals are treated as constants), as in torchvision and Detectron2, rather than
  the paper's 4-step alternating scheme.

The model follows rlgen's detector contract (``rlgen.vision.detection``): images ``(B, C, H,
W)`` in [0, 1] (standardised inside with ``image_mean`` / ``image_std``: ImageNet's for three
channels, its channel average otherwise); ``model(images, targets)`` returns the losses
``rpn_objectness``, ``rpn_box``, ``roi_class``, ``roi_box`` and their weighted sum ``loss``
(fp32 under autocast); ``model(images)`` returns per image ``{"boxes", "scores", "labels"}``
with labels ``0..num_classes-1`` (the background index 0 of the head is internal), at most
``model.max_detections`` (100), scores ``>= model.score_threshold`` (0.05), per-class NMS at
``model.nms_iou`` (0.5). What is returned depends only on ``targets``; train / eval mode only
switches batch norm and dropout. Any image size is accepted (all images of a batch share one);
``image_size`` sets the default anchor sizes (``anchors.default_anchor_sizes``: the paper's
128 / 256 / 512 pixels at a shorter side of 600 or more, scaled down with smaller images) and
the FPN level formula's canonical size (224 pixels at an 800-pixel shorter side, scaled the
same way).

Features: by default the backbone's last stage (``feature_info[-1]``); ``stage=`` picks
another by index or name (e.g. ``"layer3"``, the /16 map the paper's VGG-16 and ResNet "C4"
models use). ``fpn=True``: a pyramid over the stages from reduction 4 upwards (the last stage
of each reduction, at most four: ResNet's C2-C5), ``fpn_stages=`` to choose; one anchor size
per level; each RoI pooled from the level of the FPN paper's formula. (No extra P6 level.)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from rlgen.errors import InputError
from rlgen.registry import DETECTION_MODELS
from rlgen.vision.backbones import create_backbone
from rlgen.vision.detection.anchors import FPN_SHORT_SIDE, AnchorGenerator, default_anchor_sizes
from rlgen.vision.detection.fpn import FeaturePyramid
from rlgen.vision.detection.roi_heads import (
    BoxPredictor,
    ConvBoxHead,
    MLPBoxHead,
    RoIHeads,
    RoIPooler,
)
from rlgen.vision.detection.rpn import RegionProposalNetwork

__all__ = ["FasterRCNN", "FasterRCNNInputError", "faster_rcnn"]

NAME = "faster_rcnn"
LOSS_NAMES = ("rpn_objectness", "rpn_box", "roi_class", "roi_box")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FasterRCNNInputError(InputError):
    """Images, targets, proposals or options Faster R-CNN cannot take."""


def _error(message: str) -> FasterRCNNInputError:
    return FasterRCNNInputError(f"{NAME}: {message}")


def _stage_index(backbone: nn.Module, stage: int | str) -> int:
    info = backbone.feature_info
    names = [f.stage for f in info]
    if isinstance(stage, str):
        if stage not in names:
            raise _error(f"backbone {getattr(backbone, 'name', '?')!r} has no stage {stage!r}; "
                         f"its stages: {names}")
        return names.index(stage)
    if not -len(info) <= stage < len(info):
        raise _error(f"stage index {stage} out of range for backbone "
                     f"{getattr(backbone, 'name', '?')!r} with stages {names}")
    return stage % len(info)


def default_fpn_stages(backbone: nn.Module) -> list[int]:
    """The last stage of each reduction, from reduction 4 up (all if none reaches 4), at most
    the four coarsest."""
    last_of: dict[int, int] = {}
    for i, f in enumerate(backbone.feature_info):
        last_of[f.reduction] = i
    chosen = [i for r, i in sorted(last_of.items()) if r >= 4] or sorted(last_of.values())
    return chosen[-4:]


class FasterRCNN(nn.Module):
    """Backbone (+ optional FPN) -> region proposal network -> RoI pooling -> box head."""

    name = NAME

    def __init__(self, backbone: nn.Module, num_classes: int,
                 image_size: tuple[int, int] = (600, 1000), *, stage: int | str = -1,
                 fpn: bool = False, fpn_stages: Sequence[int | str] | None = None,
                 fpn_channels: int = 256,
                 anchor_sizes: Sequence[float] | Sequence[Sequence[float]] | None = None,
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 rpn_fg_iou_threshold: float = 0.7, rpn_bg_iou_threshold: float = 0.3,
                 rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                 rpn_nms_iou: float = 0.7,
                 pool: str = "align", pool_size: int = 7, sampling_ratio: int = 2,
                 canonical_scale: float | None = None,
                 box_head: str = "mlp", representation_size: int = 1024,
                 box_fg_iou_threshold: float = 0.5, box_bg_iou_low: float = 0.0,
                 box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
                 score_threshold: float = 0.05, nms_iou: float = 0.5, max_detections: int = 100,
                 image_mean: Sequence[float] | None = None,
                 image_std: Sequence[float] | None = None,
                 loss_weights: Mapping[str, float] | None = None):
        super().__init__()
        if num_classes < 1:
            raise _error(f"num_classes must be >= 1, got {num_classes}")
        if len(image_size) != 2 or min(image_size) < 1:
            raise _error(f"image_size must be (height, width) in pixels, got {image_size!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.in_channels = backbone.in_channels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.score_threshold, self.nms_iou, self.max_detections = (score_threshold, nms_iou,
                                                                   max_detections)
        self.loss_weights = {k: 1.0 for k in LOSS_NAMES}
        for key, value in (loss_weights or {}).items():
            if key not in self.loss_weights:
                raise _error(f"unknown loss {key!r} in loss_weights; losses: {LOSS_NAMES}")
            self.loss_weights[key] = float(value)

        info = backbone.feature_info
        if fpn:
            picked = fpn_stages if fpn_stages is not None else default_fpn_stages(backbone)
            self.stage_indices = [_stage_index(backbone, s) for s in picked]
            strides = [info[i].reduction for i in self.stage_indices]
            if not strides or any(b <= a for a, b in zip(strides, strides[1:])):
                raise _error(f"fpn_stages must be stages of increasing reduction, got "
                             f"{[info[i].stage for i in self.stage_indices]} with reductions "
                             f"{strides}")
            self.fpn = FeaturePyramid([info[i].channels for i in self.stage_indices],
                                      fpn_channels)
            channels = fpn_channels
        else:
            self.stage_indices = [_stage_index(backbone, stage)]
            strides = [info[self.stage_indices[0]].reduction]
            self.fpn = None
            channels = info[self.stage_indices[0]].channels
        self.strides = strides

        sizes = self._anchor_sizes(anchor_sizes, len(strides), fpn)
        anchors = AnchorGenerator(sizes, tuple(aspect_ratios), strides)
        self.rpn = RegionProposalNetwork(
            anchors, channels, fg_iou_threshold=rpn_fg_iou_threshold,
            bg_iou_threshold=rpn_bg_iou_threshold, batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=rpn_positive_fraction, pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            post_nms_top_n_train=rpn_post_nms_top_n_train,
            post_nms_top_n_test=rpn_post_nms_top_n_test, nms_iou=rpn_nms_iou)
        if canonical_scale is None:
            canonical_scale = 224.0 * min(1.0, min(self.image_size) / FPN_SHORT_SIDE)
        pooler = RoIPooler(strides, pool_size, sampling_ratio, pool, canonical_scale)
        if box_head == "mlp":
            head: nn.Module = MLPBoxHead(channels, pool_size, representation_size)
        elif box_head == "conv":
            head = ConvBoxHead(channels, pool_size, representation_size)
        else:
            raise _error(f"box_head must be 'mlp' or 'conv', got {box_head!r}")
        self.roi_heads = RoIHeads(
            pooler, head, BoxPredictor(head.out_features, num_classes),
            fg_iou_threshold=box_fg_iou_threshold, bg_iou_low=box_bg_iou_low,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction)

        c = self.in_channels
        mean = image_mean or (IMAGENET_MEAN if c == 3 else (sum(IMAGENET_MEAN) / 3,) * c)
        std = image_std or (IMAGENET_STD if c == 3 else (sum(IMAGENET_STD) / 3,) * c)
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise _error(f"image_mean / image_std need {c} values (std > 0), got {mean!r} / "
                         f"{std!r}")
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1,
                                                                                       1))
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def _anchor_sizes(self, sizes, levels: int, fpn: bool) -> tuple[tuple[float, ...], ...]:
        if sizes is None:
            return default_anchor_sizes(self.image_size, levels, fpn)
        sizes = list(sizes)
        if sizes and all(isinstance(s, int | float) for s in sizes):
            # flat: the sizes of the one map, or (with a pyramid) one size per level
            if fpn and levels > 1:
                if len(sizes) != levels:
                    raise _error(f"anchor_sizes: {levels} pyramid levels need {levels} sizes "
                                 f"(one per level) or one sequence per level, got {sizes}")
                return tuple((float(s),) for s in sizes)
            return (tuple(float(s) for s in sizes),) * levels
        if len(sizes) != levels:
            raise _error(f"anchor_sizes: expected {levels} sequence(s) (one per feature level), "
                         f"got {sizes}")
        return tuple(tuple(float(v) for v in s) for s in sizes)

    # -- input checks -------------------------------------------------------------------

    def check_images(self, images: Tensor) -> None:
        expected = f"(B, {self.in_channels}, H, W) floats in [0, 1]"
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise _error(f"expects images {expected}, got {shape}")
        if images.shape[1] != self.in_channels:
            raise _error(f"was built for {self.in_channels} input channels {expected}, got "
                         f"{images.shape[1]} channels in {tuple(images.shape)}")
        if not images.is_floating_point():
            raise _error(f"expects float images {expected}, got {images.dtype}")
        min_h, min_w = getattr(self.backbone, "min_input_size", (1, 1))
        if images.shape[0] == 0 or images.shape[2] < min_h or images.shape[3] < min_w:
            raise _error(f"needs a non-empty batch of images of at least {min_h}x{min_w} (its "
                         f"backbone's minimum), got {tuple(images.shape)}")

    def check_targets(self, targets, images: Tensor) -> list[dict[str, Tensor]]:
        """Targets moved to the images' device as float32 boxes / int64 labels, checked."""
        if not isinstance(targets, Sequence) or len(targets) != images.shape[0]:
            got = len(targets) if isinstance(targets, Sequence) else type(targets).__name__
            raise _error(f"targets must be a list of {images.shape[0]} dicts (one per image) "
                         f"with 'boxes' (N, 4) and 'labels' (N,), got {got}")
        checked = []
        for i, t in enumerate(targets):
            if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
                raise _error(f"targets[{i}] must be a dict with 'boxes' (N, 4) xyxy and "
                             f"'labels' (N,), got {type(t).__name__}")
            boxes = torch.as_tensor(t["boxes"]).to(images.device, torch.float32)
            labels = torch.as_tensor(t["labels"]).to(images.device)
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise _error(f"targets[{i}]['boxes'] must have shape (N, 4) (x1, y1, x2, y2), "
                             f"got {tuple(boxes.shape)}")
            if labels.shape != (boxes.shape[0],) or labels.is_floating_point():
                raise _error(f"targets[{i}]['labels'] must be integers of shape "
                             f"({boxes.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
            labels = labels.long()
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise _error(f"targets[{i}]['labels'] must lie in 0..{self.num_classes - 1} "
                             f"(no background index), got {labels.min().item()}.."
                             f"{labels.max().item()}")
            if not torch.isfinite(boxes).all():
                raise _error(f"targets[{i}]['boxes'] has non-finite values")
            bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                raise _error(f"targets[{i}]['boxes'] needs x2 > x1 and y2 > y1; box "
                             f"{boxes[bad][0].tolist()} is empty or reversed")
            checked.append({"boxes": boxes, "labels": labels})
        return checked

    def check_proposals(self, proposals, images: Tensor) -> list[Tensor]:
        if not isinstance(proposals, Sequence) or len(proposals) != images.shape[0]:
            raise _error(f"proposals must be a list of {images.shape[0]} (P, 4) xyxy tensors "
                         f"(one per image)")
        out = []
        for i, p in enumerate(proposals):
            p = torch.as_tensor(p).to(images.device, torch.float32)
            if p.dim() != 2 or p.shape[1] != 4:
                raise _error(f"proposals[{i}] must have shape (P, 4), got {tuple(p.shape)}")
            out.append(p)
        return out

    # -- forward ------------------------------------------------------------------------

    def features(self, images: Tensor) -> list[Tensor]:
        """The maps the RPN and the head work on (one, or the pyramid's levels)."""
        x = (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)
        stages = self.backbone.forward_stages(x)
        picked = [stages[i] for i in self.stage_indices]
        return self.fpn(picked) if self.fpn is not None else picked

    def forward(self, images: Tensor, targets: Sequence[Mapping] | None = None, *,
                proposals: Sequence[Tensor] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """With ``targets``: the loss dict; without: one detection dict per image.
        ``proposals``: skip the RPN and run the head on these boxes (Fast R-CNN)."""
        self.check_images(images)
        if targets is not None:
            targets = self.check_targets(targets, images)
        if proposals is not None:
            proposals = self.check_proposals(proposals, images)
        image_size = (images.shape[-2], images.shape[-1])
        features = self.features(images)
        losses: dict[str, Tensor] = {}
        if proposals is None:
            proposals, losses = self.rpn(features, image_size, targets)
        out = self.roi_heads(features, proposals, image_size, targets,
                             score_threshold=self.score_threshold, nms_iou=self.nms_iou,
                             max_detections=self.max_detections)
        if targets is None:
            return out
        losses.update(out)
        losses["loss"] = sum(self.loss_weights[k] * v for k, v in losses.items())
        return losses

    def detect_from_proposals(self, images: Tensor, proposals: Sequence[Tensor],
                              targets: Sequence[Mapping] | None = None
                              ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Fast R-CNN: the detection head on given per-image ``(P, 4)`` proposals (pixels);
        detections, or with ``targets`` the head's losses (``roi_class``, ``roi_box``,
        ``loss``)."""
        return self(images, targets, proposals=proposals)


_OPTIONS = [p for p in inspect.signature(FasterRCNN.__init__).parameters
            if p not in ("self", "backbone", "num_classes", "image_size")]


@DETECTION_MODELS.register(NAME)
def faster_rcnn(num_classes: int, in_channels: int = 3, backbone: str | nn.Module | None = None,
                image_size: tuple[int, int] = (600, 1000), *,
                backbone_kwargs: Mapping | None = None, **kw) -> FasterRCNN:
    """Faster R-CNN (Ren et al. 2015): RPN + RoI Align head on any backbone, optional FPN."""
    unknown = sorted(set(kw) - set(_OPTIONS))
    if unknown:
        raise _error(f"unknown option(s) {unknown}; options: {', '.join(_OPTIONS)}, "
                     f"backbone_kwargs")
    if in_channels < 1:
        raise _error(f"in_channels must be >= 1, got {in_channels}")
    if backbone is None or isinstance(backbone, str):
        backbone = create_backbone(backbone or "resnet18", in_channels=in_channels,
                                   **dict(backbone_kwargs or {}))
    elif not (isinstance(backbone, nn.Module) and hasattr(backbone, "feature_info")
              and hasattr(backbone, "forward_stages")):
        raise _error(f"backbone must be a registered backbone's name or a built backbone (an "
                     f"nn.Module with feature_info and forward_stages), got "
                     f"{type(backbone).__name__}")
    elif backbone.in_channels != in_channels:
        raise _error(f"backbone {getattr(backbone, 'name', '?')!r} takes "
                     f"{backbone.in_channels} input channels but in_channels={in_channels}")
    return FasterRCNN(backbone, num_classes, image_size, **kw)
