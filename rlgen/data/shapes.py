"""A tiny generated dataset of filled circles and squares, for fast tests and demos.

Each image holds one shape of random position, size and brightness (or colour) on a black
background; label 0 is a circle, 1 a square. A square's side is chosen so that its area
equals the circle's of the same radius, so pixel counts alone do not give the class away.
Everything follows from ``seed`` (numpy's ``RandomState``, whose stream numpy keeps frozen),
so a generative model's test can train on the same images on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlgen.data.base import ImageDataset, ImageSize, normalize_size
from rlgen.registry import DATASETS

CLASSES = ("circle", "square")


def make_shapes(
    num_samples: int, image_size: ImageSize = 32, channels: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, C, H, W), labels int64 (N,)), balanced between the two classes."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    h, w = normalize_size(image_size)
    if min(h, w) < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size!r}")
    rng = np.random.RandomState(seed)
    labels = rng.permutation(np.arange(num_samples) % len(CLASSES))
    side = min(h, w)
    radius = rng.uniform(side / 8, side / 4, num_samples).astype(np.float32)
    cy = rng.uniform(radius, h - radius).astype(np.float32)
    cx = rng.uniform(radius, w - radius).astype(np.float32)
    if channels == 1:
        colour = rng.uniform(0.5, 1.0, (num_samples, 1))
    else:  # a random colour whose brightest channel is at least half on
        colour = rng.uniform(0.0, 1.0, (num_samples, 3))
        colour[np.arange(num_samples), rng.randint(0, 3, num_samples)] = rng.uniform(
            0.5, 1.0, num_samples
        )
    colour = np.rint(colour * 255).astype(np.uint8)
    images = np.empty((num_samples, channels, h, w), dtype=np.uint8)
    for i in range(0, num_samples, 1024):  # chunks keep the float temporaries small
        part = slice(i, i + 1024)
        mask = _masks(labels[part], cy[part], cx[part], radius[part], h, w)
        images[part] = mask[:, None] * colour[part, :, None, None]  # bool x uint8 -> uint8
    return images, labels.astype(np.int64)


def _masks(labels, cy, cx, radius, h: int, w: int) -> np.ndarray:
    """Boolean (n, h, w) masks: a disc for label 0, an axis-aligned square for label 1."""
    dy = np.abs(np.arange(h, dtype=np.float32)[None, :, None] + 0.5 - cy[:, None, None])
    dx = np.abs(np.arange(w, dtype=np.float32)[None, None, :] + 0.5 - cx[:, None, None])
    r = radius[:, None, None]
    half_side = r * (math.sqrt(math.pi) / 2)  # the square has the disc's area
    circle = dy**2 + dx**2 <= r**2
    square = (dy <= half_side) & (dx <= half_side)
    return np.where(labels[:, None, None] == 0, circle, square)


class Shapes(ImageDataset):
    """Generated circles (label 0) and squares (label 1); train and test use different seeds."""

    def __init__(
        self,
        num_samples: int = 2000,
        image_size: ImageSize = 32,
        channels: int = 1,
        train: bool = True,
        seed: int = 0,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ):
        # The test split draws from a different stream so it never repeats training images.
        images, labels = make_shapes(num_samples, image_size, channels, seed * 2 + (not train))
        super().__init__(
            torch.from_numpy(images),
            labels,
            classes=CLASSES,
            transform=transform,
            name=f"shapes {'train' if train else 'test'}",
        )


@DATASETS.register("shapes")
def shapes(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    *,
    num_samples: int | None = None,
    channels: int = 1,
    seed: int = 0,
    **kw: Any,
) -> Shapes:
    """Generated circles vs squares (default 2000 train / 500 test, 32x32 grey), for tests."""
    # Nothing to read or download: `root` and `download` exist for the common signature.
    if num_samples is None:
        num_samples = 2000 if train else 500
    return Shapes(
        num_samples,
        image_size if image_size is not None else 32,
        channels=channels,
        train=train,
        seed=seed,
        **kw,
    )
