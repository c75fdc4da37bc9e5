"""RoI Align and RoI max pooling against direct per-point computations written plainly from
torchvision's kernel definitions (``roi_align_kernel.cpp``, ``roi_pool_kernel.cpp``)."""

import math

import pytest
import torch

from rlgen.vision.detection.roi_pooling import boxes_to_rois, roi_align, roi_pool


def bilinear(fmap, y, x):
    """torchvision's ``bilinear_interpolate`` for one point of a (C, H, W) map."""
    height, width = fmap.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return fmap.new_zeros(fmap.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * fmap[:, y_low, x_low] + hy * lx * fmap[:, y_low, x_high]
            + ly * hx * fmap[:, y_high, x_low] + ly * lx * fmap[:, y_high, x_high])


def roi_align_direct(features, rois, out_h, out_w, scale, sampling_ratio, aligned):
    results = []
    for roi in rois.tolist():
        fmap = features[int(roi[0])]
        offset = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * scale - offset for v in roi[1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        out = fmap.new_zeros((fmap.shape[0], out_h, out_w))
        for ph in range(out_h):
            for pw in range(out_w):
                total = fmap.new_zeros(fmap.shape[0])
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + bilinear(fmap, y, x)
                out[:, ph, pw] = total / count
        results.append(out)
    return torch.stack(results)


def c_round(v):
    return math.copysign(math.floor(abs(v) + 0.5), v)


def roi_pool_direct(features, rois, out_h, out_w, scale):
    height, width = features.shape[2:]
    results = []
    for roi in rois.tolist():
        fmap = features[int(roi[0])]
        x1, y1, x2, y2 = (int(c_round(v * scale)) for v in roi[1:])
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        out = fmap.new_zeros((fmap.shape[0], out_h, out_w))
        for ph in range(out_h):
            for pw in range(out_w):
                hs = min(max(math.floor(ph * bin_h) + y1, 0), height)
                he = min(max(math.ceil((ph + 1) * bin_h) + y1, 0), height)
                ws = min(max(math.floor(pw * bin_w) + x1, 0), width)
                we = min(max(math.ceil((pw + 1) * bin_w) + x1, 0), width)
                if he > hs and we > ws:
                    out[:, ph, pw] = fmap[:, hs:he, ws:we].amax(dim=(1, 2))
        results.append(out)
    return torch.stack(results)


def make_rois(gen, n_images, image_h, image_w):
    """Random boxes inside and across the image border, tiny (sub-cell) and degenerate ones."""
    rows = []
    for _ in range(10):
        x1 = float(torch.empty(1).uniform_(-8, image_w, generator=gen))
        y1 = float(torch.empty(1).uniform_(-8, image_h, generator=gen))
        w = float(torch.empty(1).uniform_(0, image_w / 1.5, generator=gen))
        h = float(torch.empty(1).uniform_(0, image_h / 1.5, generator=gen))
        rows.append([x1, y1, x1 + w, y1 + h])
    rows += [
        [-5.0, -7.0, image_w + 3.0, image_h + 9.0],  # the whole map and beyond
        [image_w - 1.2, image_h - 0.7, image_w + 6.0, image_h + 4.0],  # past the corner
        [10.3, 6.1, 10.9, 6.4],  # sub-pixel
        [3.0, 4.0, 3.0, 4.0],  # a point
        [-20.0, -20.0, -12.0, -10.0],  # wholly outside
        [0.0, 0.0, 1.0, image_h],  # one pixel wide along the left border
    ]
    boxes = torch.tensor(rows)
    batch = torch.randint(0, n_images, (boxes.shape[0], 1), generator=gen).float()
    return torch.cat([batch, boxes], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 1, -1])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_align_matches_direct_computation(aligned, sampling_ratio, scale):
    gen = torch.Generator().manual_seed(int(scale * 8) + sampling_ratio + 10 * aligned)
    image_h, image_w = 20, 28
    features = torch.randn(2, 3, int(image_h * scale), int(image_w * scale), generator=gen)
    rois = make_rois(gen, 2, image_h, image_w)
    got = roi_align(features, rois, (3, 2), scale, sampling_ratio, aligned)
    want = roi_align_direct(features.double(), rois, 3, 2, scale, sampling_ratio, aligned)
    assert got.shape == (rois.shape[0], 3, 3, 2)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_roi_align_gradient_matches_direct_computation():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 6, 7, generator=gen, dtype=torch.float64)
    rois = make_rois(gen, 2, 12, 14)
    upstream = torch.randn(rois.shape[0], 2, 2, 2, generator=gen, dtype=torch.float64)
    a = features.clone().requires_grad_()
    (roi_align(a, rois, 2, 0.5, -1, True) * upstream).sum().backward()
    b = features.clone().requires_grad_()
    (roi_align_direct(b, rois, 2, 2, 0.5, -1, True) * upstream).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_roi_align_known_values():
    # a map whose value is its x coordinate (cell centre at x + 0.5 with aligned=True):
    # a box from pixel 2 to 6 averages x over [2, 6] -> sampled centres in cells 1.5..5.5
    fmap = torch.arange(10.0).repeat(10, 1)[None, None]
    out = roi_align(fmap, [torch.tensor([[2.0, 2.0, 6.0, 6.0]])], (1, 2), 1.0, 2, aligned=True)
    # bins [2, 4] and [4, 6]; samples at 2.5, 3.5 and 4.5, 5.5 (pixels) -> x - 0.5 in cells
    torch.testing.assert_close(out.flatten(), torch.tensor([2.5, 4.5]))


@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 3])
def test_roi_pool_matches_direct_computation(scale):
    gen = torch.Generator().manual_seed(7)
    image_h, image_w = 21, 27
    features = torch.randn(2, 3, math.ceil(image_h * scale), math.ceil(image_w * scale),
                           generator=gen)
    rois = make_rois(gen, 2, image_h, image_w)
    rois = torch.cat([rois, torch.tensor([[0.0, 2.5, 4.5, 7.5, 9.5]])])  # C-style halves
    got = roi_pool(features, rois, (3, 4), scale)
    want = roi_pool_direct(features, rois, 3, 4, scale)
    torch.testing.assert_close(got, want)


def test_roi_pool_in_small_chunks_is_the_same(monkeypatch):
    from rlgen.vision.detection import roi_pooling

    gen = torch.Generator().manual_seed(8)
    features = torch.randn(1, 4, 9, 9, generator=gen)
    rois = make_rois(gen, 1, 9, 9)
    whole = roi_pool(features, rois, 2)
    monkeypatch.setattr(roi_pooling, "_POOL_CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(roi_pool(features, rois, 2), whole)


def test_roi_pool_gradient_reaches_the_maxima():
    features = torch.zeros(1, 1, 4, 4)
    features[0, 0, 1, 2] = 5.0
    features.requires_grad_()
    roi_pool(features, [torch.tensor([[0.0, 0.0, 3.0, 3.0]])], 1).sum().backward()
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1, 2] = 1.0
    torch.testing.assert_close(features.grad, expected)


def test_list_of_boxes_is_the_same_as_rois():
    gen = torch.Generator().manual_seed(9)
    features = torch.randn(2, 2, 8, 8, generator=gen)
    boxes = [torch.tensor([[1.0, 1.0, 5.0, 6.0]]), torch.tensor([[0.0, 2.0, 7.0, 3.0],
                                                                 [2.0, 2.0, 4.0, 4.0]])]
    rois = boxes_to_rois(boxes)
    assert rois[:, 0].tolist() == [0.0, 1.0, 1.0]
    torch.testing.assert_close(roi_align(features, boxes, 2, 1.0, 2, True),
                               roi_align(features, rois, 2, 1.0, 2, True))
    assert roi_align(features, torch.zeros(0, 5), 3).shape == (0, 2, 3, 3)


def test_bad_inputs_are_refused():
    features = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        roi_align(features, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(features, torch.tensor([[1.0, 0, 0, 2, 2]]), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(features, torch.tensor([[0.0, 0, 0, 2, 2]]), 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        roi_align(features[0], torch.tensor([[0.0, 0, 0, 2, 2]]), 2)
