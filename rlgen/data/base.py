"""The dataset contract shared by every rlgen reader, and the errors they raise.

Every dataset holds its whole split in memory as one uint8 tensor ``images`` of shape
``(N, C, H, W)`` (MNIST is 47 MB, CIFAR-10 150 MB), so generative models and small
classifiers can train full-batch on it without a DataLoader; ``dataset[i]`` gives the
usual ``(image, label)`` pair with ``image`` a float32 ``(C, H, W)`` tensor in ``[0, 1]``.

Bad files are reported at construction, never later at batch time. A dataset file that is
missing, truncated, corrupt or foreign (another format renamed, an HTML error page saved
under the expected name) raises one of the errors below, all :class:`rlgen.errors.InputError`
(the ``rlgen`` CLI prints them as one line and exits with status 2); each message is one
line that names the file, what was expected and the fix. The one exception is an image
folder, where unreadable images are skipped with one :class:`DataWarning` (see
:mod:`rlgen.data.folder`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rlgen.errors import InputError

ImageSize = int | tuple[int, int]


class DataFormatError(InputError):
    """A data file exists but is not what it should be (wrong magic, truncated, corrupt)."""


class ChecksumError(InputError):
    """A file's hash differs from the published one; the message names both hashes."""


class DatasetNotFoundError(InputError, FileNotFoundError):
    """A dataset file is missing; the message names the path and how to download it."""


class DataWarning(UserWarning):
    """Something in the data was left out or replaced (e.g. unreadable images skipped)."""


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line, to quote a low-level error inside ours."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def normalize_size(
    image_size: ImageSize | None, name: str = "image_size"
) -> tuple[int, int] | None:
    """``28`` -> ``(28, 28)``; ``(h, w)`` kept; ``None`` kept; anything else is an error."""
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"{name} must be an int or an (height, width) pair, got {image_size!r}")
    if min(size) < 1:
        raise ValueError(f"{name} must be positive, got {image_size!r}")
    return size


def resize_uint8(images: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize of a uint8 ``(N, C, H, W)`` stack, in chunks to bound the memory used.

    Antialiasing is on so that shrinking (e.g. 64 -> 32) averages pixels instead of
    dropping them, matching what PIL-based pipelines produce.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], *size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        out[start : start + chunk] = _resize_block(images[start : start + chunk], size)
    return out


def _resize_block(block: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    try:  # torch's native uint8 kernel (CPU) is 2-4x faster than going through float,
        # and fastest on channels-last input
        block = block.contiguous(memory_format=torch.channels_last)
        return F.interpolate(block, size=size, mode="bilinear", antialias=True)
    except (RuntimeError, NotImplementedError):
        resized = F.interpolate(block.float(), size=size, mode="bilinear", antialias=True)
        return resized.round_().clamp_(0, 255).to(torch.uint8)


class StoredImages(Dataset):
    """A dataset holding all its images in memory as one uint8 tensor ``.images`` (N, C, H, W):
    the base of the labelled, captioned, segmentation and detection sets."""

    images: torch.Tensor

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the stored images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])


class ImageDataset(StoredImages):
    """An in-memory labelled image set: ``.images`` uint8 (N, C, H, W), ``.labels`` int64 (N,).

    ``dataset[i]`` returns ``(image, label)``: ``image`` float32 (C, H, W) in [0, 1], passed
    through ``transform`` if given, and ``label`` a Python int.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        *,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        image_size: ImageSize | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        name: str = "dataset",
    ):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {images.dtype} with shape {tuple(images.shape)}"
            )
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{name}: {images.shape[0]} images but {labels.shape[0]} labels; they must match"
            )
        size = normalize_size(image_size)
        if size is not None:
            images = resize_uint8(images, size)
        self.name = name
        self.images = images.contiguous()
        self.labels = labels
        if classes is not None:
            self.classes = list(classes)
        else:
            if num_classes is None:
                num_classes = int(labels.max()) + 1 if len(labels) else 0
            self.classes = [str(i) for i in range(num_classes)]
        self.num_classes = len(self.classes)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def full_batch(
        self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ``(images in [0, 1], labels)`` on ``device`` (no transform)."""
        images = self.images.to(device).to(dtype).div_(255.0)
        return images, self.labels.to(device)

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (
            f"{type(self).__name__}({self.name!r}, {len(self)} images, {c}x{h}x{w}, "
            f"{self.num_classes} classes)"
        )
