"""The region proposal network of Faster R-CNN (Ren et al. 2015, section 3.1), and the two
pieces the detection head shares with it: matching boxes to ground truths by IoU and sampling
a balanced mini-batch of positives and negatives.

- Head: a 3x3 convolution (same channels) + ReLU over each feature map, then two 1x1
  convolutions: one objectness logit and four box deltas per anchor (weights N(0, 0.01),
  zero biases, as the paper).
- Training labels per image: an anchor is positive when its IoU with some ground truth is
  >= 0.7, or when it has the highest IoU with a ground truth (ties included; only when that
  IoU is above 0, so an image whose object overlaps no anchor labels no anchor positive by
  accident); negative below 0.3; ignored between. Cross-boundary anchors are kept (as
  torchvision and Detectron2 do), not ignored as in the paper's training.
- 256 anchors are sampled per image, up to half positive (the rest negative); loss: binary
  cross-entropy on the objectness of the sampled anchors (mean), smooth L1 (beta 1/9) on the
  positives' deltas, summed and divided by the number of sampled anchors; deltas encoded with
  weights (1, 1, 1, 1).
- Proposals per image: on each level the ``pre_nms_top_n`` anchors with the highest
  objectness, decoded, clipped to the image, boxes thinner than ``min_size`` removed, NMS at
  0.7 (per level), the ``post_nms_top_n`` best kept. The counts differ between a training
  pass (``targets`` given: 2000 / 2000) and an inference pass (1000 / 1000), torchvision's
  defaults (the paper: 12000 / 2000 and 6000 / 300).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlgen.vision.boxes import (
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    decode_boxes,
    encode_boxes,
    remove_small_boxes,
)
from rlgen.vision.detection.anchors import AnchorGenerator

__all__ = ["BELOW_LOW", "BETWEEN", "RPNHead", "RegionProposalNetwork", "match_boxes",
           "sample_balanced"]

BELOW_LOW = -1  # match_boxes: IoU below the low threshold (a negative)
BETWEEN = -2  # match_boxes: IoU between the thresholds (ignored)


def match_boxes(iou: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    """For each column of ``iou`` ``(G, P)`` (G ground truths, P anchors or proposals): the
    index of its best ground truth when that IoU is ``>= high``, ``BELOW_LOW`` when it is
    ``< low``, ``BETWEEN`` otherwise. ``allow_low_quality``: every column holding a ground
    truth's highest IoU (ties included, IoU > 0) is matched to its best ground truth anyway.
    No ground truth: every column is ``BELOW_LOW``."""
    num_columns = iou.shape[1]
    if iou.shape[0] == 0:
        return torch.full((num_columns,), BELOW_LOW, dtype=torch.int64, device=iou.device)
    best, matches = iou.max(dim=0)
    result = matches.clone()
    result[best < high] = BETWEEN
    result[best < low] = BELOW_LOW
    if allow_low_quality:
        highest = iou.max(dim=1, keepdim=True).values
        is_best = (iou == highest) & (highest > 0)
        columns = is_best.any(dim=0)
        result[columns] = matches[columns]
    return result


def sample_balanced(labels: Tensor, batch_size: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Indices of a random sample of positives (``labels >= 1``) and negatives (``labels ==
    0``; ``-1`` is ignored): up to ``batch_size * positive_fraction`` positives, negatives
    filling the rest of ``batch_size`` when there are enough."""
    positive = torch.nonzero(labels >= 1).flatten()
    negative = torch.nonzero(labels == 0).flatten()
    num_pos = min(int(batch_size * positive_fraction), positive.numel())
    num_neg = min(batch_size - num_pos, negative.numel())

    def pick(idx: Tensor, n: int) -> Tensor:
        perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:n]
        return idx[perm.to(idx.device)]

    return pick(positive, num_pos), pick(negative, num_neg)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then per anchor an objectness logit and 4 box deltas (1x1 convs)."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness ``(N, A, H, W)`` and deltas ``(N, 4A, H, W)``."""
        objectness, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            objectness.append(self.objectness(t))
            deltas.append(self.deltas(t))
        return objectness, deltas


def _flatten_level(obj: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, A, H, W)`` and ``(N, 4A, H, W)`` -> ``(N, H*W*A)`` and ``(N, H*W*A, 4)``,
    location-major like the anchors."""
    n, a, h, w = obj.shape
    obj = obj.permute(0, 2, 3, 1).reshape(n, -1)
    deltas = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
    return obj, deltas


class RegionProposalNetwork(nn.Module):
    """Objectness and box deltas per anchor, proposals, and (with targets) the RPN losses."""

    def __init__(self, anchors: AnchorGenerator, in_channels: int, *,
                 fg_iou_threshold: float = 0.7, bg_iou_threshold: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n_train: int = 2000, pre_nms_top_n_test: int = 1000,
                 post_nms_top_n_train: int = 2000, post_nms_top_n_test: int = 1000,
                 nms_iou: float = 0.7, min_size: float = 1e-3,
                 box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 smooth_l1_beta: float = 1 / 9):
        super().__init__()
        counts = set(anchors.num_anchors_per_location())
        if len(counts) != 1:
            raise ValueError(f"the RPN head shares its convolutions across levels, so every "
                             f"level needs the same number of anchors per location, got "
                             f"{anchors.num_anchors_per_location()}")
        self.anchors = anchors
        self.head = RPNHead(in_channels, counts.pop())
        self.fg_iou_threshold, self.bg_iou_threshold = fg_iou_threshold, bg_iou_threshold
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.pre_nms_top_n = {"train": pre_nms_top_n_train, "test": pre_nms_top_n_test}
        self.post_nms_top_n = {"train": post_nms_top_n_train, "test": post_nms_top_n_test}
        self.nms_iou, self.min_size = nms_iou, min_size
        self.box_weights, self.smooth_l1_beta = box_weights, smooth_l1_beta

    def label_anchors(self, anchors: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Labels ``(A,)`` (1 positive, 0 negative, -1 ignored) and the matched ground truth
        box of every anchor ``(A, 4)`` (anything where there is none)."""
        if gt_boxes.shape[0] == 0:
            return (torch.zeros(anchors.shape[0], device=anchors.device),
                    torch.zeros_like(anchors))
        matches = match_boxes(box_iou(gt_boxes, anchors), self.fg_iou_threshold,
                              self.bg_iou_threshold, allow_low_quality=True)
        labels = (matches >= 0).float()
        labels[matches == BETWEEN] = -1.0
        return labels, gt_boxes[matches.clamp(min=0)]

    def losses(self, anchors: Tensor, objectness: Tensor, deltas: Tensor,
               targets: list[dict]) -> dict[str, Tensor]:
        """Objectness BCE and box smooth L1 over 256 sampled anchors per image (fp32)."""
        sampled_pos, sampled_neg, target_deltas, pos_deltas = [], [], [], []
        for i, target in enumerate(targets):
            labels, matched = self.label_anchors(anchors, target["boxes"])
            pos, neg = sample_balanced(labels, self.batch_size_per_image,
                                       self.positive_fraction)
            offset = i * anchors.shape[0]
            sampled_pos.append(pos + offset)
            sampled_neg.append(neg + offset)
            target_deltas.append(encode_boxes(matched[pos], anchors[pos], self.box_weights))
            pos_deltas.append(deltas[i, pos])
        pos = torch.cat(sampled_pos)
        sampled = torch.cat([pos, torch.cat(sampled_neg)])
        flat = objectness.reshape(-1).float()
        truth = torch.cat([torch.ones_like(pos, dtype=torch.float32),
                           torch.zeros(sampled.numel() - pos.numel(), device=flat.device)])
        num = max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(flat[sampled], truth,
                                                             reduction="sum") / num
        box_loss = F.smooth_l1_loss(torch.cat(pos_deltas).float(), torch.cat(target_deltas),
                                    beta=self.smooth_l1_beta, reduction="sum") / num
        return {"rpn_objectness": objectness_loss, "rpn_box": box_loss}

    @torch.no_grad()
    def select_proposals(self, anchors: list[Tensor], objectness: list[Tensor],
                         deltas: list[Tensor], image_size: tuple[int, int],
                         mode: str) -> list[Tensor]:
        """Per image ``(P, 4)`` proposals: per level top-k by objectness, decode, clip,
        remove small, per-level NMS, the best ``post_nms_top_n`` overall."""
        n = objectness[0].shape[0]
        boxes, scores, levels = [], [], []
        for level, (a, obj, d) in enumerate(zip(anchors, objectness, deltas)):
            k = min(self.pre_nms_top_n[mode], obj.shape[1])
            top, idx = obj.float().topk(k, dim=1)
            chosen = torch.gather(d.float(), 1, idx[..., None].expand(n, k, 4))
            decoded = decode_boxes(chosen.reshape(-1, 4), a[idx.reshape(-1)], self.box_weights)
            boxes.append(decoded.view(n, k, 4))
            scores.append(top)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=top.device))
        boxes, scores, levels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(levels)
        proposals = []
        for b, s in zip(boxes, scores):
            b = clip_boxes_to_image(b, image_size)
            keep = remove_small_boxes(b, self.min_size)
            b, s, lv = b[keep], s[keep], levels[keep]
            keep = batched_nms(b, s, lv, self.nms_iou)[: self.post_nms_top_n[mode]]
            proposals.append(b[keep])
        return proposals

    def forward(self, features: list[Tensor], image_size: tuple[int, int],
                targets: list[dict] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals (one ``(P_i, 4)`` tensor per image) and, with ``targets``, the losses."""
        objectness, deltas = self.head(features)
        sizes = [tuple(f.shape[-2:]) for f in features]
        anchors = self.anchors(sizes, device=features[0].device)
        flat = [_flatten_level(o, d) for o, d in zip(objectness, deltas)]
        obj_levels = [o for o, _ in flat]
        delta_levels = [d for _, d in flat]
        mode = "train" if targets is not None else "test"
        proposals = self.select_proposals(anchors, obj_levels, delta_levels, image_size, mode)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self.losses(torch.cat(anchors), torch.cat(obj_levels, 1),
                                 torch.cat(delta_levels, 1), targets)
        return proposals, losses
