"""Box operations with torchvision's semantics: areas, IoU, format conversion, clipping,
non-maximum suppression and Faster R-CNN's box coding.

Boxes are ``(N, 4)`` float tensors ``(x1, y1, x2, y2)`` in pixels, on a continuous plane: a
box's width is ``x2 - x1`` (no ``+ 1``, unlike the Pascal VOC devkit's inclusive pixel
indices). Every function here computes what ``torchvision.ops`` (and, for the box coding,
``torchvision.models.detection._utils.BoxCoder``) computes, operation for operation, so the
floating-point results are the same bit for bit, with these documented conventions:

- ``box_area`` / ``box_iou`` / ``generalized_box_iou``: torchvision's expressions, in the
  boxes' dtype (float16 / bfloat16 upcast to float32, integers to int32 / int64 as
  torchvision's ``_upcast``; an integer IoU is a float32 true division). ``iou = inter /
  union`` with ``union = area_a + area_b - inter`` and nothing added: a zero-area box against
  a box it does not meet gives 0, two zero-area boxes give ``0 / 0 = NaN``, as in
  torchvision. Boxes with ``x2 < x1`` get a negative area, as in torchvision (garbage in).
- ``nms``: greedy, by decreasing score; a box is dropped when its IoU with an already kept
  box is *strictly greater* than ``iou_threshold``. The IoU is torchvision's CPU kernel's
  ``inter / (area_i + area_j - inter)`` in the boxes' dtype (float16 / bfloat16 boxes, which
  that kernel refuses, in float32), with its ``std::max`` / ``std::min``, compared with the
  threshold in float64 (the kernel's ``double``: an IoU of 0.1 in float32, 0.10000000149,
  is above a threshold of 0.1), so an IoU of NaN (two identical zero-area boxes) never
  suppresses. The same arithmetic on CUDA (torchvision's CUDA kernel compares in float32).
  Kept indices (int64) come by decreasing score.
- Ties in score. ``stable=True`` (the default): equal scores keep their input order (the
  lower index first, processed first), on every device and torch release. torchvision's
  kernels sort with ``scores.sort(0, descending=True)``, which is not stable: with torch
  2.13 on CPU it kept the input order for up to 16 boxes in our checks and reorders ties
  beyond. So ``stable=True`` keeps torchvision's set whenever no two boxes with the same
  score overlap above the threshold, in its order too up to 16 boxes; torchvision's
  docstring itself warns that CPU and CUDA may pick different boxes among ties.
  ``stable=False`` calls that same torch sort, so on the same torch build and device the
  order, kept set included, is torchvision's.
- ``batched_nms``: NMS within each value of ``idxs``, on the boxes' own coordinates, which
  is torchvision's per-class path (taken for more than 1,000 boxes on CPU in current
  releases). For fewer, torchvision shifts each class by ``idx * (max_coord + 1)`` and runs
  one NMS: the same in exact arithmetic with nonnegative coordinates (integer-valued boxes,
  for instance), but the shift rounds the IoUs of float boxes (and with negative
  coordinates classes can overlap), so near the threshold its two paths can disagree.
  rlgen gives the per-class answer at every size. Order: the global score order (ties as
  ``stable``), what both torchvision paths return up to ties.
- ``encode_boxes`` / ``decode_boxes``: Faster R-CNN's parametrisation as torchvision's
  ``BoxCoder`` (widths ``x2 - x1``, centres ``x1 + 0.5 * w``, ``dx = wx * (gx - px) / pw``,
  ``dw = ww * log(gw / pw)``; decoding clamps ``dw, dh`` at ``log(1000 / 16)`` before
  ``exp``).

Everything runs on the tensors' device. NMS works on blocks of 256 boxes in score order, each
checked at once against the boxes kept so far and then resolved within itself by the greedy
scan over its 256 x 256 suppression matrix on the host (one host sync per block, as
torchvision's CUDA kernel scans its suppression bit masks on the host), with the kernel's
arithmetic pair by pair, so the kept set is the greedy scan's exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BOX_FORMATS",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "decode_boxes",
    "encode_boxes",
    "generalized_box_iou",
    "nms",
    "remove_small_boxes",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 4), "
                        f"got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (x1, y1, x2, y2), "
                         f"got {tuple(boxes.shape)}")


def _upcast(t: Tensor) -> Tensor:
    # torchvision.ops._utils._upcast: protects products from overflow
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(boxes: Tensor) -> Tensor:
    """``(x2 - x1) * (y2 - y1)`` of ``(N, 4)`` xyxy boxes, shape ``(N,)``."""
    _check_boxes(boxes)
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])  # (N, M, 2)
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``(N, M)`` of xyxy boxes: ``inter / (area1 + area2 - inter)``.

    Continuous coordinates (no ``+ 1``); two zero-area boxes give NaN (``0 / 0``), exactly as
    ``torchvision.ops.box_iou``."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _box_inter_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU ``(N, M)``: ``iou - (hull - union) / hull`` with ``hull`` the
    area of the smallest enclosing box (torchvision's expression; NaN where ``hull`` is 0)."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _box_inter_union(boxes1, boxes2)
    iou = inter / union
    lti = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rbi = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    whi = _upcast(rbi - lti).clamp(min=0)
    areai = whi[:, :, 0] * whi[:, :, 1]
    return iou - (areai - union) / areai


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``(..., 4)`` boxes between ``"xyxy"``, ``"xywh"`` (top-left corner, width,
    height) and ``"cxcywh"`` (centre, width, height), with torchvision's expressions (a
    conversion between the two non-xyxy formats goes through xyxy, as torchvision's does)."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {BOX_FORMATS}")
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 coordinates in the last dimension, "
                         f"got {tuple(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    if in_fmt == "xywh":
        x, y, w, h = boxes.unbind(-1)
        boxes = torch.stack([x, y, x + w, y + h], dim=-1)
    elif in_fmt == "cxcywh":
        cx, cy, w, h = boxes.unbind(-1)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    if out_fmt == "xywh":
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)
    elif out_fmt == "cxcywh":
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
    return boxes


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp ``(..., 4)`` xyxy boxes to an image of ``size = (height, width)``: x to
    ``[0, width]``, y to ``[0, height]`` (torchvision's ``clip_boxes_to_image``)."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 coordinates in the last dimension, "
                         f"got {tuple(boxes.shape)}")
    height, width = size
    boxes_x = boxes[..., 0::2].clamp(min=0, max=width)
    boxes_y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((boxes_x, boxes_y), dim=boxes.dim()).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (int64, increasing) of the boxes whose width and height are both
    ``>= min_size`` (torchvision's ``remove_small_boxes``)."""
    _check_boxes(boxes)
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (ws >= min_size) & (hs >= min_size)
    return torch.where(keep)[0]


# -- non-maximum suppression ---------------------------------------------------------------


def _score_order(scores: Tensor, stable: bool) -> Tensor:
    if stable:
        return torch.sort(scores, dim=0, descending=True, stable=True)[1]
    # the very call torchvision's CPU and CUDA kernels make (not stable)
    return scores.sort(0, True)[1]


_NMS_BLOCK = 256


def _suppression(rows: Tensor, cols: Tensor, thr: float) -> Tensor:
    """``(R, C)`` bool: IoU of row box (the higher-scored, kept one: the kernel's ``i``) with
    column box (its ``j``) ``> thr``, computed as torchvision's CPU kernel does. ``rows`` /
    ``cols``: ``(n, 5)`` columns x1 y1 x2 y2 area."""
    ix1, iy1, ix2, iy2, iarea = (rows[:, k, None] for k in range(5))
    jx1, jy1, jx2, jy2, jarea = (cols[None, :, k] for k in range(5))
    # std::max(a, b) is a < b ? b : a and std::min(a, b) is b < a ? b : a (NaN included)
    xx1 = torch.where(ix1 < jx1, jx1, ix1)
    yy1 = torch.where(iy1 < jy1, jy1, iy1)
    xx2 = torch.where(jx2 < ix2, jx2, ix2)
    yy2 = torch.where(jy2 < iy2, jy2, iy2)
    zero = torch.zeros((), dtype=rows.dtype, device=rows.device)
    dw, dh = xx2.sub_(xx1), yy2.sub_(yy1)
    inter = torch.where(zero < dw, dw, zero).mul_(torch.where(zero < dh, dh, zero))
    ovr = inter / (iarea + jarea).sub_(inter)
    return ovr > _threshold_below(thr, rows.dtype)


def _threshold_below(thr: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value ``t <= thr``: for an IoU ``x`` of that dtype, ``x > t``
    exactly when ``x > thr`` in double precision (the kernel's comparison), without
    converting the IoU matrix to float64."""
    if dtype == torch.float64:
        return thr
    t = np.float32(thr)
    if float(t) > thr:
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)


def _scan(later: np.ndarray) -> np.ndarray:
    """The greedy scan over one block: ``later[i, j]`` (``j > i``) says box ``i`` would
    suppress box ``j``; visiting the boxes in order, a box not yet suppressed is kept and
    suppresses its row. On the host, one short vector operation per kept box."""
    keep = np.ones(later.shape[0], dtype=bool)
    for i in range(later.shape[0]):
        if keep[i]:
            keep[i + 1:] &= ~later[i, i + 1:]
    return keep


def _greedy_nms(boxes: Tensor, order: Tensor, iou_threshold: float) -> Tensor:
    """The positions in ``order`` that torchvision's CPU kernel keeps scanning ``order``,
    computed block by block: the boxes of a block (in score order) first meet every box kept
    before the block, then the survivors are resolved among themselves by the greedy scan on
    the host over their suppression matrix (``_scan``). Same IoU arithmetic as the kernel,
    pair by pair."""
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    sorted_boxes = boxes[order]
    x1, y1, x2, y2 = sorted_boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)  # the kernel's areas_t, in the boxes' dtype
    data = torch.stack([x1, y1, x2, y2, area], dim=1)
    n = order.numel()
    kept = torch.empty(0, dtype=torch.int64, device=boxes.device)
    for start in range(0, n, _NMS_BLOCK):
        block = torch.arange(start, min(start + _NMS_BLOCK, n), device=boxes.device)
        if kept.numel():
            block = block[~_suppression(data[kept], data[block], iou_threshold).any(0)]
        if not block.numel():
            continue
        later = _suppression(data[block], data[block], iou_threshold).triu_(1)
        keep = _scan(later.cpu().numpy())
        kept = torch.cat([kept, block[torch.from_numpy(keep).to(boxes.device)]])
    return kept


def _check_nms_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    _check_boxes(boxes)
    if not boxes.is_floating_point():
        raise TypeError(f"nms needs floating-point boxes (as torchvision's), got {boxes.dtype}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) to go with boxes "
                         f"{tuple(boxes.shape)}, got {tuple(scores.shape)}")
    if math.isnan(float(iou_threshold)):
        raise ValueError("iou_threshold is NaN")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, stable: bool = True) -> Tensor:
    """Greedy non-maximum suppression, ``torchvision.ops.nms``'s result.

    Visits the boxes by decreasing score and drops every box whose IoU with an already kept
    box is strictly greater than ``iou_threshold``. Returns the kept indices (int64) by
    decreasing score. Equal scores: the lower index first with ``stable=True``; with
    ``stable=False`` torch's unstable ``sort``, the order torchvision's kernels use (see the
    module docstring)."""
    _check_nms_inputs(boxes, scores, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = _score_order(scores, stable)
    return order[_greedy_nms(boxes, order, float(iou_threshold))]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *,
                stable: bool = True) -> Tensor:
    """NMS within each category of ``idxs`` (boxes of different categories never suppress
    each other); kept indices (int64) by decreasing score over all categories.

    The same answer as running ``nms`` on each category and merging by score, at every input
    size (torchvision's coordinate-offset shortcut for small inputs agrees except where its
    shifted float coordinates round an IoU across the threshold: see the module docstring)."""
    _check_nms_inputs(boxes, scores, iou_threshold)
    if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        raise ValueError(f"idxs must have shape ({boxes.shape[0]},), got {tuple(idxs.shape)}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = _score_order(scores, stable)
    sorted_classes = idxs.to(boxes.device)[order]
    kept = []  # positions in ``order``, class by class (each class its own greedy scan)
    for c in torch.unique(sorted_classes):
        positions = (sorted_classes == c).nonzero().squeeze(1)
        kept.append(positions[_greedy_nms(boxes, order[positions], float(iou_threshold))])
    return order[torch.cat(kept).sort().values]


# -- Faster R-CNN box coding ---------------------------------------------------------------


def encode_boxes(reference_boxes: Tensor, proposals: Tensor,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets ``(N, 4)`` that take ``proposals`` to ``reference_boxes`` (the
    ground truths), Faster R-CNN's parametrisation (torchvision's ``BoxCoder.encode_single``):
    ``dx = wx * (gx - px) / pw``, ``dy = wy * (gy - py) / ph``, ``dw = ww * log(gw / pw)``,
    ``dh = wh * log(gh / ph)``, with widths ``x2 - x1`` and centres ``x1 + 0.5 * w``."""
    _check_boxes(reference_boxes, "reference_boxes")
    _check_boxes(proposals, "proposals")
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ValueError(f"reference_boxes {tuple(reference_boxes.shape)} and proposals "
                         f"{tuple(proposals.shape)} must pair up row by row")
    w = torch.as_tensor(weights, dtype=reference_boxes.dtype, device=reference_boxes.device)
    wx, wy, ww, wh = w[0], w[1], w[2], w[3]
    px1, py1, px2, py2 = (proposals[:, i].unsqueeze(1) for i in range(4))
    gx1, gy1, gx2, gy2 = (reference_boxes[:, i].unsqueeze(1) for i in range(4))
    ex_widths = px2 - px1
    ex_heights = py2 - py1
    ex_ctr_x = px1 + 0.5 * ex_widths
    ex_ctr_y = py1 + 0.5 * ex_heights
    gt_widths = gx2 - gx1
    gt_heights = gy2 - gy1
    gt_ctr_x = gx1 + 0.5 * gt_widths
    gt_ctr_y = gy1 + 0.5 * gt_heights
    dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
    dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
    dw = ww * torch.log(gt_widths / ex_widths)
    dh = wh * torch.log(gt_heights / ex_heights)
    return torch.cat((dx, dy, dw, dh), dim=1)


def decode_boxes(deltas: Tensor, proposals: Tensor,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clamp: float = DEFAULT_BBOX_XFORM_CLIP) -> Tensor:
    """Apply ``deltas`` ``(N, 4 * K)`` (K boxes per proposal, e.g. one per class) to
    ``proposals`` ``(N, 4)``; returns xyxy boxes ``(N, 4 * K)`` (torchvision's
    ``BoxCoder.decode_single``): ``dw, dh`` are divided by their weights and clamped at
    ``clamp`` (default ``log(1000 / 16)``) before ``exp``. The inverse of ``encode_boxes``
    up to rounding (and the clamp)."""
    _check_boxes(proposals, "proposals")
    if deltas.dim() != 2 or deltas.shape[1] % 4 or deltas.shape[0] != proposals.shape[0]:
        raise ValueError(f"deltas must have shape ({proposals.shape[0]}, 4 * K), got "
                         f"{tuple(deltas.shape)}")
    boxes = proposals.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = (float(v) for v in weights)
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = deltas[:, 2::4] / ww
    dh = deltas[:, 3::4] / wh
    dw = torch.clamp(dw, max=clamp)
    dh = torch.clamp(dh, max=clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    half = torch.tensor(0.5, dtype=pred_ctr_x.dtype, device=pred_w.device)
    c_to_c_h = half * pred_h
    c_to_c_w = half * pred_w
    return torch.stack((pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h,
                        pred_ctr_x + c_to_c_w, pred_ctr_y + c_to_c_h), dim=2).flatten(1)
