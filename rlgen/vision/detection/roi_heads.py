"""The Fast R-CNN detection head (Girshick 2015) as Faster R-CNN uses it: pool a fixed-size
feature for each region, classify it over the classes plus background, regress one box per
class; with targets, sample the regions and compute the losses; without, turn the outputs into
detections.

- Pooling: RoI Align (default, ``aligned=True``, 2x2 samples per bin) or RoI max pooling
  (``pool="max"``, Fast R-CNN's), 7x7. With several feature maps (a feature pyramid), each
  region goes to the level ``k = floor(k0 + log2(sqrt(w * h) / s0))`` (Lin et al. 2017,
  eq. 1; ``k0 = 4``, ``s0 = 224`` there) where level ``k`` is the map of stride ``2**k``; ``k``
  is clamped to the levels present (the nearest one is taken).
- Box head: two fully connected layers with ReLU (1024 wide by default: the paper's VGG fc6 /
  fc7 shrunk as in the FPN paper's "2fc" head), or a small conv head (3x3 conv + batch norm +
  ReLU layers, then one fully connected layer); then class scores over ``num_classes + 1``
  (index 0 is background) and ``4 * (num_classes + 1)`` box deltas.
- Training: the ground-truth boxes are added to the proposals; a proposal is foreground when
  its best IoU with a ground truth is >= 0.5 (it takes that object's class), background when
  it is in ``[bg_iou_low, 0.5)`` (``bg_iou_low`` 0 by default; Fast R-CNN used 0.1), ignored
  below ``bg_iou_low``; 512 proposals per image, up to 25% foreground. Losses: cross-entropy
  over the classes, and smooth L1 (beta 1/9) on the deltas of the true class only, summed over
  the foreground and divided by the number of sampled proposals; deltas encoded with weights
  (10, 10, 5, 5).
- Inference: softmax scores, per-class boxes decoded and clipped to the image, background
  dropped, boxes thinner than 0.01 pixel removed, scores ``>= score_threshold`` kept, NMS per
  class at ``nms_iou``, the ``max_detections`` best kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlgen.vision.boxes import (
    batched_nms,
    box_area,
    box_iou,
    clip_boxes_to_image,
    decode_boxes,
    encode_boxes,
    remove_small_boxes,
)
from rlgen.vision.detection.roi_pooling import roi_align, roi_pool
from rlgen.vision.detection.rpn import BELOW_LOW, match_boxes, sample_balanced

__all__ = ["BoxPredictor", "ConvBoxHead", "MLPBoxHead", "RoIHeads", "RoIPooler",
           "assign_levels"]


def assign_levels(boxes: Tensor, strides: Sequence[int], canonical_scale: float = 224.0,
                  canonical_level: int = 4) -> Tensor:
    """Index into ``strides`` of the feature map each box is pooled from: the level ``k =
    floor(canonical_level + log2(sqrt(area) / canonical_scale))`` of the FPN paper, mapped to
    the map whose ``log2(stride)`` is nearest (so clamped to the finest / coarsest map)."""
    if len(strides) == 1:
        return torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    size = torch.sqrt(box_area(boxes).clamp(min=0))
    k = torch.floor(canonical_level + torch.log2(size / canonical_scale + 1e-8) + 1e-6)
    logs = torch.tensor([math.log2(s) for s in strides], device=boxes.device)
    return (k[:, None] - logs[None, :]).abs().argmin(dim=1)


class RoIPooler(nn.Module):
    """Fixed-size features ``(sum P_i, C, out, out)`` for per-image boxes over one or several
    feature maps of the given strides."""

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 2,
                 method: str = "align", canonical_scale: float = 224.0,
                 canonical_level: int = 4):
        super().__init__()
        if method not in ("align", "max"):
            raise ValueError(f"RoI pooling method must be 'align' or 'max', got {method!r}")
        self.strides = [int(s) for s in strides]
        self.output_size, self.sampling_ratio, self.method = output_size, sampling_ratio, method
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def _pool(self, features: Tensor, rois: Tensor, stride: int) -> Tensor:
        if self.method == "max":
            return roi_pool(features, rois, self.output_size, 1.0 / stride)
        return roi_align(features, rois, self.output_size, 1.0 / stride, self.sampling_ratio,
                         aligned=True)

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1)
                          for i, b in enumerate(boxes)])
        if len(features) == 1:
            return self._pool(features[0], rois, self.strides[0])
        levels = assign_levels(rois[:, 1:], self.strides, self.canonical_scale,
                               self.canonical_level)
        n, c = features[0].shape[:2]
        out = features[0].new_zeros((rois.shape[0], c, self.output_size, self.output_size))
        for level, (fmap, stride) in enumerate(zip(features, self.strides)):
            idx = torch.nonzero(levels == level).flatten()
            if idx.numel():
                out = out.index_copy(0, idx, self._pool(fmap, rois[idx], stride).to(out.dtype))
        return out


class MLPBoxHead(nn.Module):
    """Flatten, then two fully connected layers with ReLU (``representation_size`` wide)."""

    def __init__(self, in_channels: int, pool_size: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * pool_size**2, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_features = representation_size

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class ConvBoxHead(nn.Module):
    """``num_convs`` 3x3 conv + batch norm + ReLU layers, then one fully connected layer
    with ReLU (Detectron2's / torchvision's "4conv1fc" head family)."""

    def __init__(self, in_channels: int, pool_size: int, representation_size: int = 1024,
                 conv_channels: int = 256, num_convs: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(c, conv_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(conv_channels), nn.ReLU(inplace=True)]
            c = conv_channels
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(c * pool_size**2, representation_size)
        self.out_features = representation_size

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.convs(x).flatten(1)))


class BoxPredictor(nn.Module):
    """Class logits over ``num_classes + 1`` (0 = background) and per-class box deltas."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * (num_classes + 1))
        # small initial outputs, as Detectron2: near-uniform classes, near-zero deltas
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Pooler + box head + predictor, with proposal sampling, losses and post-processing."""

    def __init__(self, pooler: RoIPooler, head: nn.Module, predictor: BoxPredictor, *,
                 fg_iou_threshold: float = 0.5, bg_iou_low: float = 0.0,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 smooth_l1_beta: float = 1 / 9, min_size: float = 1e-2):
        super().__init__()
        self.pooler, self.head, self.predictor = pooler, head, predictor
        self.fg_iou_threshold, self.bg_iou_low = fg_iou_threshold, bg_iou_low
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.box_weights, self.smooth_l1_beta, self.min_size = box_weights, smooth_l1_beta, min_size

    def sample_proposals(self, proposals: list[Tensor], targets: list[dict]
                         ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Per image: the ground truths added, 512 proposals sampled (up to 25% foreground).
        Returns the sampled proposals, their labels (0 = background, class + 1) and their
        regression targets ``(sum, 4)`` (meaningful for the foreground only)."""
        sampled, all_labels, all_deltas = [], [], []
        for boxes, target in zip(proposals, targets):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            boxes = torch.cat([boxes, gt_boxes.to(boxes.dtype)])
            if gt_boxes.shape[0]:
                iou = box_iou(gt_boxes, boxes)
                matches = match_boxes(iou, self.fg_iou_threshold, self.fg_iou_threshold,
                                      allow_low_quality=False)
                matched = matches.clamp(min=0)
                labels = gt_labels[matched] + 1
                labels[matches == BELOW_LOW] = 0
                labels[iou.max(dim=0).values < self.bg_iou_low] = -1
                matched_boxes = gt_boxes[matched]
            else:
                labels = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                matched_boxes = torch.zeros_like(boxes)
            pos, neg = sample_balanced(labels, self.batch_size_per_image,
                                       self.positive_fraction)
            keep = torch.cat([pos, neg])
            labels = labels[keep]
            sampled.append(boxes[keep])
            all_labels.append(labels)
            all_deltas.append(encode_boxes(matched_boxes[keep], boxes[keep], self.box_weights))
        return sampled, torch.cat(all_labels), torch.cat(all_deltas)

    def losses(self, class_logits: Tensor, box_deltas: Tensor, labels: Tensor,
               target_deltas: Tensor) -> dict[str, Tensor]:
        class_logits, box_deltas = class_logits.float(), box_deltas.float()
        if labels.numel() == 0:  # nothing sampled anywhere: zero losses that keep the graph
            zero = class_logits.sum() * 0 + box_deltas.sum() * 0
            return {"roi_class": zero, "roi_box": zero.clone()}
        class_loss = F.cross_entropy(class_logits, labels)
        fg = torch.nonzero(labels > 0).flatten()
        per_class = box_deltas.view(box_deltas.shape[0], -1, 4)
        box_loss = F.smooth_l1_loss(per_class[fg, labels[fg]], target_deltas[fg],
                                    beta=self.smooth_l1_beta, reduction="sum")
        return {"roi_class": class_loss, "roi_box": box_loss / max(labels.numel(), 1)}

    def postprocess(self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                    image_size: tuple[int, int], score_threshold: float, nms_iou: float,
                    max_detections: int) -> list[dict[str, Tensor]]:
        class_logits, box_deltas = class_logits.float(), box_deltas.float()
        num_classes = class_logits.shape[1] - 1
        counts = [p.shape[0] for p in proposals]
        scores_all = F.softmax(class_logits, dim=-1).split(counts)
        deltas_all = box_deltas.split(counts)
        detections = []
        for scores, deltas, props in zip(scores_all, deltas_all, proposals):
            boxes = decode_boxes(deltas, props.float(), self.box_weights).view(-1, num_classes
                                                                               + 1, 4)
            boxes = clip_boxes_to_image(boxes, image_size)[:, 1:].reshape(-1, 4)
            labels = torch.arange(num_classes, device=boxes.device).repeat(props.shape[0])
            scores = scores[:, 1:].reshape(-1)
            keep = torch.nonzero(scores >= score_threshold).flatten()
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, nms_iou)[:max_detections]
            detections.append({"boxes": boxes[keep], "scores": scores[keep],
                               "labels": labels[keep]})
        return detections

    def forward(self, features: list[Tensor], proposals: list[Tensor],
                image_size: tuple[int, int], targets: list[dict] | None = None, *,
                score_threshold: float = 0.05, nms_iou: float = 0.5, max_detections: int = 100
                ) -> list[dict[str, Tensor]] | dict[str, Tensor]:
        """With ``targets``: the head's losses; without: per-image detections."""
        if targets is not None:
            proposals, labels, target_deltas = self.sample_proposals(proposals, targets)
        pooled = self.pooler(features, proposals)
        class_logits, box_deltas = self.predictor(self.head(pooled))
        if targets is not None:
            return self.losses(class_logits, box_deltas, labels, target_deltas)
        return self.postprocess(class_logits, box_deltas, proposals, image_size,
                                score_threshold, nms_iou, max_detections)
