"""Box operations against brute-force references: IoU / GIoU as scalar loops in the boxes'
dtype, NMS against a literal Python port of torchvision's CPU kernel (``nms_kernel.cpp``),
batched NMS against per-class NMS and against torchvision's coordinate-offset trick, box
coding by hand and as a round trip. torchvision itself cannot be imported here (its wheel
does not match this torch), so its code is transcribed in the references below."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rlgen.vision.boxes as boxes_module
from rlgen.vision.boxes import (
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    decode_boxes,
    encode_boxes,
    generalized_box_iou,
    nms,
    remove_small_boxes,
)


def random_boxes(gen: torch.Generator, n: int, dtype=torch.float32, integer=False) -> torch.Tensor:
    """Clusters of overlapping boxes, with exact duplicates and zero-area boxes mixed in."""
    centres = torch.rand(max(n // 4, 1), 2, generator=gen) * 100
    pick = torch.randint(0, centres.shape[0], (n,), generator=gen)
    xy = centres[pick] + torch.randn(n, 2, generator=gen) * 6
    wh = torch.rand(n, 2, generator=gen) * 30 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    if integer:
        boxes = boxes.round()
    if n >= 4:
        boxes[1] = boxes[0]                    # a duplicate
        boxes[2, 2] = boxes[2, 0]              # zero width
        boxes[3] = boxes[2]                    # two identical zero-area boxes: IoU 0 / 0
    return boxes.to(dtype)


# -- IoU -------------------------------------------------------------------------------------


def reference_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torchvision's box_iou, one pair at a time, in NumPy scalars of the boxes' dtype."""
    dt = np.float32 if a.dtype == torch.float32 else np.float64
    A, B = a.numpy().astype(dt), b.numpy().astype(dt)
    out = np.zeros((len(A), len(B)), dtype=dt)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, p in enumerate(A):
            for j, q in enumerate(B):
                w = max(dt(0), min(p[2], q[2]) - max(p[0], q[0]))
                h = max(dt(0), min(p[3], q[3]) - max(p[1], q[1]))
                inter = w * h
                union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
                out[i, j] = inter / union
    return torch.from_numpy(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("integer", [False, True])
def test_box_iou_equals_a_scalar_loop_bit_for_bit(dtype, integer):
    gen = torch.Generator().manual_seed(0)
    a = random_boxes(gen, 40, dtype, integer)
    b = torch.cat([random_boxes(gen, 30, dtype, integer), a[:5]])
    got = box_iou(a, b)
    assert got.dtype == dtype and got.shape == (40, 35)
    torch.testing.assert_close(got, reference_iou(a, b), rtol=0, atol=0, equal_nan=True)


def test_box_iou_by_hand_and_degenerate_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 20], [3, 3, 3, 8]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[0, 2] == 0.5                       # exactly: continuous coordinates, no +1
    assert iou[0, 3] == 0 and iou[3, 0] == 0      # a zero-area box inside another: 0 / 100
    assert math.isnan(iou[3, 3])                  # two identical zero-area boxes: 0 / 0
    assert box_area(boxes).tolist() == [100, 100, 200, 0]
    # integer boxes: torchvision's true division gives float32
    assert box_iou(boxes.long(), boxes.long()).dtype == torch.float32


def test_generalized_box_iou_equals_a_scalar_loop():
    gen = torch.Generator().manual_seed(1)
    a, b = random_boxes(gen, 20, torch.float64)[4:], random_boxes(gen, 15, torch.float64)
    got = generalized_box_iou(a, b)
    A, B = a.numpy(), b.numpy()
    want = np.zeros((len(A), len(B)))
    for i, p in enumerate(A):
        for j, q in enumerate(B):
            inter = (max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
                     * max(0.0, min(p[3], q[3]) - max(p[1], q[1])))
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            hull = ((max(p[2], q[2]) - min(p[0], q[0])) * (max(p[3], q[3]) - min(p[1], q[1])))
            want[i, j] = inter / union - (hull - union) / hull
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=0, atol=1e-15)
    # disjoint boxes: IoU 0, GIoU negative; identical: 1
    g = generalized_box_iou(torch.tensor([[0.0, 0, 1, 1]], dtype=torch.float64),
                            torch.tensor([[2.0, 0, 3, 1], [0, 0, 1, 1]], dtype=torch.float64))
    assert g.tolist() == [[-1 / 3, 1.0]]


# -- conversion, clipping, small boxes -------------------------------------------------------


def test_box_convert_by_hand_and_round_trips():
    xyxy = torch.tensor([[1.0, 2, 5, 10]])
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[1, 2, 4, 8]]
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[3, 6, 4, 8]]
    assert box_convert(torch.tensor([[3.0, 6, 4, 8]]), "cxcywh", "xywh").tolist() == [[1, 2, 4, 8]]
    gen = torch.Generator().manual_seed(2)
    boxes = (random_boxes(gen, 50, torch.float64) * 8).round() / 8  # exact in every format
    formats = ("xyxy", "xywh", "cxcywh")
    for a in formats:
        start = box_convert(boxes, "xyxy", a)
        for b in formats:
            back = box_convert(box_convert(start, a, b), b, a)
            assert torch.equal(back, start), (a, b)
    # float32 continuous boxes: round trips to rounding
    boxes = random_boxes(gen, 50)
    for a in formats:
        torch.testing.assert_close(box_convert(box_convert(boxes, "xyxy", a), a, "xyxy"), boxes)
    assert box_convert(boxes.reshape(5, 10, 4), "xyxy", "xywh").shape == (5, 10, 4)
    copy = box_convert(boxes, "xyxy", "xyxy")
    assert torch.equal(copy, boxes) and copy.data_ptr() != boxes.data_ptr()
    with pytest.raises(ValueError, match="unknown box format"):
        box_convert(boxes, "xyxy", "yxyx")


def test_clip_and_remove_small_boxes():
    boxes = torch.tensor([[-5.0, -1, 20, 30], [2, 3, 4, 5], [1, 1, 1.5, 9]])
    assert clip_boxes_to_image(boxes, (25, 10)).tolist() == [[0, 0, 10, 25], [2, 3, 4, 5],
                                                             [1, 1, 1.5, 9]]
    assert clip_boxes_to_image(boxes[None], (25, 10)).shape == (1, 3, 4)
    keep = remove_small_boxes(boxes, 2.0)   # sides >= 2 (the 2x2 box stays)
    assert keep.tolist() == [0, 1] and keep.dtype == torch.int64


# -- NMS ---------------------------------------------------------------------------------------


def kernel_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, order: torch.Tensor):
    """torchvision/csrc/ops/cpu/nms_kernel.cpp, line by line, in NumPy scalars of the boxes'
    dtype; ``order``: the kernel's ``scores.sort(0, descending=True)`` indices."""
    dt = np.float32 if boxes.dtype == torch.float32 else np.float64
    x1, y1, x2, y2 = (boxes[:, k].numpy().astype(dt) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = order.tolist()
    suppressed = [False] * len(order)
    keep = []

    def cmax(a, b):  # std::max
        return b if a < b else a

    def cmin(a, b):  # std::min
        return b if b < a else a

    with np.errstate(invalid="ignore", divide="ignore"):
        for _i in range(len(order)):
            i = order[_i]
            if suppressed[i]:
                continue
            keep.append(i)
            for _j in range(_i + 1, len(order)):
                j = order[_j]
                if suppressed[j]:
                    continue
                w = cmax(dt(0), cmin(x2[i], x2[j]) - cmax(x1[i], x1[j]))
                h = cmax(dt(0), cmin(y2[i], y2[j]) - cmax(y1[i], y1[j]))
                inter = w * h
                ovr = inter / (areas[i] + areas[j] - inter)
                if float(ovr) > thr:  # the kernel's iou_threshold is a double
                    suppressed[j] = True
    return keep


@pytest.mark.parametrize("block", [256, 7])   # 7: many blocks, ties across their edges
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_equals_the_torchvision_kernel_port(dtype, block, monkeypatch):
    monkeypatch.setattr(boxes_module, "_NMS_BLOCK", block)
    gen = torch.Generator().manual_seed(3)
    for trial in range(40):
        n = [0, 1, 2, 5, 16, 17, 60, 150][trial % 8]
        boxes = random_boxes(gen, n, dtype, integer=trial % 3 == 0)
        # coarse scores: many ties
        scores = (torch.rand(n, generator=gen) * 6).floor().to(dtype) / 6
        thr = [0.0, 0.3, 0.5, 0.7, 1.0][trial % 5]
        stable_order = torch.sort(scores, descending=True, stable=True)[1]
        got = nms(boxes, scores, thr)
        assert got.dtype == torch.int64
        assert got.tolist() == kernel_nms(boxes, scores, thr, stable_order), (trial, n, thr)
        # stable=False: torch's own unstable sort, the one torchvision's kernel calls
        got = nms(boxes, scores, thr, stable=False)
        assert got.tolist() == kernel_nms(boxes, scores, thr, scores.sort(0, True)[1])
        # kept indices by decreasing score
        assert (scores[got].diff() <= 0).all()


def test_nms_keeps_an_iou_equal_to_the_threshold_and_compares_in_double():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20]])   # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]          # strictly greater suppresses
    assert nms(boxes, scores, 0.49).tolist() == [0]
    # IoU 1/10 in float32 is 0.100000001490116..., above the double 0.1: torchvision's
    # kernel suppresses (a float32 comparison with 0.1 rounded to float32 would not)
    boxes = torch.tensor([[0.0, 0, 10, 1], [0, 0, 1, 1]])
    assert nms(boxes, scores, 0.1).tolist() == [0]
    # two identical zero-area boxes: IoU NaN never suppresses
    boxes = torch.tensor([[1.0, 1, 1, 5], [1, 1, 1, 5]])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]


def test_nms_iou_is_the_kernels_to_the_last_bit():
    # threshold = the kernel's float32 IoU of the pair: kept; one double below it: dropped.
    # Any other rounding of the IoU (another order of the additions, float64 arithmetic)
    # fails one of the two for some pair.
    gen = torch.Generator().manual_seed(7)
    first = random_boxes(gen, 300)
    second = first + torch.randn(300, 4, generator=gen) * 4
    scores = torch.tensor([0.9, 0.8])
    checked = 0
    for pair in torch.stack([first, second], 1):
        ovr = kernel_pair_iou(pair)
        if not ovr > 0:
            continue
        checked += 1
        assert nms(pair, scores, ovr).tolist() == [0, 1]
        assert nms(pair, scores, np.nextafter(ovr, -np.inf)).tolist() == [0]
    assert checked > 200


def kernel_pair_iou(pair: torch.Tensor) -> float:
    (ix1, iy1, ix2, iy2), (jx1, jy1, jx2, jy2) = pair.numpy().astype(np.float32)
    iarea, jarea = (ix2 - ix1) * (iy2 - iy1), (jx2 - jx1) * (jy2 - jy1)
    w = max(np.float32(0), min(ix2, jx2) - max(ix1, jx1))
    h = max(np.float32(0), min(iy2, jy2) - max(iy1, jy1))
    inter = w * h
    return float(inter / (iarea + jarea - inter))


@pytest.mark.parametrize("block", [256, 7])
def test_nms_resolves_a_chain_of_suppressions(block, monkeypatch):
    # each box overlaps the next with IoU 2/3 and the one after with 3/7: greedy NMS keeps
    # every other box (a one-pass "fast NMS" would keep only the first)
    monkeypatch.setattr(boxes_module, "_NMS_BLOCK", block)
    chain = torch.tensor([[2.0 * i, 0, 2.0 * i + 10, 10] for i in range(60)])
    scores = torch.linspace(1, 0, 60)
    assert nms(chain, scores, 0.5).tolist() == list(range(0, 60, 2))
    assert batched_nms(chain, scores, torch.zeros(60), 0.5).tolist() == list(range(0, 60, 2))


def test_nms_ties_go_to_the_lower_index():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[20.0, 20, 30, 30], [40, 40, 50, 50]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9])
    assert nms(boxes, scores, 0.5).tolist() == [4, 0, 3]
    disjoint = torch.arange(40.0)[:, None] * 10 + torch.tensor([0.0, 0, 5, 5])
    assert nms(disjoint, torch.ones(40), 0.5).tolist() == list(range(40))
    # torch's unstable sort scrambles ties beyond 16 elements; stable=False follows it
    unstable = torch.ones(40).sort(0, True)[1].tolist()
    assert nms(disjoint, torch.ones(40), 0.5, stable=False).tolist() == unstable


def per_class_reference(boxes, scores, idxs, thr):
    kept = []
    for c in idxs.unique().tolist():
        where = torch.where(idxs == c)[0]
        sub_order = torch.sort(scores[where], descending=True, stable=True)[1]
        kept += where[kernel_nms(boxes[where], scores[where], thr, sub_order)].tolist()
    kept = torch.tensor(sorted(kept), dtype=torch.long)
    return kept[torch.sort(scores[kept], descending=True, stable=True)[1]].tolist()


def test_batched_nms_is_per_class_nms_at_every_size():
    gen = torch.Generator().manual_seed(4)
    for n in (0, 1, 7, 40, 300, 1100):   # torchvision switches paths above 1,000 boxes
        boxes = random_boxes(gen, n)
        scores = (torch.rand(n, generator=gen) * 10).floor() / 10
        idxs = torch.randint(0, 4, (n,), generator=gen) * 3 - 2   # arbitrary class ids
        for thr in (0.3, 0.6):
            got = batched_nms(boxes, scores, idxs, thr)
            assert got.tolist() == per_class_reference(boxes, scores, idxs, thr), (n, thr)


def test_batched_nms_equals_the_coordinate_offset_trick_where_the_shift_is_exact():
    gen = torch.Generator().manual_seed(5)
    for _ in range(10):
        n = 80
        boxes = random_boxes(gen, n, torch.float32, integer=True).clamp(min=0)  # exact shifts
        scores = (torch.rand(n, generator=gen) * 8).floor() / 8
        idxs = torch.randint(0, 5, (n,), generator=gen)
        offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))  # torchvision's
        shifted = boxes + offsets[:, None]
        order = scores.sort(0, True)[1]
        assert batched_nms(boxes, scores, idxs, 0.5, stable=False).tolist() == \
            kernel_nms(shifted, scores, 0.5, order)
        stable = torch.sort(scores, descending=True, stable=True)[1]
        assert batched_nms(boxes, scores, idxs, 0.5).tolist() == \
            kernel_nms(shifted, scores, 0.5, stable)


def test_nms_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores must have shape"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        nms(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2), 0.5)
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    half = nms(torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float16),
               torch.tensor([0.1, 0.2], dtype=torch.float16), 0.5)
    assert half.tolist() == [1]


# -- box coding ------------------------------------------------------------------------------


def test_encode_by_hand():
    proposals = torch.tensor([[0.0, 0, 10, 10]], dtype=torch.float64)
    gt = torch.tensor([[5.0, 5, 15, 25]], dtype=torch.float64)  # centres (10, 15), (5, 5)
    assert encode_boxes(gt, proposals).tolist() == [[0.5, 1.0, 0.0, math.log(2.0)]]
    deltas = encode_boxes(gt, proposals, weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(deltas, torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2.0)]],
                                                    dtype=torch.float64))
    # float32 boxes stay float32
    assert encode_boxes(gt.float(), proposals.float()).dtype == torch.float32
    torch.testing.assert_close(decode_boxes(deltas, proposals, (10.0, 10.0, 5.0, 5.0)), gt)


def test_decode_inverts_encode_and_clamps():
    gen = torch.Generator().manual_seed(6)
    proposals = random_boxes(gen, 64, torch.float64)[4:]
    gt = random_boxes(gen, 64, torch.float64)[4:]
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        deltas = encode_boxes(gt, proposals, weights)
        torch.testing.assert_close(decode_boxes(deltas, proposals, weights), gt,
                                   rtol=0, atol=1e-10)
    # K boxes per proposal (one per class)
    two = torch.cat([encode_boxes(gt, proposals), encode_boxes(proposals, proposals)], 1)
    decoded = decode_boxes(two, proposals)
    assert decoded.shape == (60, 8)
    torch.testing.assert_close(decoded[:, 4:], proposals, rtol=0, atol=1e-10)
    # dw, dh clamped at log(1000 / 16) before exp
    huge = decode_boxes(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.tensor([[0.0, 0, 2, 2]]))
    torch.testing.assert_close(huge, torch.tensor([[1 - 62.5, 1 - 62.5, 1 + 62.5, 1 + 62.5]]))
