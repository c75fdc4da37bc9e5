"""RoI pooling (Fast R-CNN, Girshick 2015) and RoI Align (Mask R-CNN, He et al. 2017) in
plain torch, with the semantics of ``torchvision.ops.roi_pool`` / ``roi_align``.

Both take a feature map batch ``(N, C, H, W)`` and boxes in image pixels, either a ``(K, 5)``
tensor of rows ``(batch_index, x1, y1, x2, y2)`` or a list of ``(K_i, 4)`` tensors (one per
image), and return ``(K, C, out_h, out_w)``; ``spatial_scale`` maps pixels to feature cells
(``1 / stride``).

RoI Align, as torchvision's kernel defines it:

- the box is scaled by ``spatial_scale``; ``aligned=True`` then shifts it by half a cell
  (``- 0.5``) so that a continuous coordinate ``x`` samples between cell centres correctly
  (cell ``i`` has its centre at ``i + 0.5``); ``aligned=False`` (the legacy behaviour) does not
  shift and widens boxes thinner than one cell to one cell;
- each of the ``out_h x out_w`` bins of the box is sampled at a regular grid of
  ``sampling_ratio x sampling_ratio`` points (``sampling_ratio <= 0``: ``ceil(roi_h /
  out_h) x ceil(roi_w / out_w)`` points, per box), at the centres of the grid's sub-bins;
- a point is read by bilinear interpolation of the four surrounding cells; a point more than
  one cell outside the map (``y < -1``, ``y > H``, ``x < -1`` or ``x > W``) reads 0, a point
  in that margin is clamped to the border cell;
- the bin's value is the mean of its points.

Bilinear weights are separable (a product of a weight along y and one along x), and so is the
out-of-map rule, so the pooled bins are ``Wy @ F @ Wx^T`` for each box: ``Wy`` ``(out_h, H)``
holds, for each bin row, the mean of its sample points' interpolation weights over the map's
rows, ``Wx`` the same over columns. That is two batched matrix products per image, no
per-point gather, and gradients flow to the features through them (boxes get none, as in
torchvision).

RoI max pooling, as torchvision's kernel: the box corners are scaled and rounded (half away
from zero) to cells, the box covers ``round(x2) - round(x1) + 1`` cells (at least 1), bin
``p`` covers cells ``floor(p * size / out)`` to ``ceil((p + 1) * size / out)`` (exclusive)
from the box's first cell, clipped to the map; an empty bin gives 0, any other its maximum.
The maximum is taken over rows and then over columns (both are max over an interval), on
chunks of boxes so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["boxes_to_rois", "roi_align", "roi_pool"]

# keep the gathered intermediate of ``roi_pool`` under this many elements per chunk of boxes
_POOL_CHUNK_ELEMENTS = 1 << 24


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(int(s) for s in output_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"output_size must be a positive int or (height, width), "
                         f"got {output_size!r}")
    return size


def boxes_to_rois(boxes: Tensor | Sequence[Tensor]) -> Tensor:
    """``(K, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` from a ``(K, 5)`` tensor (returned
    as is) or a list of per-image ``(K_i, 4)`` box tensors."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"rois must have shape (K, 5) (batch_index, x1, y1, x2, y2), "
                             f"got {tuple(boxes.shape)}")
        return boxes
    rows = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must have shape (K, 4) (x1, y1, x2, y2), "
                             f"got {tuple(b.shape)}")
        rows.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    if not rows:
        raise ValueError("boxes is an empty list: give one (K_i, 4) tensor per image")
    return torch.cat(rows)


def _check(features: Tensor, rois: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"features must have shape (N, C, H, W), got {tuple(features.shape)}")
    if rois.numel() and (rois[:, 0].min() < 0 or rois[:, 0].max() >= features.shape[0]):
        raise ValueError(f"roi batch indices must lie in [0, {features.shape[0]}), got "
                         f"{rois[:, 0].min().item()}..{rois[:, 0].max().item()}")


def _per_image(features: Tensor, rois: Tensor, out_size: tuple[int, int], pool_one) -> Tensor:
    """Run ``pool_one(feature_map (C, H, W), rows (k, D))`` on the rows of ``rois`` ``(K, 1 +
    D)`` (batch index, then boxes or per-box data) of each image and put the results back in
    the order of ``rois``."""
    n, c = features.shape[:2]
    if rois.shape[0] == 0:
        return features.new_zeros((0, c, *out_size))
    batch = rois[:, 0].long()
    outs, order = [], []
    for b in range(n):
        idx = torch.nonzero(batch == b).flatten()
        if idx.numel():
            outs.append(pool_one(features[b], rois[idx, 1:]))
            order.append(idx)
    out = torch.cat(outs)
    return out[torch.argsort(torch.cat(order))]


# -- RoI Align ------------------------------------------------------------------------------


def _align_weights(start: Tensor, extent: Tensor, pooled: int, grid: Tensor,
                   size: int) -> Tensor:
    """``(k, pooled, size)``: for each box and bin along one axis, the mean over the bin's
    ``grid`` sample points of their bilinear weights on the ``size`` cells of that axis (0 for
    points beyond the one-cell margin), as torchvision's ``bilinear_interpolate``."""
    k = start.shape[0]
    steps = max(int(grid.max()), 1)
    bin_size = (extent / pooled)[:, None, None]
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(steps, device=start.device, dtype=start.dtype)[None, None, :]
    g = grid.to(start.dtype)[:, None, None]
    # (k, pooled, steps) sample coordinates; a box with no samples (zero extent) divides by 1
    coord = start[:, None, None] + p * bin_size + (i + 0.5) * bin_size / g.clamp(min=1)
    used = (i < g) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor()
    at_end = low >= size - 1  # the kernel's y_low >= height - 1: both corners on the last cell
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    coord = torch.where(at_end, low, coord)
    frac = coord - low
    high = torch.where(at_end, low, low + 1)
    scale = used.to(start.dtype) / g.clamp(min=1)  # the kernel's count = max(grid, 1)
    weights = start.new_zeros((k, pooled, size))
    weights.scatter_add_(2, low.long(), (1 - frac) * scale)
    weights.scatter_add_(2, high.long(), frac * scale)
    return weights


def roi_align(features: Tensor, boxes: Tensor | Sequence[Tensor],
              output_size: int | Sequence[int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoI Align (``torchvision.ops.roi_align``'s semantics and signature; see the module
    docstring): ``(K, C, out_h, out_w)`` bilinear samples of ``features`` ``(N, C, H, W)``
    inside each box (pixels, scaled by ``spatial_scale``)."""
    rois = boxes_to_rois(boxes)
    _check(features, rois)
    out_h, out_w = _pair(output_size)
    _, _, height, width = features.shape
    offset = 0.5 if aligned else 0.0
    if rois.shape[0] == 0:
        return features.new_zeros((0, features.shape[1], out_h, out_w))
    b = rois[:, 1:].detach().float() * spatial_scale - offset
    x1, y1, x2, y2 = b.unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # legacy: at least one cell
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio)
        grid_w = torch.full_like(roi_w, sampling_ratio)
    else:
        grid_h, grid_w = torch.ceil(roi_h / out_h), torch.ceil(roi_w / out_w)
    # the weights of every box at once; the image's rows of them picked by _per_image
    weights = torch.cat([_align_weights(y1, roi_h, out_h, grid_h, height).flatten(1),
                         _align_weights(x1, roi_w, out_w, grid_w, width).flatten(1)], dim=1)
    split = out_h * height

    def pool_one(fmap: Tensor, w: Tensor) -> Tensor:
        k, channels = w.shape[0], fmap.shape[0]
        wy = w[:, :split].reshape(k * out_h, height).to(fmap.dtype)
        wx = w[:, split:].reshape(k, out_w, width).to(fmap.dtype)
        # rows[k, p, c, w] = sum_h wy[k, p, h] fmap[c, h, w]: one matrix product
        rows = wy @ fmap.transpose(0, 1).reshape(height, channels * width)
        # out[k, p, c, q] = sum_w rows[k, p, c, w] wx[k, q, w]: a batched one
        out = rows.view(k, out_h * channels, width) @ wx.transpose(1, 2)
        return out.view(k, out_h, channels, out_w).transpose(1, 2)

    return _per_image(features, torch.cat([rois[:, :1].float(), weights], dim=1), (out_h, out_w),
                      pool_one)


# -- RoI max pooling ------------------------------------------------------------------------


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: halves away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _bin_limits(start: Tensor, length: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor]:
    """``(k, pooled)`` first and one-past-last cell of each bin along one axis, clipped."""
    bin_size = (length / pooled)[:, None]
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)[None, :]
    lo = (torch.floor(p * bin_size) + start[:, None]).clamp(0, size)
    hi = (torch.ceil((p + 1) * bin_size) + start[:, None]).clamp(0, size)
    return lo.long(), hi.long()


def _interval_max(values: Tensor, lo: Tensor, hi: Tensor, dim_size: int) -> Tensor:
    """``values`` ``(C, k, P, S)`` (S cells along the last axis) reduced to ``(C, k, P, Q)``:
    for box ``k`` and bin ``q`` of ``lo`` / ``hi`` ``(k, Q)``, the max over cells
    ``lo <= s < hi`` (``-inf`` when empty)."""
    c, k, p = values.shape[:3]
    span = max(int((hi - lo).max()), 1)
    cells = lo[:, :, None] + torch.arange(span, device=lo.device)  # (k, Q, span)
    inside = cells < hi[:, :, None]
    cells = cells.clamp(max=dim_size - 1)
    q = lo.shape[1]
    index = cells.reshape(1, k, 1, q * span).expand(c, k, p, q * span)
    picked = values.gather(3, index).reshape(c, k, p, q, span)
    picked = picked.masked_fill(~inside[None, :, None], float("-inf"))
    return picked.max(dim=4).values


def roi_pool(features: Tensor, boxes: Tensor | Sequence[Tensor],
             output_size: int | Sequence[int], spatial_scale: float = 1.0) -> Tensor:
    """RoI max pooling (``torchvision.ops.roi_pool``'s semantics and signature; see the module
    docstring): ``(K, C, out_h, out_w)`` maxima of ``features`` over each box's bins."""
    rois = boxes_to_rois(boxes)
    _check(features, rois)
    out_h, out_w = _pair(output_size)
    channels, height, width = features.shape[1:]

    def pool_chunk(fmap: Tensor, b: Tensor) -> Tensor:
        corners = _round_half_away(b.detach().float() * spatial_scale)
        x1, y1, x2, y2 = corners.unbind(1)
        roi_w = (x2 - x1 + 1).clamp(min=1)
        roi_h = (y2 - y1 + 1).clamp(min=1)
        h_lo, h_hi = _bin_limits(y1, roi_h, out_h, height)
        w_lo, w_hi = _bin_limits(x1, roi_w, out_w, width)
        k = b.shape[0]
        # rows first: (C, H, W) -> (C, k, W, H) so the row axis is last, then the columns
        by_rows = fmap.transpose(1, 2)[:, None].expand(channels, k, width, height)
        rows = _interval_max(by_rows, h_lo, h_hi, height)  # (C, k, W, out_h)
        pooled = _interval_max(rows.transpose(2, 3), w_lo, w_hi, width)  # (C, k, out_h, out_w)
        empty = (h_hi <= h_lo)[:, :, None] | (w_hi <= w_lo)[:, None, :]
        pooled = torch.where(empty[None], torch.zeros_like(pooled), pooled)
        return pooled.permute(1, 0, 2, 3)

    def pool_one(fmap: Tensor, b: Tensor) -> Tensor:
        per_box = channels * max(height, width) * max(out_h, out_w) * (
            max(height, width) // min(out_h, out_w) + 2)
        chunk = max(1, _POOL_CHUNK_ELEMENTS // max(per_box, 1))
        return torch.cat([pool_chunk(fmap, b[i:i + chunk]) for i in range(0, b.shape[0], chunk)])

    return _per_image(features, rois, (out_h, out_w), pool_one)
