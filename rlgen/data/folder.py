"""Any folder of images as a labelled dataset, decoded with Pillow.

Two layouts, as torchvision's ``ImageFolder`` and the DCGAN example (Radford, Metz,
Chintala, "Unsupervised representation learning with deep convolutional generative
adversarial networks", ICLR 2016) expect them:

- ``root/<class>/**/<image>``: one class per sub-folder, labels in sorted folder order;
- ``root/<image>``: a flat folder (e.g. CelebA's ``img_align_celeba``), one class, label 0.

Every image is converted to one mode (``"L"`` grey or ``"RGB"``) and, when ``image_size`` is
given, resized: an int resizes the shorter side and centre-crops a square (the DCGAN
recipe), an ``(h, w)`` pair resizes to exactly that shape.

Unreadable images are skipped, not fatal: a file with an image extension that Pillow
cannot decode (empty, random bytes, another format, a truncated PNG or JPEG, a
decompression bomb, no read permission) is left out, and one
:class:`~rlgen.data.base.DataWarning` per dataset names the first few skipped files with
the reason and gives the count; ``ImageFolder.skipped`` lists them all. Labels and class
names stay those of the folders, even if a class loses all its images. Only if no image at
all can be read does construction fail, with a
:class:`~rlgen.data.base.DataFormatError` naming the folder and the first bad file. Every
image is decoded completely when the dataset is built, so a half-decodable file is skipped
then and can never fail later at batch time (unless the process has set Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES``, which makes Pillow pad truncated images with grey
instead of failing). Readable images of different sizes without ``image_size`` are a
configuration error, not a bad file: they raise ``DataFormatError``.
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
    DataWarning,
    ImageDataset,
    ImageSize,
    describe_error,
    normalize_size,
)
from rlgen.errors import InputError
from rlgen.registry import DATASETS

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)  # fmt: skip
MODES = {"L": 1, "RGB": 3}
SKIPPED_LISTED = 3  # skipped files named in the warning; ImageFolder.skipped has them all


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
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:  # e.g. no permission to list it
        raise DataFormatError(
            f"{root}: cannot list this image folder ({describe_error(exc)}); check its permissions"
        ) from exc
    class_dirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    per_class = [(d.name, sorted(p for p in d.rglob("*") if _is_image(p))) for d in class_dirs]
    per_class = [(name, files) for name, files in per_class if files]
    loose = [p for p in entries if _is_image(p)]
    if per_class:
        if loose:
            warnings.warn(
                f"{root}: {len(loose)} image(s) beside the class folders are ignored "
                f"(e.g. {loose[0].name}); move them into a class folder",
                DataWarning,
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


def _decode(path: Path, mode: str, size: tuple[int, int] | None, crop: bool) -> np.ndarray:
    # convert() decodes every pixel, so a truncated file fails here, not at batch time.
    with Image.open(path) as img:
        img = img.convert(mode)
        if size is not None:
            img = _resize(img, size, crop)
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def load_image(
    path: str | Path, mode: str = "RGB", size: tuple[int, int] | None = None, crop: bool = False
) -> np.ndarray:
    """One image file -> uint8 array (C, H, W), decoded completely; an unreadable file
    raises :class:`DataFormatError` naming it, whatever exception Pillow raised."""
    try:
        return _decode(Path(path), mode, size, crop)
    except Exception as exc:  # Pillow's plugins fail in many ways: OSError, SyntaxError,
        # ValueError, DecompressionBombError, but also struct.error, EOFError, IndexError...
        raise DataFormatError(
            f"{path}: cannot read this image ({describe_error(exc)}); remove or replace the file"
        ) from exc


class ImageFolder(ImageDataset):
    """Images from a folder, converted to ``mode`` and optionally resized; kept in memory.

    Without ``image_size`` every image must already have the first readable one's size.
    Unreadable files are skipped with one :class:`DataWarning` and listed in ``skipped``
    (``files`` holds the images kept, in dataset order). Decoding runs in ``num_workers``
    threads (Pillow releases the GIL while decoding).
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
        failures: dict[Path, str] = {}  # unreadable file -> why

        def load(path: Path) -> np.ndarray | None:
            try:
                return _decode(path, mode, resize, crop)
            except Exception as exc:  # as in load_image: any decoding failure
                # Pillow often quotes the full path; the warning names the file already.
                failures[path] = describe_error(exc).replace(str(path), path.name)
                return None

        start, head = 0, None
        if resize is None:  # the first readable image sets the size
            for index, path in enumerate(files):
                head = load(path)
                if head is not None:
                    start = index
                    break
            else:
                raise self._nothing_readable(files, failures)
        size = resize or tuple(head.shape[1:])
        images = np.empty((len(files) - start, MODES[mode], *size), dtype=np.uint8)
        kept: list[int] = []  # indices into files of the images stored, in order
        if head is not None:
            images[0] = head
            kept.append(start)
            start += 1
        workers = num_workers or min(8, os.cpu_count() or 1)
        show = len(files) >= 5000 and sys.stderr.isatty()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, array in enumerate(pool.map(load, files[start:]), start=start):
                if array is None:
                    continue
                if array.shape[1:] != size:
                    raise DataFormatError(
                        f"{files[i]}: image is {array.shape[2]}x{array.shape[1]} (WxH) but "
                        f"{files[kept[0]].name} is {size[1]}x{size[0]}; pass image_size "
                        "(--image-size) to resize every image to one size"
                    )
                images[len(kept)] = array
                kept.append(i)
                if show and (i + 1) % 5000 == 0:
                    print(f"{self.root}: {i + 1}/{len(files)} images loaded", file=sys.stderr)
        if not kept:
            raise self._nothing_readable(files, failures)
        self.files = [files[i] for i in kept]
        self.skipped = [f for f in files if f in failures]  # in the folder's order
        if self.skipped:
            self._warn_skipped(failures, len(files))
        super().__init__(
            torch.from_numpy(images[: len(kept)]),
            [labels[i] for i in kept],
            classes=classes,
            transform=transform,
            name=f"folder {self.root}",
        )

    def _nothing_readable(self, files: list[Path], failures: dict[Path, str]) -> DataFormatError:
        return DataFormatError(
            f"{self.root}: none of the {len(files)} image files can be read (first: "
            f"{files[0]}: {failures[files[0]]}); expected images Pillow can open, "
            f"as {self.root}/<class>/<image> or {self.root}/<image>"
        )

    def _warn_skipped(self, failures: dict[Path, str], total: int) -> None:
        listed = "; ".join(
            f"{p.relative_to(self.root)} ({failures[p]})" for p in self.skipped[:SKIPPED_LISTED]
        )
        more = len(self.skipped) - SKIPPED_LISTED
        warnings.warn(
            f"{self.root}: skipped {len(self.skipped)} of {total} image files that cannot be "
            f"read: {listed}{f'; and {more} more (see .skipped)' if more > 0 else ''}. "
            "Remove or replace them to silence this warning.",
            DataWarning,
            stacklevel=3,
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
        raise InputError(
            "the folder dataset reads local images and cannot download; drop --download "
            "and point --data-root at the image folder"
        )
    return ImageFolder(root, image_size=image_size, **kw)
