"""Any folder of images as a labelled dataset, decoded with Pillow.

Two layouts, as torchvision's ``ImageFolder`` and the DCGAN example (Radford, Metz,
Chintala, "Unsupervised representation learning with deep convolutional generative
adversarial networks", ICLR 2016) expect them:

- ``root/<class>/**/<image>``: one class per sub-folder, labels in sorted folder order;
- ``root/<image>``: a flat folder (e.g. CelebA's ``img_align_celeba``), one class, label 0.

Every image is converted to one mode (``"L"`` grey or ``"RGB"``) and, when ``image_size`` is
given, resized: an int resizes the shorter side and centre-crops a square (the DCGAN
recipe), an ``(h, w)`` pair resizes to exactly that shape.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rlgen.data.base import (
    DataFormatError,
    DatasetNotFoundError,
    ImageDataset,
    ImageSize,
    normalize_size,
)
from rlgen.registry import DATASETS

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)  # fmt: skip
MODES = {"L": 1, "RGB": 3}


def _is_image(path: Path) -> bool:
    # Hidden files include macOS "._name.png" resource forks, which are not images.
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and (path.is_file())
    )


def find_images(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) for ``root``, in a deterministic (sorted) order."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} does not exist; expected {root}/<class>/<image> "
            f"or a flat folder {root}/<image>"
        )
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, sorted(p for p in d.rglob("*") if _is_image(p))) for d in class_dirs]
    per_class = [(name, files) for name, files in per_class if files]
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    if per_class:
        if loose:
            warnings.warn(
                f"{root}: {len(loose)} image(s) beside the class folders are ignored "
                f"(e.g. {loose[0].name}); move them into a class folder",
                stacklevel=3,
            )
        files = [f for _, fs in per_class for f in fs]
        labels = [i for i, (_, fs) in enumerate(per_class) for _ in fs]
        return files, labels, [name for name, _ in per_class]
    if loose:
        return loose, [0] * len(loose), [root.name]
    raise DatasetNotFoundError(
        f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} files in "
        f"{root}/<class>/ and directly in {root})"
    )


def _resize(img: Image.Image, size: tuple[int, int], crop: bool) -> Image.Image:
    h, w = size
    if not crop:
        return img.resize((w, h), Image.Resampling.BILINEAR)
    # Shorter side to the target, then the centre square (h == w here).
    scale = h / min(img.size)
    new = (max(h, round(img.size[0] * scale)), max(h, round(img.size[1] * scale)))
    img = img.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - w) // 2, (new[1] - h) // 2
    return img.crop((left, top, left + w, top + h))


def load_image(
    path: str | Path, mode: str = "RGB", size: tuple[int, int] | None = None, crop: bool = False
) -> np.ndarray:
    """One image file -> uint8 array (C, H, W); a corrupt file raises an error naming it."""
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None:
                img = _resize(img, size, crop)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataFormatError(
            f"{path}: cannot read this image ({type(exc).__name__}: {exc}); "
            "remove or replace the file"
        ) from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class ImageFolder(ImageDataset):
    """Images from a folder, converted to ``mode`` and optionally resized; kept in memory.

    Without ``image_size`` every image must already have the first one's size. Decoding
    runs in ``num_workers`` threads (Pillow releases the GIL while decoding).
    """

    def __init__(
        self,
        root: str | Path,
        image_size: ImageSize | None = None,
        mode: str = "RGB",
        transform: Callable[[torch.Tensor], Any] | None = None,
        *,
        num_workers: int | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        self.root = Path(root).expanduser()
        files, labels, classes = find_images(self.root)
        crop = isinstance(image_size, int)
        resize = normalize_size(image_size)
        size = resize or tuple(load_image(files[0], mode).shape[1:])
        images = np.empty((len(files), MODES[mode], *size), dtype=np.uint8)
        workers = num_workers or min(8, os.cpu_count() or 1)
        show = len(files) >= 5000 and sys.stderr.isatty()

        def load(path: Path) -> np.ndarray:
            return load_image(path, mode, resize, crop)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, array in enumerate(pool.map(load, files)):
                if array.shape[1:] != size:
                    raise DataFormatError(
                        f"{files[i]}: image is {array.shape[2]}x{array.shape[1]} (WxH) but "
                        f"{files[0].name} is {size[1]}x{size[0]}; pass image_size "
                        "(--image-size) to resize every image to one size"
                    )
                images[i] = array
                if show and (i + 1) % 5000 == 0:
                    print(f"{self.root}: {i + 1}/{len(files)} images loaded", file=sys.stderr)
        self.files = files
        super().__init__(
            torch.from_numpy(images),
            labels,
            classes=classes,
            transform=transform,
            name=f"folder {self.root}",
        )


@DATASETS.register("folder")
def folder(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> ImageFolder:
    """Any image folder (root/<class>/<img> or flat), via Pillow; mode L or RGB, resized."""
    # One folder is one split: `train` is accepted for the common builder signature only.
    if download:
        raise ValueError(
            "the folder dataset reads local images and cannot download; drop --download "
            "and point --data-root at the image folder"
        )
    return ImageFolder(root, image_size=image_size, **kw)
