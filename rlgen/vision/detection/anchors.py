"""Anchor boxes for the region proposal network (Ren et al. 2015, section 3.1.1).

At every location of a feature map of stride ``s``, one anchor per (size, aspect ratio) pair:
an anchor of size ``a`` and ratio ``r = h / w`` has ``w = a / sqrt(r)``, ``h = a * sqrt(r)``
(area ``a^2``), centred on the location's top-left pixel corner ``(j * s, i * s)`` for the cell
in row ``i``, column ``j``, with its half-extents rounded to whole pixels: torchvision's
``AnchorGenerator``, anchor for anchor, so weights and habits carry over. Order: location by
location (row-major), and at each location ratio-major (all sizes of the first ratio, then the
next ratio), which is the order the RPN head's ``(N, A, H, W)`` outputs flatten to.

Default sizes scale with the image (``default_anchor_sizes``): the paper's 128, 256 and 512
pixels (ratios 0.5, 1, 2) for images whose shorter side is 600 pixels or more (the paper
rescales to 600); for smaller images the same three sizes times ``short side / 600`` (a 64-pixel
image gets 13.7, 27.3 and 54.6). With a feature pyramid, one size per level (Lin et al. 2017):
32 pixels at the finest level, doubling per level, for a shorter side of 800 pixels or more,
scaled by ``short side / 800`` below that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator", "cell_anchors", "default_anchor_sizes"]

PAPER_SIZES = (128.0, 256.0, 512.0)
PAPER_SHORT_SIDE = 600
FPN_FINEST_SIZE = 32.0
FPN_SHORT_SIDE = 800


def default_anchor_sizes(image_size: tuple[int, int], num_levels: int = 1,
                         fpn: bool = False) -> tuple[tuple[float, ...], ...]:
    """Anchor sizes (pixels) per feature level for images of ``image_size`` ``(H, W)``: the
    paper's (128, 256, 512) on one map, scaled down by ``min(H, W) / 600`` for smaller
    images; with ``fpn``, one size per level, ``32 * 2**level`` scaled by ``min(H, W) / 800``
    below 800 pixels."""
    short = min(image_size)
    if fpn:
        scale = min(1.0, short / FPN_SHORT_SIDE)
        return tuple((FPN_FINEST_SIZE * 2**i * scale,) for i in range(num_levels))
    scale = min(1.0, short / PAPER_SHORT_SIDE)
    return tuple(tuple(s * scale for s in PAPER_SIZES) for _ in range(num_levels))


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """``(len(ratios) * len(sizes), 4)`` anchors centred on the origin, ratio-major, with
    half-extents rounded to whole pixels (torchvision's ``generate_anchors``)."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator:
    """Anchors for a list of feature maps: level ``l`` has stride ``strides[l]`` pixels, sizes
    ``sizes[l]`` and ratios ``aspect_ratios[l]`` (one sequence for all levels is fine)."""

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float]
                 | Sequence[Sequence[float]], strides: Sequence[int]):
        if not sizes or not strides or len(sizes) != len(strides):
            raise ValueError(f"anchor sizes need one sequence per feature level: "
                             f"{len(strides)} level(s), got sizes {sizes!r}")
        if aspect_ratios and not isinstance(aspect_ratios[0], Sequence):
            aspect_ratios = [aspect_ratios] * len(sizes)
        if len(aspect_ratios) != len(sizes):
            raise ValueError(f"aspect_ratios need one sequence per level ({len(sizes)}), "
                             f"got {aspect_ratios!r}")
        for level, (s, r) in enumerate(zip(sizes, aspect_ratios)):
            if not s or not r or min(s) <= 0 or min(r) <= 0 or not all(map(math.isfinite, s)):
                raise ValueError(f"anchor sizes and aspect ratios must be positive, got sizes "
                                 f"{s!r} and ratios {r!r} at level {level}")
        self.sizes = [tuple(float(v) for v in s) for s in sizes]
        self.aspect_ratios = [tuple(float(v) for v in r) for r in aspect_ratios]
        self.strides = [int(s) for s in strides]
        self._cells = [cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def num_anchors_per_location(self) -> list[int]:
        return [c.shape[0] for c in self._cells]

    def grid_anchors(self, level: int, height: int, width: int,
                     device: torch.device | None = None) -> Tensor:
        """``(height * width * A, 4)`` anchors of one level, location-major."""
        stride = self.strides[level]
        cells = self._cells[level].to(device)
        ys = torch.arange(height, dtype=torch.float32, device=device) * stride
        xs = torch.arange(width, dtype=torch.float32, device=device) * stride
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([x, y, x, y], dim=-1).reshape(-1, 1, 4)
        return (shifts + cells[None]).reshape(-1, 4)

    def __call__(self, feature_sizes: Sequence[tuple[int, int]],
                 device: torch.device | None = None) -> list[Tensor]:
        """One ``(H_l * W_l * A_l, 4)`` float32 tensor per level, for maps of these sizes."""
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps, got "
                             f"{len(feature_sizes)}")
        return [self.grid_anchors(i, h, w, device) for i, (h, w) in enumerate(feature_sizes)]
