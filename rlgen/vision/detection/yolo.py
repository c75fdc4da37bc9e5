"""YOLO v1 (Redmon, Divvala, Girshick, Farhadi, "You Only Look Once: Unified, Real-Time Object
Detection", CVPR 2016) on any registered backbone.

The image is divided into an ``S x S`` grid (``grid``, 7 in the paper). Each cell predicts
``B`` boxes (``boxes_per_cell``, 2), each ``(x, y, sqrt(w), sqrt(h), confidence)``, and one set
of ``C`` class probabilities shared by its boxes: ``x, y`` are the box centre's offset inside
the cell (0..1), ``w, h`` the box size relative to the image, and the network outputs the
square roots of ``w`` and ``h`` (so the loss below compares square roots). Per cell the output
vector is laid out ``[box 1 (x, y, sqrt w, sqrt h, conf), ..., box B, class 1..C]``:
``(N, S, S, 5B + C)``. As in the paper the last layer is linear.

The loss (the paper's equation 3, a sum of squared errors over the batch, divided by the
number of images), per image:

- ``coord``: over the responsible predictors, ``(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2
  + (sqrt h - sqrt h^)^2``, weighted by ``lambda_coord`` (5);
- ``obj``: over the responsible predictors, ``(conf - IoU)^2``, the target being the IoU of
  that predicted box with its truth (the paper's definition of confidence; ``rescore=False``
  uses 1 instead);
- ``noobj``: over every other predictor (in cells without an object, and the non-responsible
  ones in cells with one), ``conf^2``, weighted by ``lambda_noobj`` (0.5);
- ``class``: over the cells that hold an object's centre, the squared error of the C class
  outputs against the one-hot class.

An object belongs to the cell holding its box centre; among that cell's ``B`` predictors the
one whose current box has the highest IoU with it is "responsible" (the first on ties). A cell
holds one object: when several centres fall in one cell, the largest box is the cell's (the
others get no predictor, a limit of YOLO v1 the paper discusses). ``difficult`` / ``iscrowd``
flags are not read in training. The returned dict holds the four unweighted sums and
``loss = lambda_coord * coord + obj + lambda_noobj * noobj + class``.

Detection: a box's class-specific score is ``confidence * P(class)`` (both outputs clamped to
[0, 1], since the linear outputs can stray outside), for every box and class; scores below
``score_threshold`` are dropped, then per-class NMS at ``nms_iou`` and the ``max_detections``
best are kept (``rlgen.vision.boxes.batched_nms``). Boxes are in pixels, clipped to the image.

Heads on the backbone's ``forward_features`` (``head=``):

- ``"conv"`` (the default): two 3x3 conv-BN-LeakyReLU(0.1) layers of ``head_channels``
  (256), the feature map averaged onto the ``S x S`` grid, and a 1x1 convolution to
  ``5B + C`` outputs per cell. It is the default because the paper's fully connected head
  holds ``S*S*head_channels*4096`` + ``4096*S*S*(5B+C)`` weights (218M at the paper's
  settings, more than most backbones) and ties the model to one input size; this one has
  under a million weights at 256 channels, takes any image size and trains in seconds on a
  CPU, at the cost of each cell seeing only its neighbourhood rather than the whole image.
- ``"paper"``: the paper's last layers: four 3x3 convolutions of ``head_channels`` (1024)
  with LeakyReLU(0.1) (the second with stride 2 when the feature map is at least twice the
  grid, as the paper's 14 -> 7), averaged onto the grid if it is not already ``S x S``,
  flattened, a fully connected layer of ``hidden`` (4096) units, LeakyReLU, dropout 0.5,
  and a fully connected layer to ``S*S*(5B+C)``. It needs images of ``image_size``.

The paper's own backbone (20 convolutions pre-trained on ImageNet) is not rebuilt here: any
registered backbone (``resnet18``, ``vgg16``, a plugin) takes its place. Images are
``(N, C, H, W)`` floats in [0, 1], standardised inside with ``mean`` / ``std``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from rlgen.errors import InputError
from rlgen.registry import DETECTION_MODELS
from rlgen.vision.boxes import batched_nms, box_convert
from rlgen.vision.layers import ConvBNAct

HEADS = ("conv", "paper")


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


def _backbone(backbone: str | nn.Module | None, in_channels: int) -> nn.Module:
    from rlgen.vision.backbones import create_backbone

    if backbone is None or isinstance(backbone, str):
        return create_backbone(backbone or "resnet18", in_channels=in_channels)
    if not (isinstance(backbone, nn.Module) and hasattr(backbone, "forward_features")
            and hasattr(backbone, "feature_info")):
        raise TypeError("yolov1: backbone must be a registered backbone's name or a built "
                        "backbone (an nn.Module with forward_features and feature_info), got "
                        f"{type(backbone).__name__}")
    if getattr(backbone, "in_channels", in_channels) != in_channels:
        raise ValueError(f"yolov1: the backbone takes {backbone.in_channels} input channels but "
                         f"in_channels={in_channels}")
    return backbone


class ConvHead(nn.Module):
    """conv-BN-leaky x2 -> average onto the S x S grid -> 1x1 conv to 5B + C per cell."""

    def __init__(self, in_channels: int, outputs: int, grid: int, channels: int = 256):
        super().__init__()
        self.grid = grid
        self.convs = nn.Sequential(ConvBNAct(in_channels, channels, 3, act_layer=_leaky),
                                   ConvBNAct(channels, channels, 3, act_layer=_leaky))
        self.out = nn.Conv2d(channels, outputs, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.convs(features), self.grid)
        return self.out(x).permute(0, 2, 3, 1)  # (N, S, S, 5B + C)


class PaperHead(nn.Module):
    """The paper's four 3x3 convs, fc ``hidden``, dropout, fc ``S*S*(5B + C)``."""

    def __init__(self, in_channels: int, outputs: int, grid: int, feature_size: tuple[int, int],
                 channels: int = 1024, hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.grid, self.outputs = grid, outputs
        stride = 2 if min(feature_size) >= 2 * grid else 1
        self.convs = nn.Sequential(
            ConvBNAct(in_channels, channels, 3, norm=False, act_layer=_leaky),
            ConvBNAct(channels, channels, 3, stride, norm=False, act_layer=_leaky),
            ConvBNAct(channels, channels, 3, norm=False, act_layer=_leaky),
            ConvBNAct(channels, channels, 3, norm=False, act_layer=_leaky))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(grid * grid * channels, hidden),
                                _leaky(), nn.Dropout(dropout),
                                nn.Linear(hidden, grid * grid * outputs))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.convs(features)
        if tuple(x.shape[-2:]) != (self.grid, self.grid):
            x = F.adaptive_avg_pool2d(x, self.grid)
        return self.fc(x).view(-1, self.grid, self.grid, self.outputs)


class YOLOv1(nn.Module):
    """YOLO v1 on a backbone (see the module docstring). ``model(images, targets)`` -> the
    losses; ``model(images)`` -> one ``{"boxes", "scores", "labels"}`` dict per image."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str | nn.Module | None = None,
        image_size: tuple[int, int] | int = (448, 448),
        *,
        grid: int = 7,
        boxes_per_cell: int = 2,
        head: str = "conv",
        head_channels: int | None = None,
        hidden: int = 4096,
        dropout: float = 0.5,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        rescore: bool = True,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.25,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
    ):
        super().__init__()
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("grid", grid), ("boxes_per_cell", boxes_per_cell),
                            ("max_detections", max_detections)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"yolov1: {name} must be an integer >= 1, got {value!r}")
        if head not in HEADS:
            raise ValueError(f"yolov1: head must be one of {', '.join(HEADS)}, got {head!r}")
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"yolov1: image_size must be (height, width), got {image_size!r}")
        self.num_classes, self.in_channels = num_classes, in_channels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid, self.boxes_per_cell, self.head_kind = grid, boxes_per_cell, head
        self.lambda_coord, self.lambda_noobj, self.rescore = lambda_coord, lambda_noobj, rescore
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.max_detections = max_detections
        self.backbone = _backbone(backbone, in_channels)
        shape = tuple(torch.as_tensor(mean, dtype=torch.float32).reshape(-1).shape)
        if shape[0] not in (1, in_channels):
            raise ValueError(f"yolov1: mean / std need 1 or {in_channels} values")
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32)
                             .reshape(-1).expand(in_channels).reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32)
                             .reshape(-1).expand(in_channels).reshape(1, -1, 1, 1).clone())
        channels = self.backbone.feature_info[-1].channels
        outputs = 5 * boxes_per_cell + num_classes
        if head == "conv":
            self.head: nn.Module = ConvHead(channels, outputs, grid, head_channels or 256)
        else:
            reduction = self.backbone.feature_info[-1].reduction
            feature = (max(1, self.image_size[0] // reduction),
                       max(1, self.image_size[1] // reduction))
            self.head = PaperHead(channels, outputs, grid, feature, head_channels or 1024,
                                  hidden, dropout)

    # -- checks ----------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise InputError(f"yolov1: images must be a float tensor (N, {self.in_channels}, H, "
                             f"W) in [0, 1], got {shape}")
        if images.shape[1] != self.in_channels:
            raise InputError(f"yolov1: built for {self.in_channels} input channels, got images "
                             f"of shape {tuple(images.shape)}")
        if self.head_kind == "paper" and tuple(images.shape[-2:]) != self.image_size:
            h, w = self.image_size
            raise InputError(f"yolov1 with the paper's fully connected head takes {h}x{w} "
                             f"images (its image_size), got {images.shape[2]}x{images.shape[3]}")

    def _check_targets(self, targets: Sequence[Mapping[str, torch.Tensor]], n: int) -> None:
        if not isinstance(targets, Sequence) or len(targets) != n:
            raise InputError(f"yolov1: targets must be a list of {n} dicts (one per image), got "
                             f"{len(targets) if isinstance(targets, Sequence) else type(targets)}")
        for i, t in enumerate(targets):
            if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
                raise InputError(f"yolov1: target {i} must be a dict with 'boxes' and 'labels'")
            boxes, labels = t["boxes"], t["labels"]
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise InputError(f"yolov1: target {i} boxes must be (N, 4) xyxy, got "
                                 f"{tuple(boxes.shape)}")
            if labels.shape != (boxes.shape[0],):
                raise InputError(f"yolov1: target {i} has {boxes.shape[0]} boxes but labels of "
                                 f"shape {tuple(labels.shape)}")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise InputError(f"yolov1: target {i} labels {labels.tolist()} are outside "
                                 f"0..{self.num_classes - 1}")

    # -- forward ---------------------------------------------------------------------------
    def raw_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """The network's output ``(N, S, S, 5B + C)`` for images in [0, 1]."""
        self._check_images(images)
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return self.head(self.backbone.forward_features(x))

    def forward(self, images: torch.Tensor,
                targets: Sequence[Mapping[str, torch.Tensor]] | None = None) -> Any:
        if targets is not None:
            self._check_targets(targets, images.shape[0] if isinstance(images, torch.Tensor)
                                and images.dim() == 4 else -1)
        raw = self.raw_outputs(images)
        size = (int(images.shape[2]), int(images.shape[3]))
        if targets is not None:
            return yolo_loss(raw, targets, size, self.boxes_per_cell, self.num_classes,
                             self.lambda_coord, self.lambda_noobj, self.rescore)
        return decode_predictions(raw, size, self.boxes_per_cell, self.num_classes,
                                  self.score_threshold, self.nms_iou, self.max_detections)


# -- the loss ------------------------------------------------------------------------------------
def _cell_boxes(raw_boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """``(..., S, S, B, 4+)`` predictions -> xyxy boxes relative to the image (0..1)."""
    s = raw_boxes.shape[-3]
    rows = torch.arange(s, device=raw_boxes.device, dtype=raw_boxes.dtype).view(s, 1, 1)
    cols = torch.arange(s, device=raw_boxes.device, dtype=raw_boxes.dtype).view(1, s, 1)
    cx = (cols + raw_boxes[..., 0]) / grid
    cy = (rows + raw_boxes[..., 1]) / grid
    w, h = raw_boxes[..., 2] ** 2, raw_boxes[..., 3] ** 2
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def assign_targets(targets: Sequence[Mapping[str, torch.Tensor]], grid: int,
                   image_size: tuple[int, int], device: torch.device | None = None
                   ) -> dict[str, torch.Tensor]:
    """Each cell's object, as the loss reads it: ``has_object`` bool (N, S, S), ``box``
    (N, S, S, 4) = (x offset in the cell, y offset, sqrt w, sqrt h), ``xyxy`` (N, S, S, 4)
    relative to the image, ``label`` int64 (N, S, S) (-1 where no object). A cell takes the
    object whose centre it holds; of several, the largest box (the first of equal ones)."""
    h, w = image_size
    n, s = len(targets), grid
    boxes = pad_sequence([t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
                          for t in targets] + [torch.zeros(1, 4, device=device)],
                         batch_first=True)[:n]  # (N, M, 4); the extra row makes M >= 1
    labels = pad_sequence([t["labels"].to(device=device, dtype=torch.int64).reshape(-1)
                           for t in targets] + [torch.full((1,), -1, device=device)],
                          batch_first=True, padding_value=-1)[:n]  # (N, M), -1 = no object
    cxcywh = box_convert(boxes / torch.tensor([w, h, w, h], dtype=torch.float32,
                                              device=device), "xyxy", "cxcywh")
    col = (cxcywh[..., 0] * s).floor().long().clamp(0, s - 1)
    row = (cxcywh[..., 1] * s).floor().long().clamp(0, s - 1)
    area = (cxcywh[..., 2] * cxcywh[..., 3]).clamp(min=0)
    in_cell = ((row * s + col)[..., None] == torch.arange(s * s, device=device)) \
        & (labels >= 0)[..., None]  # (N, M, S*S)
    keyed = torch.where(in_cell, area[..., None], torch.full_like(area[..., None], -1.0))
    best = keyed.argmax(1)  # (N, S*S): each cell's first largest object
    occupied = in_cell.any(1)

    def take(x: torch.Tensor) -> torch.Tensor:  # (N, M, ...) -> (N, S*S, ...) of `best`
        index = best.view(n, s * s, *([1] * (x.dim() - 2))).expand(n, s * s, *x.shape[2:])
        return x.gather(1, index)

    box = take(cxcywh)
    cells = torch.arange(s * s, device=device)
    r, c = (cells // s).to(box.dtype), (cells % s).to(box.dtype)
    offsets = torch.stack([box[..., 0] * s - c, box[..., 1] * s - r,
                           box[..., 2].clamp(min=0).sqrt(), box[..., 3].clamp(min=0).sqrt()], -1)
    zero = torch.zeros((), device=device)
    out = {"has_object": occupied.view(n, s, s),
           "box": torch.where(occupied[..., None], offsets, zero).view(n, s, s, 4),
           "xyxy": torch.where(occupied[..., None], box_convert(box, "cxcywh", "xyxy"),
                               zero).view(n, s, s, 4),
           "label": torch.where(occupied, take(labels), -1).view(n, s, s)}
    return out


def yolo_loss(raw: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]],
              image_size: tuple[int, int], boxes_per_cell: int, num_classes: int,
              lambda_coord: float = 5.0, lambda_noobj: float = 0.5, rescore: bool = True
              ) -> dict[str, torch.Tensor]:
    """The YOLO v1 loss of ``raw`` outputs ``(N, S, S, 5B + C)`` against per-image targets
    (boxes xyxy in pixels of ``image_size`` (h, w)); see the module docstring. In float32."""
    raw = raw.float()
    n, s = raw.shape[0], raw.shape[1]
    b, c = boxes_per_cell, num_classes
    if raw.dim() != 4 or raw.shape[2] != s or raw.shape[3] != 5 * b + c:
        raise InputError(f"yolov1: raw outputs must be (N, S, S, 5B + C) = (N, S, S, "
                         f"{5 * b + c}), got {tuple(raw.shape)}")
    assigned = assign_targets(targets, s, image_size, raw.device)
    pred = raw[..., :5 * b].reshape(n, s, s, b, 5)
    classes = raw[..., 5 * b:]
    has = assigned["has_object"]
    with torch.no_grad():
        boxes = _cell_boxes(pred, s)  # (N, S, S, B, 4)
        truth = assigned["xyxy"][:, :, :, None, :].expand_as(boxes)
        ious = _paired_iou(boxes, truth)  # (N, S, S, B)
        best = ious.argmax(-1)  # the first best on ties
        responsible = F.one_hot(best, b).bool() & has[..., None]
        target_conf = ious if rescore else torch.ones_like(ious)
    truth_box = assigned["box"][:, :, :, None, :].expand(n, s, s, b, 4)
    coord = ((pred[..., :4] - truth_box) ** 2).sum(-1)[responsible].sum()
    obj = ((pred[..., 4] - target_conf) ** 2)[responsible].sum()
    noobj = (pred[..., 4] ** 2)[~responsible].sum()
    onehot = F.one_hot(assigned["label"].clamp(min=0), c).float()
    cls = ((classes - onehot) ** 2).sum(-1)[has].sum()
    coord, obj, noobj, cls = (v / max(n, 1) for v in (coord, obj, noobj, cls))
    return {"coord": coord, "obj": obj, "noobj": noobj, "class": cls,
            "loss": lambda_coord * coord + obj + lambda_noobj * noobj + cls}


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[..., i]`` with ``b[..., i]`` (xyxy, same shapes); 0 for empty unions."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


# -- detection -----------------------------------------------------------------------------------
@torch.no_grad()
def decode_predictions(raw: torch.Tensor, image_size: tuple[int, int], boxes_per_cell: int,
                       num_classes: int, score_threshold: float = 0.05, nms_iou: float = 0.5,
                       max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
    """Raw outputs ``(N, S, S, 5B + C)`` -> per image ``{"boxes" (K, 4) xyxy pixels clipped to
    the image, "scores" (K,), "labels" (K,)}``, by decreasing score (see the module
    docstring: class-specific confidence, threshold, per-class NMS, top ``max_detections``)."""
    raw = raw.float()
    n, s = raw.shape[0], raw.shape[1]
    b, c = boxes_per_cell, num_classes
    h, w = image_size
    pred = raw[..., :5 * b].reshape(n, s, s, b, 5)
    boxes = _cell_boxes(pred, s) * torch.tensor([w, h, w, h], dtype=raw.dtype,
                                                device=raw.device)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
    conf = pred[..., 4].clamp(0, 1)  # (N, S, S, B)
    probs = raw[..., 5 * b:].clamp(0, 1)  # (N, S, S, C)
    scores = conf[..., None] * probs[:, :, :, None, :]  # (N, S, S, B, C)
    out = []
    for i in range(n):
        flat = scores[i].reshape(-1)
        keep = torch.nonzero(flat >= score_threshold).squeeze(1)
        box_index, label = keep // c, keep % c
        cand_boxes, cand_scores = boxes[i].reshape(-1, 4)[box_index], flat[keep]
        kept = batched_nms(cand_boxes, cand_scores, label, nms_iou)[:max_detections]
        out.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept],
                    "labels": label[kept]})
    return out


@DETECTION_MODELS.register("yolov1", description="YOLO v1 (Redmon et al. 2016): S x S grid, "
                                                  "B boxes per cell, sum-squared loss")
def yolov1(num_classes: int, in_channels: int = 3, backbone: str | nn.Module | None = None,
           image_size: tuple[int, int] | int = (448, 448), **kw: Any) -> YOLOv1:
    """YOLO v1 on ``backbone`` (default resnet18); keyword options as :class:`YOLOv1`."""
    return YOLOv1(num_classes, in_channels, backbone, image_size, **kw)
