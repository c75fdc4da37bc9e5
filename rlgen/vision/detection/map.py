"""Detection mean average precision, COCO's (pycocotools ``COCOeval``, bbox) and Pascal VOC's
(the devkit's ``VOCevaldet`` + ``VOCap``), from per-image lists of dicts as torchmetrics takes
them::

    predictions = [{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,)}, ...]  # one per image
    targets = [{"boxes": (G, 4) xyxy, "labels": (G,), "iscrowd": (G,) optional,
                "difficult": (G,) optional, "area": (G,) optional}, ...]
    scores = mean_average_precision(predictions, targets)
    scores["map"], scores["map_50"], scores["voc_map_50"], scores["map_per_class"], ...

Everything is computed in float64 on the CPU with NumPy, following the reference code step by
step, so that the numbers are the references' to the last bit: the tests find every figure
equal (``==``) to pycocotools' ``COCOeval`` on random scenes, whenever the ``(x, y, w, h)``
handed to pycocotools give back ``x + w == x2`` exactly (integer, dyadic or float32
coordinates), and equal to a literal port of the devkit. Even pycocotools' quirks are kept: a
precision is ``tp / (tp + fp + np.spacing(1))``, so a class with one object, found first,
scores 0.9999999999999998, not 1. The conventions:

COCO (``map``, ``map_50``, ``map_75``, ``map_small/medium/large``, ``mar_1``, ``mar_10``,
``mar_100``, ``mar_small/medium/large``, ``map_per_class``, ``mar_100_per_class``):

- IoU thresholds ``np.linspace(0.5, 0.95, 10)``; recall points ``np.linspace(0, 1, 101)``
  (101-point interpolation: at each recall point the largest precision at that recall or
  beyond, 0 past the highest recall reached); ``map`` is the mean over thresholds, recall
  points and classes that have a ground truth (non-crowd, in the area range); a class
  without any is -1 and left out of the means (-1 overall when no class has one).
- Detections: sorted by score, stable (equal scores keep their order: image by image, then
  within an image), and at most ``max_detections`` (100) per image *and class*, as
  pycocotools truncates per image and category.
- Matching, per image, class and threshold, in score order: a detection takes, among the
  ground truths not yet taken, the one with the largest IoU ``>= t`` (ties: the later
  one); a regular ground truth is preferred to an ignored one (crowd or outside the area
  range) whatever their IoUs. A detection matched to an ignored ground truth counts neither
  as a true nor as a false positive; an unmatched detection outside the area range is
  ignored too.
- Crowd ground truths (``iscrowd``): ignored, matchable by any number of detections, and
  their IoU is ``intersection / area(detection)`` (pycocotools' ``maskUtils.iou`` with
  ``iscrowd``). IoU otherwise: continuous coordinates, ``inter / (area_d + area_g - inter)``,
  0 when the boxes do not overlap with positive width and height (so zero-area boxes give 0,
  never NaN).
- Area ranges (on the ground truth's ``area`` if given, else ``(x2 - x1) * (y2 - y1)``; a
  detection's is its box's): all ``[0, 1e10]``, small ``[0, 32**2]``, medium
  ``[32**2, 96**2]``, large ``[96**2, 1e10]``, bounds included.
- ``mar_N``: the recall reached with ``N`` detections per image and class, averaged over
  thresholds and classes. ``difficult`` is not a COCO notion and is not read here.

Pascal VOC (``voc_map_50`` all-point as the 2010+ devkit, ``voc07_map_50`` 11-point as VOC2007,
``voc_ap_per_class``, ``voc07_ap_per_class``):

- Every detection counts (no per-image cap), sorted by score, stable (MATLAB's ``sort``).
- Each detection goes to the ground truth of its image and class with the largest IoU
  (ties: the first), among all of them, taken or not; it is a true positive when that IoU
  is ``>= 0.5`` (the devkit's ``ovmax >= VOCopts.minoverlap``; ``voc_strict_iou=True`` gives
  the ``> 0.5`` of the Python ports, py-faster-rcnn's ``voc_eval.py`` and detectron2) and that
  ground truth is not yet detected; a false positive when it is already detected (a
  duplicate) or the IoU is below; neither when that ground truth is ``difficult``.
- Recall over the non-difficult ground truths; a class without any is left out of the mean.
- All-point AP: the precision envelope (max to the right) summed over the recall change
  points; 11-point: the mean over ``np.arange(0, 1.1, 0.1)`` (the Python ports' thresholds)
  of the largest precision at recall ``>=`` the threshold.
- IoU: continuous coordinates by default; ``voc_inclusive_pixels=True`` adds the devkit's
  ``+ 1`` to every width and height, for boxes in VOC's annotation convention (1-based
  inclusive pixel indices). Converting those to continuous boxes as detectron2 does
  (``x1 - 1, y1 - 1, x2, y2``) and using the default gives the same IoUs.
- ``iscrowd`` is not a VOC notion and is not read here.

Where COCO and VOC differ, in short: COCO averages 10 IoU thresholds and VOC uses 0.5 alone;
COCO matches ``IoU >= t`` to the best *free* ground truth while VOC takes the best ground truth
and calls a duplicate a false positive even if another free one overlaps enough; COCO caps
detections per image and class; COCO interpolates at 101 recall points, VOC integrates the
envelope exactly (2010+) or at 11 points (2007); COCO ignores crowds, VOC difficult objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["COCO_AREA_RANGES", "mean_average_precision"]

COCO_AREA_RANGES = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}


def _coco_iou_thresholds() -> np.ndarray:
    return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


def _coco_recall_thresholds() -> np.ndarray:
    return np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class _Image:
    det_boxes: np.ndarray   # (D, 4) float64
    det_scores: np.ndarray  # (D,) float64
    det_labels: np.ndarray  # (D,) int64
    gt_boxes: np.ndarray    # (G, 4) float64
    gt_labels: np.ndarray   # (G,) int64
    gt_crowd: np.ndarray    # (G,) bool
    gt_difficult: np.ndarray  # (G,) bool
    gt_area: np.ndarray     # (G,) float64


def _array(value, name: str, where: str, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}[{name!r}] must be numeric, got {value!r}") from error


def _boxes(entry: Mapping, where: str) -> np.ndarray:
    if "boxes" not in entry:
        raise ValueError(f"{where} has no 'boxes' (an (N, 4) xyxy tensor)")
    boxes = _array(entry["boxes"], "boxes", where, np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}['boxes'] must have shape (N, 4) (x1, y1, x2, y2), "
                         f"got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{where}['boxes'] has non-finite coordinates")
    return boxes


def _vector(entry: Mapping, key: str, n: int, where: str, dtype, default=None) -> np.ndarray:
    if key not in entry or entry[key] is None:
        if default is None:
            raise ValueError(f"{where} has no {key!r} (a tensor of {n} values)")
        return np.full(n, default, dtype=dtype)
    values = _array(entry[key], key, where, dtype).reshape(-1)
    if values.shape[0] != n:
        raise ValueError(f"{where}[{key!r}] has {values.shape[0]} values for {n} boxes")
    return values


def _labels(entry: Mapping, n: int, where: str) -> np.ndarray:
    raw = _vector(entry, "labels", n, where, np.float64)
    if n and (not np.isfinite(raw).all() or (raw != np.round(raw)).any()):
        raise ValueError(f"{where}['labels'] must be integers")
    return raw.astype(np.int64)


def _read(predictions: Sequence[Mapping], targets: Sequence[Mapping]) -> list[_Image]:
    if len(predictions) != len(targets):
        raise ValueError(f"predictions and targets must list the same images: got "
                         f"{len(predictions)} predictions and {len(targets)} targets")
    images = []
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        where = f"predictions[{i}]"
        det_boxes = _boxes(pred, where)
        d = det_boxes.shape[0]
        det_scores = _vector(pred, "scores", d, where, np.float64)
        if np.isnan(det_scores).any():
            raise ValueError(f"{where}['scores'] has NaN scores")
        det_labels = _labels(pred, d, where)
        where = f"targets[{i}]"
        gt_boxes = _boxes(target, where)
        g = gt_boxes.shape[0]
        gt_labels = _labels(target, g, where)
        crowd = _vector(target, "iscrowd", g, where, np.float64, 0) != 0
        difficult = _vector(target, "difficult", g, where, np.float64, 0) != 0
        widths = gt_boxes[:, 2] - gt_boxes[:, 0]
        heights = gt_boxes[:, 3] - gt_boxes[:, 1]
        if "area" in target and target["area"] is not None:
            area = _vector(target, "area", g, where, np.float64)
        else:
            area = widths * heights
        images.append(_Image(det_boxes, det_scores, det_labels, gt_boxes, gt_labels, crowd,
                             difficult, area))
    return images


# -- COCO ----------------------------------------------------------------------------------


def _coco_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``(D, G)`` IoUs as pycocotools' ``bbIou``: 0 unless the overlap has positive width and
    height; a crowd ground truth's union is the detection's area."""
    dw = dets[:, 2] - dets[:, 0]
    dh = dets[:, 3] - dets[:, 1]
    gw = gts[:, 2] - gts[:, 0]
    gh = gts[:, 3] - gts[:, 1]
    da = (dw * dh)[:, None]
    ga = (gw * gh)[None, :]
    d, g = dets[:, None, :], gts[None, :, :]
    w = np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    overlap = (w > 0) & (h > 0)
    inter = w * h
    union = np.where(crowd[None, :], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(overlap, iou, 0.0)


def _coco_match(ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray,
                thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' ``evaluateImg`` matching for all thresholds at once; ``ious`` has the
    detections in score order. Returns ``(matched, matched_to_ignored)``, both ``(T, D)``."""
    n_thr = thresholds.shape[0]
    n_det, n_gt = ious.shape
    det_matched = np.zeros((n_thr, n_det), dtype=bool)
    det_ignored = np.zeros((n_thr, n_det), dtype=bool)
    if n_det == 0 or n_gt == 0:
        return det_matched, det_ignored
    gt_taken = np.zeros((n_thr, n_gt), dtype=bool)
    floor = np.minimum(thresholds, 1 - 1e-10)[:, None]  # pycocotools' min([t, 1 - 1e-10])
    regular = ~gt_ignore
    rows = np.arange(n_thr)
    for d in range(n_det):
        iou = ious[d]
        good = (~gt_taken | crowd) & (iou >= floor)           # (T, G)
        good_regular = good & regular
        candidates = np.where(good_regular.any(1, keepdims=True), good_regular, good & gt_ignore)
        found = candidates.any(1)
        if not found.any():
            continue
        values = np.where(candidates, iou, -np.inf)
        best = values.max(1, keepdims=True)
        is_best = candidates & (values == best)
        m = n_gt - 1 - np.argmax(is_best[:, ::-1], axis=1)  # the last best ground truth
        t, m = rows[found], m[found]
        det_matched[t, d] = True
        det_ignored[t, d] = gt_ignore[m]
        gt_taken[t, m] = True
    return det_matched, det_ignored


@dataclass
class _ImageEval:
    scores: np.ndarray      # (D,) in score order
    matched: np.ndarray     # (T, D)
    ignored: np.ndarray     # (T, D)
    gt_ignore: np.ndarray   # (G,)


def _coco_accumulate(evals: list[_ImageEval | None], max_det: int, rec_thrs: np.ndarray,
                     n_thr: int) -> tuple[np.ndarray, np.ndarray] | None:
    """pycocotools' ``accumulate`` for one class, area range and detection cap: precision
    ``(T, R)`` and recall ``(T,)``, or None when there is no non-ignored ground truth."""
    entries = [e for e in evals if e is not None]
    if not entries:
        return None
    scores = np.concatenate([e.scores[0:max_det] for e in entries])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e.matched[:, 0:max_det] for e in entries], axis=1)[:, order]
    ignored = np.concatenate([e.ignored[:, 0:max_det] for e in entries], axis=1)[:, order]
    gt_ignore = np.concatenate([e.gt_ignore for e in entries])
    npig = np.count_nonzero(gt_ignore == 0)
    if npig == 0:
        return None
    tps = np.logical_and(matched, np.logical_not(ignored))
    fps = np.logical_and(np.logical_not(matched), np.logical_not(ignored))
    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
    n_rec = rec_thrs.shape[0]
    precision = np.zeros((n_thr, n_rec))
    recall = np.zeros(n_thr)
    for t in range(n_thr):
        tp, fp = tp_sum[t], fp_sum[t]
        nd = len(tp)
        rc = tp / npig
        pr = tp / (fp + tp + np.spacing(1))
        recall[t] = rc[-1] if nd else 0
        if nd:
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # the precision envelope
            inds = np.searchsorted(rc, rec_thrs, side="left")
            valid = inds < nd  # pycocotools stops at the first recall point out of reach
            precision[t, valid] = pr[inds[valid]]
    return precision, recall


def _coco_summary(values: np.ndarray, t_index=None) -> float:
    """pycocotools' ``_summarize``: the mean over entries > -1 (already sliced to one area
    range and detection cap), -1 when there is none."""
    if t_index is not None:
        values = values[t_index]
    if len(values[values > -1]) == 0:
        return -1.0
    return float(np.mean(values[values > -1]))


def _coco(images: list[_Image], classes: np.ndarray, iou_thrs: np.ndarray,
          rec_thrs: np.ndarray, max_dets: list[int], area_ranges: dict) -> dict:
    n_thr, n_rec, n_cls = len(iou_thrs), len(rec_thrs), len(classes)
    n_area, n_max = len(area_ranges), len(max_dets)
    precision = -np.ones((n_thr, n_rec, n_cls, n_area, n_max))
    recall = -np.ones((n_thr, n_cls, n_area, n_max))
    ranges = list(area_ranges.values())
    cap = max_dets[-1]
    det_index = [{c: np.flatnonzero(im.det_labels == c) for c in np.unique(im.det_labels)}
                 for im in images]
    gt_index = [{c: np.flatnonzero(im.gt_labels == c) for c in np.unique(im.gt_labels)}
                for im in images]
    empty = np.zeros(0, dtype=np.int64)
    for k, c in enumerate(classes):
        evals: list[list[_ImageEval | None]] = [[None] * len(images) for _ in ranges]
        for i, im in enumerate(images):
            d_idx, g_idx = det_index[i].get(c, empty), gt_index[i].get(c, empty)
            if len(d_idx) == 0 and len(g_idx) == 0:
                continue
            order = np.argsort(-im.det_scores[d_idx], kind="mergesort")[0:cap]
            d_idx = d_idx[order]
            dets, scores = im.det_boxes[d_idx], im.det_scores[d_idx]
            gts, crowd, g_area = im.gt_boxes[g_idx], im.gt_crowd[g_idx], im.gt_area[g_idx]
            ious = _coco_iou(dets, gts, crowd)
            d_area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
            for a, (lo, hi) in enumerate(ranges):
                gt_ignore = crowd | (g_area < lo) | (g_area > hi)
                matched, ignored = _coco_match(ious, gt_ignore, crowd, iou_thrs)
                outside = (d_area < lo) | (d_area > hi)
                ignored = ignored | (~matched & outside[None, :])
                evals[a][i] = _ImageEval(scores, matched, ignored, gt_ignore)
        for a in range(n_area):
            for m, max_det in enumerate(max_dets):
                result = _coco_accumulate(evals[a], max_det, rec_thrs, n_thr)
                if result is not None:
                    precision[:, :, k, a, m], recall[:, k, a, m] = result
    return {"precision": precision, "recall": recall}


# -- Pascal VOC ----------------------------------------------------------------------------


def _voc_class(images: list[_Image], c: int, strict: bool, offset: float,
               threshold: float = 0.5) -> tuple[float, float] | None:
    """(all-point AP, 11-point AP) of class ``c``, or None without non-difficult ground
    truth. The devkit's ``VOCevaldet`` loop and ``VOCap``."""
    det_image, det_boxes, det_scores = [], [], []
    gts, difficult = [], []
    npos = 0
    for i, im in enumerate(images):
        d = im.det_labels == c
        det_image.append(np.full(int(d.sum()), i))
        det_boxes.append(im.det_boxes[d])
        det_scores.append(im.det_scores[d])
        g = im.gt_labels == c
        gts.append(im.gt_boxes[g])
        difficult.append(im.gt_difficult[g])
        npos += int((~im.gt_difficult[g]).sum())
    if npos == 0:
        return None
    image = np.concatenate(det_image)
    boxes = np.concatenate(det_boxes)
    confidence = np.concatenate(det_scores)
    order = np.argsort(-confidence, kind="mergesort")  # MATLAB's sort is stable
    detected = [np.zeros(len(g), dtype=bool) for g in gts]
    nd = len(order)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d, j in enumerate(order):
        i = image[j]
        bb = boxes[j]
        bbgt = gts[i]
        ovmax = -np.inf
        if len(bbgt):
            iw = np.minimum(bb[2], bbgt[:, 2]) - np.maximum(bb[0], bbgt[:, 0]) + offset
            ih = np.minimum(bb[3], bbgt[:, 3]) - np.maximum(bb[1], bbgt[:, 1]) + offset
            ua = ((bb[2] - bb[0] + offset) * (bb[3] - bb[1] + offset)
                  + (bbgt[:, 2] - bbgt[:, 0] + offset) * (bbgt[:, 3] - bbgt[:, 1] + offset)
                  - iw * ih)
            with np.errstate(divide="ignore", invalid="ignore"):
                ov = iw * ih / ua
            # the devkit only looks at overlapping ground truths, and ``ov > ovmax`` skips NaN
            ov = np.where((iw > 0) & (ih > 0) & ~np.isnan(ov), ov, -np.inf)
            jmax = int(np.argmax(ov))  # the first maximum, as the devkit's strict ``>``
            ovmax = ov[jmax]
        if (ovmax > threshold) if strict else (ovmax >= threshold):
            if not difficult[i][jmax]:
                if not detected[i][jmax]:
                    tp[d] = 1
                    detected[i][jmax] = True
                else:
                    fp[d] = 1  # a duplicate
        else:
            fp[d] = 1
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    # all points (VOC 2010+)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.where(mrec[1:] != mrec[:-1])[0]
    ap = float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))
    # 11 points (VOC 2007)
    ap07 = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = np.max(prec[rec >= t]) if np.sum(rec >= t) else 0
        ap07 = ap07 + p / 11.0
    return ap, float(ap07)


# -- the entry point -----------------------------------------------------------------------


def mean_average_precision(
    predictions: Sequence[Mapping],
    targets: Sequence[Mapping],
    iou_thresholds: Sequence[float] | None = None,
    max_detections: int = 100,
    *,
    recall_thresholds: Sequence[float] | None = None,
    voc_strict_iou: bool = False,
    voc_inclusive_pixels: bool = False,
) -> dict:
    """COCO and Pascal VOC detection scores of ``predictions`` against ``targets`` (one dict
    per image, see the module docstring for the keys and every convention).

    Returns floats ``map``, ``map_50``, ``map_75``, ``map_small``, ``map_medium``,
    ``map_large``, ``mar_1``, ``mar_10``, ``mar_{max_detections}``, ``mar_small``,
    ``mar_medium``, ``mar_large``, ``voc_map_50``, ``voc07_map_50`` (-1 where undefined: no
    ground truth, or a threshold that is not among ``iou_thresholds``), and, per class of
    ``classes`` (the sorted labels seen in targets or predictions), the lists
    ``map_per_class``, ``mar_{max_detections}_per_class``, ``voc_ap_per_class``,
    ``voc07_ap_per_class`` (-1 for a class without ground truth).

    ``iou_thresholds`` / ``recall_thresholds`` default to pycocotools' (0.50:0.05:0.95 and
    0:0.01:1); ``max_detections`` caps the detections per image and class for the COCO figures
    (``mar_1`` and ``mar_10`` are always given). ``voc_strict_iou``: ``IoU > 0.5`` instead of
    the devkit's ``>= 0.5``; ``voc_inclusive_pixels``: the devkit's ``+ 1`` on widths and
    heights.
    """
    if isinstance(max_detections, bool) or int(max_detections) != max_detections \
            or max_detections < 1:
        raise ValueError(f"max_detections must be a positive integer, got {max_detections!r}")
    max_detections = int(max_detections)
    iou_thrs = (_coco_iou_thresholds() if iou_thresholds is None
                else np.asarray(iou_thresholds, dtype=np.float64).reshape(-1))
    rec_thrs = (_coco_recall_thresholds() if recall_thresholds is None
                else np.asarray(recall_thresholds, dtype=np.float64).reshape(-1))
    for name, values in (("iou_thresholds", iou_thrs), ("recall_thresholds", rec_thrs)):
        if values.size == 0 or not ((values >= 0) & (values <= 1)).all():
            raise ValueError(f"{name} must be a non-empty list of values in [0, 1]")
    if (np.diff(rec_thrs) < 0).any():
        raise ValueError("recall_thresholds must be increasing")
    images = _read(predictions, targets)
    labels = [im.gt_labels for im in images] + [im.det_labels for im in images]
    classes = np.unique(np.concatenate(labels)) if labels else np.zeros(0, dtype=np.int64)
    max_dets = sorted({1, 10, max_detections})
    m_head = max_dets.index(max_detections)
    coco = _coco(images, classes, iou_thrs, rec_thrs, max_dets, COCO_AREA_RANGES)
    precision, recall = coco["precision"], coco["recall"]
    area_names = list(COCO_AREA_RANGES)

    def ap(area: str = "all", iou=None, m: int = m_head) -> float:
        s = precision
        t = None if iou is None else np.where(iou == iou_thrs)[0]
        a = area_names.index(area)
        return _coco_summary(s[:, :, :, [a], [m]] if t is None else s[t][:, :, :, [a], [m]])

    def ar(area: str = "all", m: int = m_head) -> float:
        a = area_names.index(area)
        return _coco_summary(recall[:, :, [a], [m]])

    out: dict = {
        "map": ap(),
        "map_50": ap(iou=0.5),
        "map_75": ap(iou=0.75),
        "map_small": ap("small"),
        "map_medium": ap("medium"),
        "map_large": ap("large"),
    }
    for m, n in enumerate(max_dets):
        out[f"mar_{n}"] = ar(m=m)
    out.update(mar_small=ar("small"), mar_medium=ar("medium"), mar_large=ar("large"))
    out["classes"] = [int(c) for c in classes]
    out["map_per_class"] = [_coco_summary(precision[:, :, k, 0, m_head])
                            for k in range(len(classes))]
    out[f"mar_{max_detections}_per_class"] = [_coco_summary(recall[:, k, 0, m_head])
                                              for k in range(len(classes))]
    offset = 1.0 if voc_inclusive_pixels else 0.0
    voc = [_voc_class(images, int(c), voc_strict_iou, offset) for c in classes]
    present = [v for v in voc if v is not None]
    out["voc_map_50"] = float(np.mean([v[0] for v in present])) if present else -1.0
    out["voc07_map_50"] = float(np.mean([v[1] for v in present])) if present else -1.0
    out["voc_ap_per_class"] = [v[0] if v is not None else -1.0 for v in voc]
    out["voc07_ap_per_class"] = [v[1] if v is not None else -1.0 for v in voc]
    return out
