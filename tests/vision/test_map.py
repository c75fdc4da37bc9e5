"""Detection mAP: hand-built cases, pycocotools' COCOeval on random scenes (the figures must be
the same to the last bit), and a literal port of the Pascal VOC devkit (VOCevaldet.m + VOCap.m,
and the 11-point loop of the Python ports) on random scenes."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from rlgen.vision.detection import mean_average_precision

# pycocotools' precision is tp / (tp + fp + np.spacing(1)): a single true positive has precision
# 1 / (1 + 2.2e-16) = 0.9999999999999998, and rlgen reproduces that, so "1" is approximate here
ONE = pytest.approx(1.0, rel=0, abs=1e-15)

COCO_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


def pred(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = [1] * len(boxes) if labels is None else labels
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.long)}


def target(boxes, labels=None, **flags):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = [1] * len(boxes) if labels is None else labels
    out = {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.long)}
    out.update({k: torch.tensor(v, dtype=torch.bool) for k, v in flags.items()})
    return out


# -- hand-built cases --------------------------------------------------------------------------


def test_perfect_predictions_score_one():
    boxes = [[0, 0, 10, 10], [20, 20, 60, 50], [5, 5, 200, 150]]
    r = mean_average_precision([pred(boxes, [0.9, 0.8, 0.7], [1, 2, 1])],
                               [target(boxes, [1, 2, 1])])
    for key in ("map", "map_50", "map_75", "mar_10", "mar_100", "voc_map_50", "voc07_map_50",
                "map_small", "map_medium", "map_large"):
        assert r[key] == ONE, key
    assert r["mar_1"] == 0.75    # class 1 has two objects in the image: one detection finds one
    assert r["classes"] == [1, 2] and r["map_per_class"] == [ONE, ONE]


def test_a_false_positive_ranked_first():
    r = mean_average_precision([pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8])],
                               [target([[0, 0, 10, 10]])])
    # the one true positive comes at precision 1/2, recall 1: every recall point gets 1/2
    assert r["map"] == pytest.approx(0.5) and r["voc_map_50"] == pytest.approx(0.5)
    assert r["voc07_map_50"] == pytest.approx(0.5)
    assert r["mar_1"] == 0.0 and r["mar_10"] == 1.0   # the first detection is the wrong one


def test_a_missed_object():
    r = mean_average_precision([pred([[0, 0, 10, 10]], [0.9])],
                               [target([[0, 0, 10, 10], [30, 30, 40, 40]])])
    assert r["map"] == pytest.approx(51 / 101)        # recall points 0.00 .. 0.50
    assert r["voc_map_50"] == 0.5                     # the area under the envelope
    assert r["voc07_map_50"] == pytest.approx(6 / 11)  # thresholds 0.0 .. 0.5
    assert r["mar_100"] == 0.5


def test_two_classes_and_a_class_without_ground_truth():
    r = mean_average_precision(
        [pred([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.8, 0.7], [1, 3, 7])],
        [target([[0, 0, 10, 10], [60, 60, 70, 70]], [1, 3])])
    assert r["classes"] == [1, 3, 7]
    assert r["map_per_class"] == [ONE, 0.0, -1.0]     # class 7: predicted only, -1
    assert r["map"] == pytest.approx(0.5) and r["voc_map_50"] == 0.5  # mean of classes 1, 3
    assert r["voc_ap_per_class"] == [1.0, 0.0, -1.0]


def test_the_iou_threshold_is_inclusive_for_coco_and_the_devkit_and_strict_for_the_ports():
    gt = [target([[0, 0, 10, 20]])]
    preds = [pred([[0, 0, 10, 10]], [0.9])]          # IoU exactly 0.5
    r = mean_average_precision(preds, gt)
    assert r["map_50"] == ONE and r["voc_map_50"] == 1.0
    assert r["map_75"] == 0.0 and r["map"] == pytest.approx(0.1)   # only t = 0.5 of ten
    assert mean_average_precision(preds, gt, voc_strict_iou=True)["voc_map_50"] == 0.0


def test_coco_prefers_a_regular_object_to_a_better_overlapping_crowd_region():
    gt = [target([[0, 0, 10, 10], [0, 0, 100, 100]], iscrowd=[False, True])]
    r = mean_average_precision([pred([[0, 0, 10, 11]], [0.9])], gt)  # IoU 0.91; crowd 1.0
    assert r["map_50"] == ONE


def test_coco_equal_ious_go_to_the_later_ground_truth():
    gt = [target([[0, 0, 10, 10], [5, 0, 15, 10]])]
    # the first detection has IoU 0.6 with both: pycocotools gives it the second one, which
    # leaves the first free for the second detection (IoU 1 with it, 1/3 with the other)
    preds = [pred([[2.5, 0, 12.5, 10], [0, 0, 10, 10]], [0.9, 0.8])]
    r = mean_average_precision(preds, gt)
    assert r["map_50"] == ONE
    assert [r[k] for k in COCO_KEYS] == cocoeval(preds, gt).stats.tolist()


def test_crowd_regions_are_ignored_and_matched_by_intersection_over_detection_area():
    gt = [target([[0, 0, 10, 10], [50, 50, 150, 150]], iscrowd=[False, True])]
    inside = [[60, 60, 70, 70], [100, 100, 120, 110], [55, 55, 145, 145]]  # IoU <= 0.81
    preds = [pred(inside + [[0, 0, 10, 10]], [0.95, 0.9, 0.85, 0.5])]
    r = mean_average_precision(preds, gt)
    # intersection / area(detection) = 1: the three are matched to the crowd and ignored
    assert r["map"] == ONE and r["mar_100"] == 1.0
    # without the crowd flag they are false positives ranked first (and the region a miss)
    plain = mean_average_precision(preds, [target(gt[0]["boxes"].tolist())])
    assert plain["map"] < 0.5
    # a crowd alone gives the class no ground truth
    r = mean_average_precision([pred([[60, 60, 70, 70]], [0.9])],
                               [target([[50, 50, 150, 150]], iscrowd=[True])])
    assert r["map"] == -1.0 and r["map_per_class"] == [-1.0]


def test_difficult_objects_for_voc_only():
    gt = [target([[0, 0, 10, 10], [30, 30, 40, 40]], difficult=[False, True])]
    preds = [pred([[30, 30, 40, 40], [0, 0, 10, 10], [31, 30, 41, 40]], [0.9, 0.8, 0.7])]
    r = mean_average_precision(preds, gt)
    # VOC: the difficult one matched twice: neither true nor false positive; recall 1/1
    assert r["voc_map_50"] == 1.0
    # COCO has no difficult objects: both count, the third detection is a duplicate (FP)
    assert r["map_50"] == ONE and r["mar_100"] == 1.0
    assert mean_average_precision(preds, [target(gt[0]["boxes"].tolist())])["voc_map_50"] == 1.0


def test_a_duplicate_is_a_false_positive_for_voc_even_next_to_a_free_object():
    # VOC takes the best ground truth, taken or not; COCO the best free one
    gt = [target([[0, 0, 10, 10], [0, 0, 10, 14]])]
    preds = [pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])]  # IoU 1 and 10/14
    r = mean_average_precision(preds, gt)
    assert r["map_50"] == ONE        # the second one takes the free 10x14 box
    assert r["voc_map_50"] == 0.5    # the second one is a duplicate of the 10x10 box


def test_more_than_100_detections_per_image():
    wrong = [[200 + 3 * i, 0, 201 + 3 * i, 1] for i in range(100)]
    preds = [pred(wrong + [[0, 0, 10, 10]], [0.9] * 100 + [0.1])]
    gt = [target([[0, 0, 10, 10]])]
    r = mean_average_precision(preds, gt)
    assert r["map"] == 0.0 and r["mar_100"] == 0.0    # the 101st detection is cut (COCO)
    assert r["voc_map_50"] == pytest.approx(1 / 101)  # VOC keeps them all
    r = mean_average_precision(preds, gt, max_detections=101)
    assert r["map"] == pytest.approx(1 / 101) and r["mar_101"] == 1.0
    # the cap is per image *and class*: 100 of another class do not push it out
    preds = [pred(wrong + [[0, 0, 10, 10]], [0.9] * 100 + [0.1], [2] * 100 + [1])]
    assert mean_average_precision(preds, gt)["map_per_class"] == [ONE, -1.0]


def test_images_without_predictions_or_targets_and_bad_inputs():
    empty_pred = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                  "labels": torch.zeros(0, dtype=torch.long)}
    empty_target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    r = mean_average_precision([empty_pred, pred([[0, 0, 5, 5]], [0.5])],
                               [target([[0, 0, 5, 5]]), empty_target])
    assert r["map"] == 0.0 and r["voc_map_50"] == 0.0
    r = mean_average_precision([empty_pred], [empty_target])
    assert r["map"] == -1.0 and r["voc_map_50"] == -1.0 and r["classes"] == []
    with pytest.raises(ValueError, match="same images"):
        mean_average_precision([empty_pred], [])
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        mean_average_precision([{**empty_pred, "boxes": torch.zeros(2, 5)}], [empty_target])
    with pytest.raises(ValueError, match="NaN scores"):
        mean_average_precision([pred([[0, 0, 1, 1]], [float("nan")])], [empty_target])
    with pytest.raises(ValueError, match="'scores'"):
        mean_average_precision([{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)}],
                               [empty_target])


# -- random scenes -----------------------------------------------------------------------------


def random_scene(rng: np.random.Generator, grid: float | None, crowd=0.1, difficult=0.0,
                 dtype=torch.float64, sizes=(3, 140), noise=0.08):
    """A few images, 4 classes, ground truths of all sizes (COCO small to large), detections
    as noisy copies (some relabelled) plus strays, coarse scores (many ties), some crowd or
    difficult objects (crowd regions also around regular objects), some images without
    detections or without objects. ``grid``: snap coordinates to multiples of 1 / grid (IoUs
    land exactly on thresholds)."""
    preds, targets = [], []
    for _ in range(int(rng.integers(1, 8))):
        g = 0 if rng.random() < 0.15 else int(rng.integers(1, 8))
        xy = rng.uniform(0, 150, (g, 2))
        wh = np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]), (g, 2)))
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, 5, g)
        is_crowd = rng.random(g) < crowd
        if crowd and g and rng.random() < 0.4:   # a crowd region around a regular object
            margin = rng.uniform(0, 0.3, 4) * np.r_[wh[0], wh[0]]
            gt = np.r_[gt, [gt[0] + margin * [-1, -1, 1, 1]]]
            wh = np.r_[wh, [wh[0]]]
            labels, is_crowd = np.r_[labels, labels[0]], np.r_[is_crowd, True]
            g += 1
        if grid:
            gt = np.round(gt * grid) / grid
        targets.append({"boxes": torch.tensor(gt, dtype=dtype).reshape(-1, 4),
                        "labels": torch.tensor(labels),
                        "iscrowd": torch.tensor(is_crowd),
                        "difficult": torch.tensor(rng.random(g) < difficult)})
        n = 0 if rng.random() < 0.15 else int(rng.integers(1, 13))
        boxes, det_labels = [], []
        for _ in range(n):
            if g and rng.random() < 0.8:
                j = int(rng.integers(0, g))
                boxes.append(gt[j] + rng.normal(0, noise, 4) * np.r_[wh[j], wh[j]])
                det_labels.append(labels[j] if rng.random() < 0.9 else rng.integers(1, 5))
            else:
                corner = rng.uniform(0, 150, 2)
                boxes.append(np.r_[corner, corner + rng.uniform(2, 100, 2)])
                det_labels.append(rng.integers(1, 5))
        boxes = np.array(boxes).reshape(-1, 4)
        if grid:
            boxes = np.round(boxes * grid) / grid
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        preds.append({"boxes": torch.tensor(boxes, dtype=dtype),
                      "scores": torch.tensor(np.round(rng.random(n) * 20) / 20, dtype=dtype),
                      "labels": torch.tensor(np.array(det_labels, dtype=np.int64))})
    return preds, targets


def cocoeval(preds, targets, iou_thresholds=None):
    """pycocotools' COCOeval on the same scene: boxes to (x, y, w, h) lists, the areas of the
    boxes, ids from 1, the categories seen in targets or predictions."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations, results, categories = [], [], set()
    for i, (p, t) in enumerate(zip(preds, targets)):
        crowds = t["iscrowd"].tolist() if "iscrowd" in t else [False] * len(t["boxes"])
        for (x1, y1, x2, y2), label, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(),
                                                  crowds):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
            categories.add(label)
        for (x1, y1, x2, y2), label, score in zip(p["boxes"].tolist(), p["labels"].tolist(),
                                                  p["scores"].tolist()):
            results.append({"image_id": i + 1, "category_id": label,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
            categories.add(label)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(len(targets))],
                      "annotations": annotations,
                      "categories": [{"id": c} for c in sorted(categories)]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        if iou_thresholds is not None:
            evaluation.params.iouThrs = np.array(iou_thresholds)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("grid,dtype", [(8.0, torch.float64), (None, torch.float32)])
def test_equals_pycocotools_cocoeval_on_random_scenes(grid, dtype):
    """pycocotools 2.0.x: every summary figure and the per-class AP / AR, bit for bit. On a
    1/8 grid the IoUs often fall exactly on thresholds and the recalls on recall points; the
    float32 scenes have continuous coordinates (their (x, y, w, h) in float64 are exact)."""
    rng = np.random.default_rng(0 if grid else 1)
    compared = 0
    while compared < 25:
        preds, targets = random_scene(rng, grid, dtype=dtype)
        if sum(len(p["boxes"]) for p in preds) == 0:
            continue   # loadRes cannot take an empty result list
        compared += 1
        reference = cocoeval(preds, targets)
        ours = mean_average_precision(preds, targets)
        for key, value in zip(COCO_KEYS, reference.stats):
            assert ours[key] == value, (compared, key, ours[key], value)
        precision = reference.eval["precision"][:, :, :, 0, -1]
        recall = reference.eval["recall"][:, :, 0, -1]
        for k in range(precision.shape[2]):
            p, r = precision[:, :, k], recall[:, k]
            assert ours["map_per_class"][k] == (np.mean(p[p > -1]) if (p > -1).any() else -1)
            assert ours["mar_100_per_class"][k] == (np.mean(r[r > -1]) if (r > -1).any() else -1)


def test_equals_pycocotools_with_more_than_100_detections_and_custom_caps():
    rng = np.random.default_rng(2)
    gt = rng.uniform(0, 100, (30, 2))
    gt = np.round(np.c_[gt, gt + rng.uniform(5, 60, (30, 2))] * 4) / 4
    dets = np.round((gt[rng.integers(0, 30, 250)] + rng.normal(0, 3, (250, 4))) * 4) / 4
    dets[:, 2:] = np.maximum(dets[:, 2:], dets[:, :2] + 0.25)
    preds = [{"boxes": torch.tensor(dets), "scores": torch.tensor(np.round(rng.random(250), 1)),
              "labels": torch.ones(250, dtype=torch.long)}]
    targets = [{"boxes": torch.tensor(gt), "labels": torch.ones(30, dtype=torch.long),
                "iscrowd": torch.zeros(30, dtype=torch.bool)}]
    reference = cocoeval(preds, targets)
    ours = mean_average_precision(preds, targets)
    assert [ours[k] for k in COCO_KEYS] == reference.stats.tolist()
    thresholds = [0.3, 0.5, 0.6]   # no 0.75: map_75 is -1 in both
    reference = cocoeval(preds, targets, thresholds)
    ours = mean_average_precision(preds, targets, iou_thresholds=thresholds)
    assert [ours[k] for k in COCO_KEYS] == reference.stats.tolist()
    assert ours["map_75"] == -1.0


# -- the VOC devkit ----------------------------------------------------------------------------


def devkit_ap(preds, targets, cls, strict=False, plus=0.0):
    """VOCevaldet.m (VOC2010+ devkit) and VOCap.m, statement by statement; ``strict``: the
    Python ports' ``ovmax > ovthresh``; ``plus``: the devkit's +1 on widths and heights.
    The 11-point AP is py-faster-rcnn's ``voc_ap(use_07_metric=True)``."""
    gt = []
    npos = 0
    for t in targets:
        keep = [i for i, lab in enumerate(t["labels"].tolist()) if lab == cls]
        gt.append({"BB": [t["boxes"][i].tolist() for i in keep],
                   "diff": [bool(t["difficult"][i]) for i in keep],
                   "det": [False] * len(keep)})
        npos += sum(not d for d in gt[-1]["diff"])
    if npos == 0:
        return None
    ids, confidence, BB = [], [], []
    for i, p in enumerate(preds):
        for box, lab, score in zip(p["boxes"].tolist(), p["labels"].tolist(),
                                   p["scores"].tolist()):
            if lab == cls:
                ids.append(i)
                confidence.append(score)
                BB.append(box)
    si = sorted(range(len(confidence)), key=lambda d: -confidence[d])  # stable, as MATLAB
    nd = len(si)
    tp, fp = [0.0] * nd, [0.0] * nd
    for d in range(nd):
        i = ids[si[d]]
        bb = BB[si[d]]
        ovmax, jmax = -np.inf, None
        for j, bbgt in enumerate(gt[i]["BB"]):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]),
                  min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + plus
            ih = bi[3] - bi[1] + plus
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + plus) * (bb[3] - bb[1] + plus)
                      + (bbgt[2] - bbgt[0] + plus) * (bbgt[3] - bbgt[1] + plus) - iw * ih)
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if (ovmax > 0.5) if strict else (ovmax >= 0.5):
            if not gt[i]["diff"][jmax]:
                if not gt[i]["det"][jmax]:
                    tp[d] = 1.0
                    gt[i]["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    mrec = [0.0] + rec.tolist() + [1.0]
    mpre = [0.0] + prec.tolist() + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    change = [i for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]]
    ap = float(np.sum([(mrec[i] - mrec[i - 1]) * mpre[i] for i in change]))
    ap07 = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
        ap07 = ap07 + p / 11.0
    return ap, ap07


@pytest.mark.parametrize("strict,inclusive", [(False, False), (True, False), (False, True)])
def test_equals_the_voc_devkit_on_random_scenes(strict, inclusive):
    rng = np.random.default_rng(3)
    for scene in range(30):
        grid = 1.0 if scene % 2 else None   # integer boxes: IoU exactly 0.5 happens
        small = scene % 3 == 0   # small boxes, more noise: the +1 matters
        preds, targets = random_scene(rng, grid, crowd=0.0, difficult=0.15,
                                      sizes=(2, 12) if small else (3, 140),
                                      noise=0.25 if small else 0.08)
        ours = mean_average_precision(preds, targets, voc_strict_iou=strict,
                                      voc_inclusive_pixels=inclusive)
        aps = []
        for k, cls in enumerate(ours["classes"]):
            want = devkit_ap(preds, targets, cls, strict, 1.0 if inclusive else 0.0)
            if want is None:
                assert ours["voc_ap_per_class"][k] == -1.0
                continue
            aps.append(want)
            assert ours["voc_ap_per_class"][k] == pytest.approx(want[0], rel=0, abs=1e-15)
            assert ours["voc07_ap_per_class"][k] == pytest.approx(want[1], rel=0, abs=1e-15)
        if aps:
            assert ours["voc_map_50"] == pytest.approx(np.mean([a[0] for a in aps]), abs=1e-15)
            assert ours["voc07_map_50"] == pytest.approx(np.mean([a[1] for a in aps]), abs=1e-15)
        else:
            assert ours["voc_map_50"] == -1.0


def test_inclusive_pixels_add_one_to_widths_and_heights():
    gt, preds = [target([[1, 1, 2, 2]])], [pred([[1, 1, 4, 2]], [0.9])]
    assert mean_average_precision(preds, gt)["voc_map_50"] == 0.0   # IoU 1/3
    assert mean_average_precision(preds, gt, voc_inclusive_pixels=True)["voc_map_50"] == 1.0
    # (2 x 2) / (4 x 2): exactly 0.5


def test_inclusive_pixels_equal_continuous_boxes_converted_as_detectron2_does():
    rng = np.random.default_rng(4)
    for _ in range(10):
        preds, targets = random_scene(rng, 1.0, crowd=0.0, difficult=0.1, sizes=(2, 12),
                                      noise=0.25)
        shift = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
        inclusive = mean_average_precision(preds, targets, voc_inclusive_pixels=True)
        moved = mean_average_precision([{**p, "boxes": p["boxes"] - shift} for p in preds],
                                       [{**t, "boxes": t["boxes"] - shift} for t in targets])
        assert inclusive["voc_ap_per_class"] == moved["voc_ap_per_class"]
