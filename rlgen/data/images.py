"""Image grids and image files without torchvision: ``make_grid`` and ``save_image``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _normalize(images: torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    lo, hi = value_range if value_range is not None else (float(images.min()), float(images.max()))
    return (images - lo) / max(hi - lo, 1e-12)


def make_grid(
    images: torch.Tensor,
    nrow: int = 8,
    padding: int = 2,
    normalize: bool = False,
    value_range: tuple[float, float] | None = None,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` images into one ``(C, H', W')`` grid with ``nrow`` images a row.

    Images are expected in [0, 1] unless ``normalize`` maps ``value_range`` (default: min..max)
    there. One-channel images stay one-channel.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(
            f"make_grid expects (N, C, H, W) or (C, H, W) images, got {tuple(images.shape)}"
        )
    images = images.detach().float().cpu()
    if normalize:
        images = _normalize(images, value_range)
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = torch.full(
        (c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value
    )
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(C, H, W)`` float in [0, 1] (or uint8) -> a PIL image (L for 1 channel, RGB for 3)."""
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"expected one (C, H, W) image with C in 1, 3, 4, got {tuple(image.shape)}"
        )
    if image.dtype == torch.uint8:
        array = image.cpu().numpy()
    else:
        array = (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    array = np.transpose(array, (1, 2, 0))
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array)


def save_image(
    images: torch.Tensor,
    path: str | Path,
    nrow: int = 8,
    padding: int = 2,
    normalize: bool = False,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Write one image ``(C, H, W)`` or a grid of ``(N, C, H, W)`` images to ``path`` (PNG, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if images.dim() == 4:
        images = make_grid(images, nrow=nrow, padding=padding, normalize=normalize,
                           value_range=value_range)
    elif normalize:
        images = _normalize(images.float(), value_range)
    to_pil(images).save(path)
    return path
