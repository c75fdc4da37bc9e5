"""Object detection data: images with labelled boxes, kept in memory.

A :class:`DetectionDataset` holds a split as uint8 ``images`` (N, C, H, W), all of one size,
and per image its objects: ``boxes`` float32 (K, 4) ``(x1, y1, x2, y2)`` in pixels of the
stored image, ``labels`` int64 (K,) in ``0..num_classes - 1`` (no background class), and the
flags ``difficult`` / ``iscrowd`` bool (K,). ``dataset[i]`` is ``(image float32 (C, H, W) in
[0, 1], {"boxes", "labels", "difficult", "iscrowd"})``, the target format of the detectors
(``rlgen.vision.detection``) and of ``mean_average_precision``. For batching on the device,
:meth:`DetectionDataset.padded` gives the objects as padded tensors (N, M, ...) with label -1
in the unused slots, and :func:`unpad_targets` turns a batch of them back into dicts. It is a
sibling of :class:`~rlgen.data.base.ImageDataset` (same ``images``, ``channels``,
``image_size``, ``classes``, ``num_classes``, ``full_batch``); asking it for ``.labels`` is a
one-line error.

Box convention: continuous pixel coordinates with the origin at the top-left corner of the
top-left pixel, so pixel ``(row r, column c)`` spans ``[c, c + 1] x [r, r + 1]`` and a box's
width is ``x2 - x1`` (torchvision's and pycocotools' convention; no ``+ 1``).

Datasets, registered in ``rlgen.registry.DATASETS``:

- ``voc-detection``: Pascal VOC 2007 or 2012 boxes (Everingham et al., IJCV 2010), the 20
  classes of :data:`VOC_DETECTION_CLASSES`, in the devkit's layout under ``root``::

      VOCdevkit/VOC2007/Annotations/<id>.xml           one <object> per box
      VOCdevkit/VOC2007/JPEGImages/<id>.jpg
      VOCdevkit/VOC2007/ImageSets/Main/{train,val,trainval,test}.txt   one <id> a line

  ``year`` 2007 (default when both are there) or 2012; ``train=True`` reads ``trainval``
  (VOC 2007: 5,011 images) and ``False`` ``test`` (4,952) for 2007, ``train`` / ``val`` for
  2012 (its test annotations are not public); ``split=`` picks any list. ``download=True``
  fetches the official archive holding the split when its list is missing (2007:
  ``VOCtrainval_06-Nov-2007.tar``, 439 MB, or ``VOCtest_06-Nov-2007.tar``, 451 MB; 2012:
  ``VOCtrainval_11-May-2012.tar``, 2 GB), MD5-checked, and extracts only the files above; an
  archive already in ``root`` is checked (``verify=False`` skips that) and extracted. VOC's
  ``<bndbox>``
  holds 1-based inclusive pixel indices: a box ``xmin..xmax`` covers the pixels
  ``xmin - 1 .. xmax - 1`` (0-based), so it becomes ``(xmin - 1, ymin - 1, xmax, ymax)`` here
  (as detectron2 converts it); with that, the default IoU of ``mean_average_precision`` equals
  the devkit's ``+ 1`` IoU on the original numbers. ``difficult`` is kept (ignored by the VOC
  evaluation, trained on like any box unless ``keep_difficult=False`` drops them).
- ``coco-detection``: MS COCO boxes (Lin et al., ECCV 2014) from ``instances_*.json``, under
  ``root`` (or ``root/coco``)::

      annotations/instances_train2017.json   {"images": [{"id", "file_name", ...}],
      annotations/instances_val2017.json      "annotations": [{"image_id", "bbox": [x, y, w, h],
      train2017/<file_name>, val2017/<file_name>   "category_id", "iscrowd"}], "categories": [...]}

  ``train=True`` reads train2017, ``False`` val2017 (``split=``, ``year=2014`` for others).
  ``bbox`` ``(x, y, w, h)`` becomes ``(x, y, x + w, y + h)``; category ids (1..90 with gaps)
  are mapped to contiguous labels in increasing id order, ``classes`` holding their names and
  ``category_ids`` the original ids; ``iscrowd`` is kept; boxes of zero width or height are
  dropped (as detectron2 does). Every listed image is kept, with or without objects.
- ``det-shapes``: generated textured circles, squares, triangles and ellipses on textured
  backgrounds, several per image, overlapping (see :func:`make_det_shapes`), for tests and
  demos; nothing to read.

Sizes: every image is resized to ``image_size`` (an int or ``(h, w)``; default 448x448 for
VOC and COCO, YOLO v1's input; 64 for det-shapes), bilinearly without keeping the aspect
ratio, and its boxes are scaled by the same factors. ``original_sizes`` (N, 2) keeps each
image's (h, w) before resizing. Memory: N x 3 x H x W bytes (VOC 2007 trainval at 448: 3 GB;
pass a smaller ``image_size`` or ``limit`` to read less).

Bad files are reported at construction: a missing annotation file, split list or image raises
:class:`~rlgen.data.base.DatasetNotFoundError`; malformed XML or JSON, an unknown class name,
a box outside its image or inverted, or an unreadable image raises
:class:`~rlgen.data.base.DataFormatError`, each one line naming the file and the fix.

:class:`DetectionAugment` is the matching on-device batch transform for
``rlgen.data.batches`` (horizontal flip with the boxes flipped, optional scale jitter).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlgen.data.base import (
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    ImageSize,
    StoredImages,
    describe_error,
    normalize_size,
    resize_uint8,
)
from rlgen.data.download import download_file, mirror_urls, verify_checksum, write_atomic
from rlgen.data.folder import load_image
from rlgen.data.segmentation import NoImageLabelsError
from rlgen.errors import InputError
from rlgen.registry import DATASETS

Target = dict[str, torch.Tensor]
DEFAULT_PHOTO_SIZE = 448  # YOLO v1's input; VOC / COCO photos are resized to it by default


def _empty_target() -> Target:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "difficult": torch.zeros(0, dtype=torch.bool),
            "iscrowd": torch.zeros(0, dtype=torch.bool)}


def make_target(boxes: Any, labels: Any, difficult: Any = None, iscrowd: Any = None) -> Target:
    """One image's target dict from array-likes (flags default to all False)."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
    k = len(labels)
    flag = lambda v: (torch.zeros(k, dtype=torch.bool) if v is None  # noqa: E731
                      else torch.as_tensor(np.asarray(v, dtype=bool).reshape(-1)))
    return {"boxes": boxes, "labels": labels, "difficult": flag(difficult),
            "iscrowd": flag(iscrowd)}


class DetectionDataset(StoredImages):
    """An in-memory detection split: ``.images`` uint8 (N, C, H, W) and ``.targets``, one
    dict per image (``boxes`` float32 (K, 4) xyxy pixels, ``labels`` int64 (K,),
    ``difficult`` / ``iscrowd`` bool (K,)).

    ``image_size`` resizes the images (bilinear, antialiased) and scales the boxes alike.
    ``dataset[i]`` is ``(image float32 (C, H, W) in [0, 1], target)``, passed through
    ``transform(image, target)`` if given.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        targets: Sequence[Target],
        *,
        classes: Sequence[str],
        image_size: ImageSize | None = None,
        transform: Callable[[torch.Tensor, Target], Any] | None = None,
        name: str = "detection dataset",
    ):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{name}: images must be a uint8 tensor (N, C, H, W), got "
                             f"{images.dtype} with shape {tuple(images.shape)}")
        if len(targets) != images.shape[0]:
            raise ValueError(f"{name}: {images.shape[0]} images but {len(targets)} targets; "
                             "they must match")
        self.name = name
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        targets = [self._checked(t, i) for i, t in enumerate(targets)]
        size = normalize_size(image_size)
        if size is not None and tuple(images.shape[-2:]) != size:
            sy, sx = size[0] / images.shape[2], size[1] / images.shape[3]
            scale = torch.tensor([sx, sy, sx, sy])
            targets = [{**t, "boxes": t["boxes"] * scale} for t in targets]
            images = resize_uint8(images, size)
        self.images = images.contiguous()
        self.targets = targets
        self.transform = transform

    def _checked(self, target: Target, i: int) -> Target:
        t = {**_empty_target(), **target}
        boxes, labels = t["boxes"].float().reshape(-1, 4), t["labels"].long().reshape(-1)
        if len(boxes) != len(labels) or len(t["difficult"]) != len(labels) \
                or len(t["iscrowd"]) != len(labels):
            raise ValueError(f"{self.name}: image {i} has {len(boxes)} boxes, {len(labels)} "
                             f"labels, {len(t['difficult'])} difficult and {len(t['iscrowd'])} "
                             "iscrowd flags; they must match")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"{self.name}: image {i} has labels {labels.tolist()}, expected "
                             f"0..{self.num_classes - 1}")
        return {"boxes": boxes, "labels": labels, "difficult": t["difficult"].bool(),
                "iscrowd": t["iscrowd"].bool()}

    @property
    def labels(self) -> torch.Tensor:
        raise NoImageLabelsError(f"{self.name} is a detection dataset: it has boxes per image "
                                 "(.targets), not one label per image")

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image = self.images[index].to(torch.float32).div_(255.0)
        target = {k: v.clone() for k, v in self.targets[index].items()}
        if self.transform is not None:
            return self.transform(image, target)
        return image, target

    def full_batch(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, list[Target]]:
        """The whole split as ``(images in [0, 1], targets)`` on ``device``."""
        images = self.images.to(device).to(dtype).div_(255.0)
        return images, [{k: v.to(device) for k, v in t.items()} for t in self.targets]

    def padded(self) -> dict[str, torch.Tensor]:
        """The targets as padded tensors: ``boxes`` float32 (N, M, 4), ``labels`` int64
        (N, M) with -1 in unused slots, ``difficult`` / ``iscrowd`` bool (N, M); M is the
        largest object count (at least 1)."""
        return pad_targets(self.targets)

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        objects = sum(len(t["labels"]) for t in self.targets)
        return (f"{type(self).__name__}({self.name!r}, {len(self)} images, {c}x{h}x{w}, "
                f"{objects} objects, {self.num_classes} classes)")


def pad_targets(targets: Sequence[Target]) -> dict[str, torch.Tensor]:
    """Per-image target dicts -> padded tensors (see :meth:`DetectionDataset.padded`)."""
    n, m = len(targets), max([len(t["labels"]) for t in targets] + [1])
    out = {"boxes": torch.zeros(n, m, 4), "labels": torch.full((n, m), -1, dtype=torch.int64),
           "difficult": torch.zeros(n, m, dtype=torch.bool),
           "iscrowd": torch.zeros(n, m, dtype=torch.bool)}
    for i, t in enumerate(targets):
        k = len(t["labels"])
        for key in out:
            if key in t:
                out[key][i, :k] = t[key]
    return out


def unpad_targets(padded: dict[str, torch.Tensor]) -> list[Target]:
    """Padded tensors (a batch of :meth:`DetectionDataset.padded`) -> one dict per image."""
    keep = padded["labels"] >= 0
    return [{key: value[i][keep[i]] for key, value in padded.items()}
            for i in range(keep.shape[0])]


# -- on-device augmentation ---------------------------------------------------------------------


class DetectionAugment:
    """A batch transform for ``rlgen.data.batches``: ``(images, padded targets, generator)``
    -> the same, with one random geometry per image applied to the image and its boxes.

    ``flip``: a horizontal flip with probability 1/2 (``x1, x2 -> W - x2, W - x1``).
    ``scale``: ``(low, high)``, a zoom by a factor uniform in that range about a random
    centre, the output keeping the batch's size (YOLO v1's "random scaling and translations
    of up to 20%" is ``scale=(1.0, 1.2)``): a factor above 1 crops, below 1 shrinks and pads
    with 0. Boxes are mapped alike and clipped to the image; a box left with less than a
    pixel of width or height, or under a quarter of its area, is dropped (label -1).
    """

    def __init__(self, flip: bool = True, scale: tuple[float, float] | None = None):
        if scale is not None:
            lo, hi = (float(s) for s in scale)
            if not 0 < lo <= hi:
                raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
            scale = None if lo == hi == 1.0 else (lo, hi)
        self.flip, self.scale = bool(flip), scale

    def __repr__(self) -> str:
        return f"DetectionAugment(flip={self.flip}, scale={self.scale})"

    def __call__(self, x: torch.Tensor, y: dict[str, torch.Tensor], generator: torch.Generator
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(y, dict) or "boxes" not in y or "labels" not in y:
            raise ValueError("DetectionAugment needs padded targets (a dict with 'boxes' and "
                             "'labels'), see DetectionDataset.padded")
        n, _, h, w = x.shape
        device = x.device
        boxes, labels = y["boxes"].clone(), y["labels"].clone()
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        if self.scale is not None:
            lo, hi = self.scale
            factor = lo + (hi - lo) * torch.rand(n, generator=generator, device=device)
            # The output window in input pixels: size (h, w) / factor, placed at random
            # (inside the image when zooming in; the image inside it when zooming out).
            win_h, win_w = h / factor, w / factor
            top = (h - win_h) * torch.rand(n, generator=generator, device=device)
            left = (w - win_w) * torch.rand(n, generator=generator, device=device)
            theta = torch.zeros(n, 2, 3, device=device)
            theta[:, 0, 0], theta[:, 1, 1] = win_w / w, win_h / h
            theta[:, 0, 2] = (2 * left + win_w) / w - 1
            theta[:, 1, 2] = (2 * top + win_h) / h - 1
            grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
            x = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False).to(x.dtype)
            area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
            f = factor[:, None]
            boxes[..., 0::2] = (boxes[..., 0::2] - left[:, None, None]) * f[..., None]
            boxes[..., 1::2] = (boxes[..., 1::2] - top[:, None, None]) * f[..., None]
            boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
            boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
            bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
            kept = (bw >= 1) & (bh >= 1) & (bw * bh >= 0.25 * area * f * f)
            labels = torch.where(kept, labels, torch.full_like(labels, -1))
        if flip.any():
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            flipped = torch.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0],
                                   boxes[..., 3]], dim=-1)
            boxes = torch.where(flip[:, None, None], flipped, boxes)
        return x.contiguous(), {**y, "boxes": boxes, "labels": labels}


# -- Pascal VOC ---------------------------------------------------------------------------------

VOC_DETECTION_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_YEARS = (2007, 2012)
# The official archives (MD5 as published with them): 2007 trainval (train / val / trainval
# lists, 439 MB) and test (451 MB); 2012 trainval (2 GB; its test boxes are not public).
VOC_ARCHIVES = {
    (2007, "trainval"): ("VOCtrainval_06-Nov-2007.tar", "md5:c52e279531787c972589f7e41ab4ae64"),
    (2007, "test"): ("VOCtest_06-Nov-2007.tar", "md5:b6e924de25625d8de591ea690078ad9f"),
    (2012, "trainval"): ("VOCtrainval_11-May-2012.tar", "md5:6cd6e144f989b92b3379bac3b3de84fd"),
}
VOC_MAIN_SPLITS = ("train", "val", "trainval", "test")


def _voc_archive(year: int, split: str) -> tuple[str, str]:
    key = (year, "test" if split == "test" else "trainval")
    if key not in VOC_ARCHIVES:
        raise InputError(f"VOC {year} has no official archive with the {split!r} boxes "
                         f"(available: {', '.join(f'{y} {s}' for y, s in VOC_ARCHIVES)})")
    return VOC_ARCHIVES[key]


def extract_voc_detection(archive: str | Path, root: str | Path, year: int) -> Path:
    """Extract the detection part of an official VOC archive into ``root/VOCdevkit/VOC<year>``:
    ``Annotations/*.xml``, ``JPEGImages/*.jpg`` and the ``ImageSets/Main/{train,val,trainval,
    test}.txt`` lists, nothing else. Files are written under their known folder and base name
    only (a crafted member name cannot write elsewhere), each atomically, and the split lists
    last, so an interrupted extraction leaves no list and the next run extracts again."""
    archive, dest = Path(archive), Path(root) / "VOCdevkit" / f"VOC{year}"
    pattern = re.compile(rf"(?:^|/)VOC{year}/(Annotations|JPEGImages|ImageSets/Main)/([^/]+)$")
    fix = ("delete it and re-run with --download (download=True), or copy the official "
           "archive there")
    lists: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                match = pattern.search(member.name)
                if not (member.isfile() and match) or match[2].startswith("."):
                    continue
                folder, name = match[1], match[2]
                if folder == "ImageSets/Main":
                    if name[:-4] in VOC_MAIN_SPLITS and name.endswith(".txt"):
                        lists[name] = tar.extractfile(member).read()
                    continue
                write_atomic(dest / folder / name, tar.extractfile(member))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataFormatError(f"{archive}: cannot extract ({describe_error(exc)}); the archive "
                              f"is truncated, corrupt or not a tar file: {fix}") from exc
    if not lists:
        raise DataFormatError(f"{archive}: no VOC{year}/ImageSets/Main split list inside (not "
                              f"an official VOC {year} archive); {fix}")
    for name, data in lists.items():  # last: their presence means "complete"
        write_atomic(dest / "ImageSets" / "Main" / name, io.BytesIO(data))
    return dest



def _text(node: ET.Element, path: str, where: str, fix: str) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise DataFormatError(f"{where}: no <{path}> in an <{node.tag}>; {fix}")
    return found.text.strip()


def _number(node: ET.Element, path: str, where: str, fix: str) -> float:
    text = _text(node, path, where, fix)
    try:
        return float(text)
    except ValueError:
        raise DataFormatError(f"{where}: <{path}> is {text!r}, not a number; {fix}") from None


def read_voc_annotation(path: str | Path, classes: Sequence[str] = VOC_DETECTION_CLASSES,
                        fix: str = "") -> dict[str, Any]:
    """One VOC ``Annotations/<id>.xml`` -> ``{"filename", "size": (h, w), "boxes" (K, 4)
    float32 0-based continuous xyxy, "labels" (K,), "difficult" (K,) bool}`` (see the module
    docstring for the ``xmin - 1`` conversion)."""
    path = Path(path)
    fix = fix or "replace it with the dataset's original annotation file"
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing; {fix}")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataFormatError(f"{path}: cannot parse this XML file ({describe_error(exc)}); "
                              f"{fix}") from exc
    if root.tag != "annotation":
        raise DataFormatError(f"{path}: the root element is <{root.tag}>, expected "
                              f"<annotation>; {fix}")
    size = root.find("size")
    if size is None:
        raise DataFormatError(f"{path}: no <size> element; {fix}")
    h, w = int(_number(size, "height", str(path), fix)), int(_number(size, "width", str(path),
                                                                      fix))
    index = {name: i for i, name in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name", str(path), fix)
        if name not in index:
            raise DataFormatError(f"{path}: unknown class {name!r} (expected one of "
                                  f"{', '.join(classes)}); {fix}")
        box = obj.find("bndbox")
        if box is None:
            raise DataFormatError(f"{path}: an <object> ({name}) has no <bndbox>; {fix}")
        x1, y1, x2, y2 = (_number(box, k, str(path), fix)
                          for k in ("xmin", "ymin", "xmax", "ymax"))
        if not (1 <= x1 <= x2 <= w and 1 <= y1 <= y2 <= h):
            raise DataFormatError(
                f"{path}: the {name} box (xmin {x1:g}, ymin {y1:g}, xmax {x2:g}, ymax {y2:g}) "
                f"is inverted or outside the {w}x{h} image (VOC boxes are 1-based pixel "
                f"indices, 1 <= xmin <= xmax <= width); {fix}")
        flag = obj.find("difficult")
        boxes.append((x1 - 1, y1 - 1, x2, y2))
        labels.append(index[name])
        difficult.append(flag is not None and (flag.text or "0").strip() == "1")
    filename = root.findtext("filename", default=f"{path.stem}.jpg").strip()
    return {"filename": filename, "size": (h, w),
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64), "difficult": np.asarray(difficult,
                                                                                  dtype=bool)}


def _load_images(files: Sequence[Path], size: tuple[int, int], fix: str,
                 num_workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize ``files`` -> (uint8 (N, 3, H, W), original (h, w) int64 (N, 2))."""
    images = np.zeros((len(files), 3, *size), dtype=np.uint8)
    originals = np.zeros((len(files), 2), dtype=np.int64)

    def load(i: int) -> None:
        from PIL import Image

        try:
            with Image.open(files[i]) as img:
                originals[i] = (img.size[1], img.size[0])
            images[i] = load_image(files[i], "RGB", size)
        except DataFormatError as exc:
            raise DataFormatError(str(exc).replace("remove or replace the file", fix)) from exc
        except Exception as exc:  # whatever Pillow raises on open, as in load_image
            raise DataFormatError(f"{files[i]}: cannot read this image "
                                  f"({describe_error(exc)}); {fix}") from exc

    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(load, range(len(files))):
            pass
    return images, originals


def _scaled(boxes: np.ndarray, original: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    sy, sx = size[0] / original[0], size[1] / original[1]
    return (boxes * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)


class VOCDetection(DetectionDataset):
    """Pascal VOC 2007 / 2012 boxes, 20 classes, ``difficult`` kept (see the module
    docstring for the layout, the splits and the coordinate conversion)."""

    def __init__(
        self,
        root: str | Path = "data",
        train: bool = True,
        download: bool = False,
        image_size: ImageSize | None = None,
        transform: Callable | None = None,
        *,
        year: int | None = None,
        split: str | None = None,
        keep_difficult: bool = True,
        limit: int | None = None,
        verify: bool = True,
        mirrors: Sequence[str] | None = None,
        num_workers: int | None = None,
    ):
        self.root = Path(root).expanduser()
        if year is not None and int(year) not in VOC_YEARS:
            raise InputError(f"VOC detection year must be 2007 or 2012, got {year!r}")
        found = self._locate(year)
        year = found[1] if found else int(year or 2007)
        split = split or (("trainval" if train else "test") if year == 2007
                          else ("train" if train else "val"))
        if found is None or not (found[0] / "ImageSets" / "Main" / f"{split}.txt").is_file():
            archive = self._archive(year, split, download, verify, mirrors)
            if archive is not None:
                extract_voc_detection(archive, self.root, year)
                found = self._locate(year)
        if found is None:
            raise DatasetNotFoundError(
                f"Pascal VOC {year} not found: no {self.root / 'VOCdevkit' / f'VOC{year}'} and "
                f"no archive in {self.root}; re-run with --download (download=True) to fetch "
                f"{_voc_archive(year, split)[0]}, or extract the official VOC archives there")
        folder = found[0]
        self.year, self.split = year, split
        fix = (f"the VOC folder {folder} is incomplete or damaged: re-run with --download "
               f"(download=True) or extract the official VOC {year} archives there again")
        listed = folder / "ImageSets" / "Main" / f"{split}.txt"
        if not listed.is_file():
            raise DatasetNotFoundError(f"{listed} is missing (no {split!r} split list); {fix}")
        try:
            ids = [line.split()[0] for line in listed.read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{listed}: cannot read this list ({describe_error(exc)}); "
                                  f"{fix}") from exc
        if not ids:
            raise DataFormatError(f"{listed}: the split list names no image; {fix}")
        if limit is not None:
            ids = ids[:limit]
        size = normalize_size(image_size) or (DEFAULT_PHOTO_SIZE, DEFAULT_PHOTO_SIZE)
        notes = [read_voc_annotation(folder / "Annotations" / f"{i}.xml", fix=fix) for i in ids]
        files = []
        for image_id, note in zip(ids, notes):
            path = folder / "JPEGImages" / note["filename"]
            if not path.is_file():
                path = folder / "JPEGImages" / f"{image_id}.jpg"
            if not path.is_file():
                raise DatasetNotFoundError(f"{path} is missing (listed in ImageSets/Main/"
                                           f"{split}.txt); {fix}")
            files.append(path)
        images, originals = _load_images(files, size, fix, num_workers)
        targets = []
        for note, original, path in zip(notes, originals, files):
            if tuple(original) != note["size"]:
                raise DataFormatError(f"{path} is {original[1]}x{original[0]} (WxH) but its "
                                      f"annotation says {note['size'][1]}x{note['size'][0]}; "
                                      f"{fix}")
            keep = np.ones(len(note["labels"]), bool) if keep_difficult else ~note["difficult"]
            targets.append(make_target(_scaled(note["boxes"][keep], original, size),
                                       note["labels"][keep], note["difficult"][keep]))
        self.ids, self.original_sizes = ids, torch.from_numpy(originals)
        super().__init__(torch.from_numpy(images), targets, classes=VOC_DETECTION_CLASSES,
                         transform=transform, name=f"VOC {year} {split}")

    mirrors: Sequence[str] = ("http://host.robots.ox.ac.uk/pascal/VOC/voc{year}/",
                              "https://pjreddie.com/media/files/")

    def _locate(self, year: int | None) -> tuple[Path, int] | None:
        for y in (int(year),) if year is not None else VOC_YEARS:
            for folder in (self.root / "VOCdevkit" / f"VOC{y}", self.root / f"VOC{y}"):
                if (folder / "Annotations").is_dir():
                    return folder, y
        if (self.root / "Annotations").is_dir():
            return self.root, int(year or 2007)
        return None

    def _archive(self, year: int, split: str, download: bool, verify: bool,
                 mirrors: Sequence[str] | None) -> Path | None:
        """The official archive holding ``split``, in ``root`` (checked) or downloaded."""
        name, checksum = _voc_archive(year, split)
        archive = self.root / name
        if archive.is_file():
            if verify:
                try:
                    verify_checksum(archive, checksum)
                except ChecksumError:
                    if not download:
                        raise
                    print(f"{archive} fails its checksum; downloading it again", file=sys.stderr)
                    archive.unlink()
            if archive.is_file():
                return archive
        if not download:
            return None
        urls = mirror_urls([m.format(year=year) for m in (mirrors or self.mirrors)], name)
        return download_file(urls, archive, checksum)


@DATASETS.register("voc-detection")
def voc_detection(root: str | Path = "data", train: bool = True, download: bool = False,
                  image_size: ImageSize | None = None, **kw: Any) -> VOCDetection:
    """Pascal VOC 2007/2012 boxes (2007: 5011 trainval / 4952 test), 20 classes, difficult."""
    return VOCDetection(root, train=train, download=download, image_size=image_size, **kw)


# -- MS COCO ------------------------------------------------------------------------------------


def _read_json(path: Path, fix: str) -> Any:
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing; {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(f"{path}: cannot read this JSON file ({describe_error(exc)}); "
                              f"{fix}") from exc


def read_coco_boxes(path: str | Path, fix: str = "") -> dict[str, Any]:
    """A COCO ``instances_*.json`` -> ``{"classes", "category_ids", "images": [(file_name,
    image_id, (h, w) or None, target arrays)]}`` in file order, boxes xyxy in the file's
    pixels, labels contiguous in increasing category id."""
    path = Path(path)
    fix = fix or "replace it with the official instances_*.json from cocodataset.org"
    data = _read_json(path, fix)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DataFormatError(f"{path}: not a COCO instances file (expected an object with "
                              f"'images', 'annotations' and 'categories' lists); {fix}")
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFormatError(f"{path}: a 'categories' entry lacks an integer 'id' or a "
                              f"'name' ({describe_error(exc)}); {fix}") from exc
    label_of = {cid: i for i, (cid, _) in enumerate(categories)}
    images: dict[Any, dict[str, Any]] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise DataFormatError(f"{path}: an 'images' entry lacks 'id' or 'file_name' "
                                  f"({str(entry)[:80]}); {fix}")
        size = (entry.get("height"), entry.get("width"))
        images[entry["id"]] = {"file_name": str(entry["file_name"]),
                               "size": size if None not in size else None,
                               "boxes": [], "labels": [], "iscrowd": []}
    for entry in data["annotations"]:
        try:
            image = images[entry["image_id"]]
            x, y, w, h = (float(v) for v in entry["bbox"])
            label = label_of[int(entry["category_id"])]
        except KeyError as exc:
            raise DataFormatError(f"{path}: an annotation names an unknown image or category, "
                                  f"or lacks 'image_id' / 'bbox' / 'category_id' "
                                  f"({describe_error(exc)}: {str(entry)[:80]}); {fix}") from exc
        except (TypeError, ValueError) as exc:
            raise DataFormatError(f"{path}: an annotation's 'bbox' is not four numbers "
                                  f"({str(entry)[:80]}); {fix}") from exc
        if w <= 0 or h <= 0:  # degenerate boxes are dropped (detectron2 does the same)
            continue
        image["boxes"].append((x, y, x + w, y + h))
        image["labels"].append(label)
        image["iscrowd"].append(bool(entry.get("iscrowd", 0)))
    return {"classes": [n for _, n in categories], "category_ids": [c for c, _ in categories],
            "images": [(v["file_name"], k, v["size"],
                        make_target(v["boxes"], v["labels"], None, v["iscrowd"]))
                       for k, v in images.items()]}


class COCODetection(DetectionDataset):
    """MS COCO boxes from ``instances_<split><year>.json`` (see the module docstring)."""

    def __init__(
        self,
        root: str | Path = "data",
        train: bool = True,
        download: bool = False,
        image_size: ImageSize | None = None,
        transform: Callable | None = None,
        *,
        split: str | None = None,
        year: int = 2017,
        limit: int | None = None,
        num_workers: int | None = None,
    ):
        self.root = Path(root).expanduser()
        if download:
            raise InputError(
                "MS COCO is not downloaded automatically (19 GB for train2017 + val2017); get "
                "the images and annotations_trainval2017.zip from https://cocodataset.org and "
                f"unpack them into {self.root}, then drop --download")
        split = split or ("train" if train else "val")
        name = f"{split}{year}"
        folder = next((d for d in (self.root, self.root / "coco")
                       if (d / "annotations" / f"instances_{name}.json").is_file()), self.root)
        fix = (f"the COCO folder {folder} is incomplete or damaged: unpack the official "
               f"{name} images and annotations there again")
        parsed = read_coco_boxes(folder / "annotations" / f"instances_{name}.json", fix)
        entries = parsed["images"][:limit] if limit is not None else parsed["images"]
        if not entries:
            raise DataFormatError(f"{folder / 'annotations' / f'instances_{name}.json'} lists "
                                  f"no image; {fix}")
        files = []
        for file_name, _, _, _ in entries:
            path = folder / name / file_name
            if not path.is_file():
                raise DatasetNotFoundError(f"{path} is missing (listed in instances_{name}."
                                           f"json); {fix}")
            files.append(path)
        size = normalize_size(image_size) or (DEFAULT_PHOTO_SIZE, DEFAULT_PHOTO_SIZE)
        images, originals = _load_images(files, size, fix, num_workers)
        targets = []
        for (_, _, noted, target), original, path in zip(entries, originals, files):
            if noted is not None and tuple(noted) != tuple(original):
                raise DataFormatError(f"{path} is {original[1]}x{original[0]} (WxH) but the "
                                      f"annotations say {noted[1]}x{noted[0]}; {fix}")
            targets.append({**target, "boxes": torch.from_numpy(
                _scaled(target["boxes"].numpy(), original, size))})
        self.image_ids = [e[1] for e in entries]
        self.category_ids = parsed["category_ids"]
        self.original_sizes = torch.from_numpy(originals)
        self.split = name
        super().__init__(torch.from_numpy(images), targets, classes=parsed["classes"],
                         transform=transform, name=f"COCO {name}")


@DATASETS.register("coco-detection")
def coco_detection(root: str | Path = "data", train: bool = True, download: bool = False,
                   image_size: ImageSize | None = None, **kw: Any) -> COCODetection:
    """MS COCO boxes (instances_*.json, 118k train2017 / 5k val2017), 80 classes, iscrowd."""
    return COCODetection(root, train=train, download=download, image_size=image_size, **kw)


# -- generated shapes ---------------------------------------------------------------------------

DET_SHAPE_CLASSES = ("circle", "square", "triangle", "ellipse")
DIFFICULT_VISIBLE = 0.5  # an object with less than this share visible is marked difficult


def make_det_shapes(num_images: int, image_size: ImageSize = 64, seed: int = 0,
                    max_objects: int = 4) -> tuple[np.ndarray, list[Target]]:
    """Textured shapes on textured backgrounds with their boxes: (images uint8 (N, 3, H, W),
    targets) with classes :data:`DET_SHAPE_CLASSES`.

    The images are ``seg-shapes``' (:func:`rlgen.data.segmentation.make_seg_shapes`: 1 to
    ``max_objects`` shapes of radius 12%..30% of the shorter side, any colour and texture on
    any background, drawn in turn so later ones hide earlier ones). Each object's box is the
    tight box of its *visible* pixels (as VOC annotators box what they see); an object with
    under half of its pixels visible is marked ``difficult``, one fully hidden gets no box.
    """
    from rlgen.data.segmentation import _shape_region, make_seg_shapes

    images, _, objects = make_seg_shapes(num_images, image_size, seed, max_objects,
                                         return_objects=True)
    h, w = images.shape[2:]
    ys = (np.arange(h, dtype=np.float32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=np.float32) + 0.5)[None, None, :]
    targets = []
    for start in range(0, num_images, 256):
        part = slice(start, start + 256)
        regions = [_shape_region({k: v[part, j] for k, v in objects.items()}, ys, xs)
                   for j in range(max_objects)]
        hidden = np.zeros_like(regions[0])
        visible = [None] * max_objects
        for j in reversed(range(max_objects)):  # the last drawn is on top
            visible[j] = regions[j] & ~hidden
            hidden |= regions[j]
        for i in range(len(range(num_images)[part])):
            boxes, labels, difficult = [], [], []
            for j in range(max_objects):
                kind = int(objects["kind"][start + i, j])
                seen = visible[j][i]
                if kind == 0 or not seen.any():
                    continue
                rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
                boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
                labels.append(kind - 1)
                difficult.append(seen.sum() < DIFFICULT_VISIBLE * regions[j][i].sum())
            targets.append(make_target(boxes, labels, difficult))
    return images, targets


class DetShapes(DetectionDataset):
    """Generated textured shapes with boxes (:func:`make_det_shapes`); the test split draws
    from another seed than the training split."""

    def __init__(self, num_images: int = 2000, image_size: ImageSize = 64, train: bool = True,
                 seed: int = 0, max_objects: int = 4, transform: Callable | None = None):
        images, targets = make_det_shapes(num_images, image_size, seed * 2 + (not train),
                                          max_objects)
        super().__init__(torch.from_numpy(images), targets, classes=DET_SHAPE_CLASSES,
                         transform=transform, name=f"det-shapes {'train' if train else 'test'}")


@DATASETS.register("det-shapes")
def det_shapes(root: str | Path = "data", train: bool = True, download: bool = False,
               image_size: ImageSize | None = None, *, num_images: int | None = None,
               seed: int = 0, max_objects: int = 4, **kw: Any) -> DetShapes:
    """Generated textured shapes + boxes (default 2000 train / 500 test, 64x64 RGB, 4 classes)."""
    # Nothing to read or download: `root` and `download` exist for the common signature.
    if num_images is None:
        num_images = 2000 if train else 500
    return DetShapes(num_images, image_size if image_size is not None else 64, train=train,
                     seed=seed, max_objects=max_objects, **kw)
