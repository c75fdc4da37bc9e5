"""Nielsen's "expanded" MNIST: every digit plus four copies shifted by one pixel.

Michael Nielsen, "Neural Networks and Deep Learning", chapter 6 (2015), grows the 50,000
MNIST training digits to 250,000 this way, which lifts his ReLU convnet from 99.23% to
99.37% test accuracy. Shifted-in rows and columns are filled with zeros (background).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)

SHIFTS = ("down", "up", "right", "left")


def _shift(images: Array, pixels: int, direction: str) -> Array:
    out = torch.zeros_like(images) if isinstance(images, torch.Tensor) else np.zeros_like(images)
    p = pixels
    if direction == "down":
        out[..., p:, :] = images[..., :-p, :]
    elif direction == "up":
        out[..., :-p, :] = images[..., p:, :]
    elif direction == "right":
        out[..., :, p:] = images[..., :, :-p]
    else:  # left
        out[..., :, :-p] = images[..., :, p:]
    return out


def shift_images(images: Array, pixels: int = 1) -> Array:
    """The four copies of ``images`` (..., H, W) shifted by ``pixels`` down, up, right, left.

    Returns the copies stacked along the first axis in that order: ``(4N, ...)`` for an
    input ``(N, ...)``; works on torch tensors and numpy arrays of any dtype.
    """
    if images.ndim < 3:
        raise ValueError(
            f"images must be a batch (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}"
        )
    height, width = images.shape[-2:]
    if not 1 <= pixels < min(height, width):
        raise ValueError(f"pixels must be in [1, {min(height, width) - 1}], got {pixels}")
    copies = [_shift(images, pixels, d) for d in SHIFTS]
    return torch.cat(copies) if isinstance(images, torch.Tensor) else np.concatenate(copies)


def expand_with_shifts(images: Array, labels: Array, pixels: int = 1) -> tuple[Array, Array]:
    """Nielsen's expansion: the originals followed by their 4 shifted copies (5N examples)."""
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; they must match")
    shifted = shift_images(images, pixels)
    if isinstance(images, torch.Tensor):
        return torch.cat([images, shifted]), torch.as_tensor(labels).repeat(5)
    return np.concatenate([images, shifted]), np.tile(np.asarray(labels), 5)
