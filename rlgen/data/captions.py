"""Image captioning data: images with several reference captions each, kept in memory.

A :class:`CaptionDataset` holds a split as uint8 ``images`` (N, C, H, W) and ``captions``, a
list of N lists of caption strings (several per image, as written by the annotators: no
tokenizing or lower-casing here; the caption model's vocabulary does that).
``dataset[i]`` is ``(image float32 (C, H, W) in [0, 1], list of captions)``;
:func:`collate_captions` batches such items for a ``DataLoader``, and
:meth:`CaptionDataset.caption_pairs` lists every (image, caption) pair, what NIC trains on.
It is a sibling of :class:`~rlgen.data.base.ImageDataset` like the segmentation datasets:
same ``images``, ``channels``, ``image_size``, ``full_batch``; asking it for ``.labels``
is a one-line error.

Datasets, registered in ``rlgen.registry.DATASETS``:

- ``coco-captions``: MS COCO captions (Chen et al., "Microsoft COCO Captions: Data Collection
  and Evaluation Server", 2015), 5 (to 7) captions per image. Layout under ``root`` (or
  ``root/coco``)::

      annotations/captions_train2014.json   {"images": [{"id", "file_name", ...}],
      annotations/captions_val2014.json      "annotations": [{"image_id", "caption", ...}]}
      train2014/COCO_train2014_<id>.jpg     (val2014/ alike; year=2017: train2017/ ...)

  ``train=True`` reads train2014 (82,783 images), ``False`` val2014 (40,504);
  ``split="val"`` / ``"train"`` and ``year=2017`` pick others. With ``karpathy=`` (the path
  of Karpathy's ``dataset_coco.json``, or True for ``dataset_coco.json`` in that folder) the
  images and captions come from that file instead, split by its ``split`` field:
  ``train=True`` reads ``"train+restval"`` (113,287 images, the usual training set),
  ``False`` ``"test"`` (5,000); ``split=`` takes ``train``, ``val``, ``test``, ``restval``
  or ``+``-joined combinations. Its images are ``<folder>/<filepath>/<filename>``
  (``dataset_flickr8k.json`` / ``dataset_flickr30k.json``, without ``filepath``, work
  too, with ``image_dir=`` naming the image folder). The captions are the ``raw``
  sentences (the ``tokens`` joined by spaces where ``raw`` is absent).
- ``flickr8k``: Flickr8k (Hodosh, Young, Hockenmaier, "Framing Image Description as a Ranking
  Task", JAIR 2013), 5 captions per image, 6,000 / 1,000 / 1,000 images, in the layout of its
  official archives, under ``root`` (or ``root/Flickr8k``)::

      Flickr8k_text/Flickr8k.token.txt            <image>.jpg#<0-4><TAB><caption>
      Flickr8k_text/Flickr_8k.{train,dev,test}Images.txt   one image name a line
      Flicker8k_Dataset/<image>.jpg               (sic; Flickr8k_Dataset/ or Images/ also)

  ``train=True`` reads the train list, ``False`` the test list; ``split="dev"`` (or
  ``"val"``) the development list.
- ``caption-shapes``: generated scenes of two coloured shapes with five phrasings of their
  spatial relation ("a red circle left of a blue square", ...; see
  :func:`make_caption_shapes`), for tests and demos; nothing to read.

Sizes: photos differ in size, so every image is resized to ``image_size`` (an int or
``(h, w)``; default 224x224 for COCO and Flickr8k), bilinearly, without keeping the aspect
ratio (as NIC-style pipelines warp to a square). Memory: N x 3 x 224 x 224 bytes, 150 kB an
image (COCO train: 12 GB; use ``image_size`` or ``limit`` to read less).

Bad files are reported at construction: a missing annotation file, split list or image raises
:class:`~rlgen.data.base.DatasetNotFoundError`, a malformed annotation file or an unreadable
image :class:`~rlgen.data.base.DataFormatError`, each one line naming the file and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlgen.data.base import (
    DataFormatError,
    DatasetNotFoundError,
    ImageSize,
    StoredImages,
    describe_error,
    normalize_size,
    resize_uint8,
)
from rlgen.data.folder import load_image
from rlgen.data.segmentation import NoImageLabelsError
from rlgen.errors import InputError
from rlgen.registry import DATASETS

DEFAULT_PHOTO_SIZE = 224
Transform = Callable[[torch.Tensor], Any]


class CaptionDataset(StoredImages):
    """An in-memory captioning split: ``.images`` uint8 (N, C, H, W), ``.captions`` (N lists
    of strings, at least one each), ``.ids`` (N names: file names, or generated ids).

    ``dataset[i]`` is ``(image float32 (C, H, W) in [0, 1], captions)``, the image passed
    through ``transform`` if given. ``image_size`` resizes (bilinear, antialiased).
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        captions: Sequence[Sequence[str]],
        *,
        ids: Sequence[str] | None = None,
        image_size: ImageSize | None = None,
        transform: Transform | None = None,
        name: str = "caption dataset",
    ):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {images.dtype} with shape {tuple(images.shape)}"
            )
        captions = [[c for c in caps] for caps in captions]
        if len(captions) != images.shape[0]:
            raise ValueError(f"{name}: {images.shape[0]} images but {len(captions)} caption "
                             "lists; give one list of captions per image")
        for i, caps in enumerate(captions):
            if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
                raise ValueError(f"{name}: image {i} needs a list of non-empty caption strings, "
                                 f"got {caps!r}")
        ids = [str(i) for i in range(len(captions))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(captions):
            raise ValueError(f"{name}: {len(captions)} images but {len(ids)} ids")
        size = normalize_size(image_size)
        if size is not None:
            images = resize_uint8(images, size)
        self.name = name
        self.images = images.contiguous()
        self.captions = captions
        self.ids = ids
        self.transform = transform

    @property
    def labels(self) -> torch.Tensor:
        raise NoImageLabelsError(
            f"{self.name} is a captioning dataset: its targets are captions (.captions, "
            "several per image), not one label per image; train a caption model on it, or "
            "pick a classification dataset"
        )

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions)

    def __getitem__(self, index: int) -> tuple[Any, list[str]]:
        image = self.images[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, list(self.captions[index])

    def caption_pairs(self) -> tuple[torch.Tensor, list[str]]:
        """Every (image, caption) pair: ``(image_index int64 (M,), captions (M,))``, in image
        order, each image's captions in their order (M = ``num_captions``)."""
        index = [i for i, caps in enumerate(self.captions) for _ in caps]
        return torch.tensor(index, dtype=torch.int64), [c for caps in self.captions for c in caps]

    def full_batch(
        self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, list[list[str]]]:
        """The whole split as ``(images in [0, 1], captions)`` (no transform)."""
        return self.images.to(device).to(dtype).div_(255.0), self.captions

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"{type(self).__name__}({self.name!r}, {len(self)} images, {c}x{h}x{w}, "
                f"{self.num_captions} captions)")


def collate_captions(batch: Sequence[tuple[Any, list[str]]]) -> tuple[torch.Tensor, list]:
    """``DataLoader(collate_fn=...)`` for caption datasets: ``(stacked images, list of the
    images' caption lists)`` (the default collate cannot batch lists of unequal length)."""
    images, captions = zip(*batch)
    return torch.stack(list(images)), list(captions)


# -- reading annotation files and images -------------------------------------------------------


def _read_json(path: Path, fix: str) -> Any:
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing; {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(f"{path}: cannot read this JSON file ({describe_error(exc)}); "
                              f"{fix}") from exc


def read_coco_captions(path: str | Path, fix: str = "") -> list[tuple[str, int, list[str]]]:
    """A COCO captions annotation file -> ``(file_name, image_id, captions)`` per image that
    has captions, by image id; captions in annotation order, stripped of spaces."""
    path = Path(path)
    fix = fix or "replace it with the official captions_*.json from cocodataset.org"
    data = _read_json(path, fix)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataFormatError(f"{path}: not a COCO captions file (expected an object with "
                              f"'images' and 'annotations' lists); {fix}")
    names: dict[int, str] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise DataFormatError(f"{path}: an 'images' entry lacks 'id' or 'file_name' "
                                  f"({str(entry)[:80]}); {fix}")
        names[entry["id"]] = str(entry["file_name"])
    captions: dict[int, list[str]] = {}
    for entry in data["annotations"]:
        if not isinstance(entry, dict) or "image_id" not in entry \
                or not isinstance(entry.get("caption"), str):
            raise DataFormatError(f"{path}: an 'annotations' entry lacks 'image_id' or a "
                                  f"'caption' string ({str(entry)[:80]}); {fix}")
        if entry["image_id"] not in names:
            raise DataFormatError(f"{path}: a caption names image_id {entry['image_id']}, which "
                                  f"is not in 'images'; {fix}")
        text = " ".join(entry["caption"].split())
        if text:
            captions.setdefault(entry["image_id"], []).append(text)
    return [(names[i], i, captions[i]) for i in sorted(captions, key=_sort_key)]


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, int) else (1, 0, str(value))


KARPATHY_SPLITS = ("train", "val", "test", "restval")


def read_karpathy_split(path: str | Path, split: str = "train+restval", fix: str = ""
                        ) -> list[tuple[str, str, list[str]]]:
    """Karpathy's ``dataset_coco.json`` (or ``_flickr8k`` / ``_flickr30k``) -> ``(relative
    image path, id, captions)`` for the images whose ``split`` is in ``split`` (``+``-joined
    names of ``train``, ``val``, ``test``, ``restval``), in file order."""
    path = Path(path)
    fix = fix or "replace it with Karpathy's file (from his neuraltalk2 / char-rnn caption data)"
    wanted = set(split.split("+"))
    if not wanted <= set(KARPATHY_SPLITS):
        raise InputError(f"Karpathy split must be {', '.join(KARPATHY_SPLITS)} or a '+'-joined "
                         f"combination, got {split!r}")
    data = _read_json(path, fix)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataFormatError(f"{path}: not a Karpathy split file (expected an object with an "
                              f"'images' list); {fix}")
    out = []
    for entry in data["images"]:
        try:
            if entry["split"] not in wanted:
                continue
            relative = str(Path(entry.get("filepath", ""), entry["filename"]))
            captions = []
            for sentence in entry["sentences"]:
                raw = sentence.get("raw")
                text = raw if isinstance(raw, str) else " ".join(sentence["tokens"])
                text = " ".join(text.split())
                if text:
                    captions.append(text)
            ident = str(entry.get("cocoid", entry.get("imgid", relative)))
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataFormatError(
                f"{path}: an image entry lacks 'split', 'filename' or 'sentences' "
                f"({describe_error(exc)}: {str(entry)[:80]}); {fix}"
            ) from exc
        if captions:
            out.append((relative, ident, captions))
    if not out:
        raise DataFormatError(f"{path}: no image has split {split!r}; {fix}")
    return out


def read_flickr8k_tokens(path: str | Path, fix: str = "") -> dict[str, list[str]]:
    """``Flickr8k.token.txt`` -> ``{image name: captions}`` (captions by their ``#n``)."""
    path = Path(path)
    fix = fix or "replace it with the file from the official Flickr8k_text archive"
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing; {fix}")
    numbered: dict[str, list[tuple[int, str]]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read ({describe_error(exc)}); {fix}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_, index = key.strip().rpartition("#")
        if not tab or not hash_ or not name or not index.isdigit():
            raise DataFormatError(f"{path}:{number}: expected '<image>.jpg#<n><TAB><caption>', "
                                  f"got {line[:80]!r}; {fix}")
        text = " ".join(caption.split())
        if text:
            numbered.setdefault(name, []).append((int(index), text))
    return {name: [c for _, c in sorted(caps)] for name, caps in numbered.items()}


def load_images(paths: Sequence[Path], size: tuple[int, int], fix: str,
                num_workers: int | None = None) -> np.ndarray:
    """Decode image files as RGB, resized to ``size``: uint8 (N, 3, H, W). A missing file is a
    ``DatasetNotFoundError``, an unreadable one a ``DataFormatError``, naming it."""
    for path in paths:  # before decoding anything: a missing file fails fast
        if not path.is_file():
            raise DatasetNotFoundError(f"image {path} is missing; {fix}")
    images = np.empty((len(paths), 3, *size), dtype=np.uint8)

    def load(i: int) -> None:
        try:
            images[i] = load_image(paths[i], "RGB", size)
        except DataFormatError as exc:
            raise DataFormatError(str(exc).replace("remove or replace the file", fix)) from exc

    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(load, range(len(paths))):
            pass
    return images


def _photo_size(image_size: ImageSize | None) -> tuple[int, int]:
    return normalize_size(image_size if image_size is not None else DEFAULT_PHOTO_SIZE)


def _limited(items: list, limit: int | None) -> list:
    if limit is None:
        return items
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return items[:limit]


# -- MS COCO captions -------------------------------------------------------------------------


class COCOCaptions(CaptionDataset):
    """MS COCO captions, official split or Karpathy's (see the module docstring).

    ``root`` holds ``annotations/`` and the image folders (or holds ``coco/`` with them);
    ``annotations=`` / ``image_dir=`` name the files elsewhere. ``limit`` keeps the first
    images (by id, or in the Karpathy file's order) for quick runs.
    """

    def __init__(
        self,
        root: str | Path = "data",
        train: bool = True,
        download: bool = False,
        image_size: ImageSize | None = None,
        transform: Transform | None = None,
        *,
        split: str | None = None,
        year: int = 2014,
        karpathy: str | Path | bool | None = None,
        annotations: str | Path | None = None,
        image_dir: str | Path | None = None,
        limit: int | None = None,
        num_workers: int | None = None,
    ):
        self.root = Path(root).expanduser()
        if download:
            raise InputError(
                "MS COCO is not downloaded automatically (13 GB for train2014 + val2014); get "
                "the images and annotations_trainval2014.zip from https://cocodataset.org and "
                f"unpack them into {self.root}, then drop --download"
            )
        size = _photo_size(image_size)
        fix = ("the COCO folder is incomplete: unpack the official images and "
               "annotations_trainval2014.zip (https://cocodataset.org) there again")
        if karpathy:
            split = split or ("train+restval" if train else "test")
            if karpathy is True:
                path = self._folder(Path("dataset_coco.json")) / "dataset_coco.json"
            else:
                path = Path(karpathy).expanduser()
            entries = _limited(read_karpathy_split(path, split), limit)
            base = Path(image_dir).expanduser() if image_dir else self._folder(
                Path(entries[0][0]))
            paths = [base / rel for rel, _, _ in entries]
            ids = [ident for _, ident, _ in entries]
            name = f"coco-captions karpathy {split}"
        else:
            split = split or ("train" if train else "val")
            if split not in ("train", "val"):
                raise InputError(f"COCO captions split must be train or val (or use karpathy= "
                                 f"for Karpathy's train/val/test), got {split!r}")
            stem = f"{split}{year}"
            relative = Path("annotations", f"captions_{stem}.json")
            path = Path(annotations).expanduser() if annotations else \
                self._folder(relative) / relative
            entries = _limited(read_coco_captions(path, fix), limit)
            base = Path(image_dir).expanduser() if image_dir else self._folder(Path(stem))
            paths = [base / stem / file if not image_dir else base / file
                     for file, _, _ in entries]
            ids = [file for file, _, _ in entries]
            name = f"coco-captions {stem}"
        self.files = paths
        self.split = split
        images = load_images(paths, size, fix, num_workers)
        super().__init__(torch.from_numpy(images), [caps for *_, caps in entries], ids=ids,
                         transform=transform, name=name)

    def _folder(self, relative: Path) -> Path:
        """``root/coco`` if it holds ``relative``, else ``root``."""
        nested = self.root / "coco"
        return nested if (nested / relative).exists() else self.root


@DATASETS.register("coco-captions")
def coco_captions(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> COCOCaptions:
    """MS COCO captions 2014 (82,783 / 40,504 images, 5+ captions each; karpathy= splits)."""
    return COCOCaptions(root, train=train, download=download, image_size=image_size, **kw)


# -- Flickr8k ---------------------------------------------------------------------------------

FLICKR8K_TOKENS = "Flickr8k.token.txt"
FLICKR8K_LISTS = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
                  "test": "Flickr_8k.testImages.txt"}
FLICKR8K_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")


class Flickr8k(CaptionDataset):
    """Flickr8k in its official archives' layout (see the module docstring)."""

    def __init__(
        self,
        root: str | Path = "data",
        train: bool = True,
        download: bool = False,
        image_size: ImageSize | None = None,
        transform: Transform | None = None,
        *,
        split: str | None = None,
        limit: int | None = None,
        num_workers: int | None = None,
    ):
        self.root = Path(root).expanduser()
        if download:
            raise InputError(
                "Flickr8k is not downloaded automatically (its licence asks for a request "
                "form); unpack Flickr8k_Dataset.zip and Flickr8k_text.zip into "
                f"{self.root}, then drop --download"
            )
        split = split or ("train" if train else "test")
        split = "dev" if split == "val" else split
        if split not in FLICKR8K_LISTS:
            raise InputError(f"Flickr8k split must be train, dev (val) or test, got {split!r}")
        folder = self.root / "Flickr8k" if (self.root / "Flickr8k").is_dir() else self.root
        text = folder / "Flickr8k_text" if (folder / "Flickr8k_text").is_dir() else folder
        fix = (f"the Flickr8k folder {folder} is incomplete: unpack Flickr8k_text.zip and "
               "Flickr8k_Dataset.zip there again")
        tokens = text / FLICKR8K_TOKENS
        listing = text / FLICKR8K_LISTS[split]
        for path in (tokens, listing):
            if not path.is_file():
                raise DatasetNotFoundError(
                    f"{path} is missing; unpack Flickr8k_text.zip into {folder} (expected "
                    f"{FLICKR8K_TOKENS} and {', '.join(FLICKR8K_LISTS.values())})"
                )
        captions = read_flickr8k_tokens(tokens, fix)
        try:
            names = listing.read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{listing}: cannot read ({describe_error(exc)}); {fix}") \
                from exc
        names = _limited(names, limit)
        if not names:
            raise DataFormatError(f"{listing}: the split list names no image; {fix}")
        missing = [n for n in names if n not in captions]
        if missing:
            raise DataFormatError(f"{tokens}: no caption for {missing[0]} (listed in "
                                  f"{listing.name}; {len(missing)} without captions); {fix}")
        image_dir = next((folder / d for d in FLICKR8K_IMAGE_DIRS if (folder / d).is_dir()),
                         folder / FLICKR8K_IMAGE_DIRS[0])
        self.files = [image_dir / n for n in names]
        self.split = split
        images = load_images(self.files, _photo_size(image_size), fix, num_workers)
        super().__init__(torch.from_numpy(images), [captions[n] for n in names], ids=names,
                         transform=transform, name=f"flickr8k {split}")


@DATASETS.register("flickr8k")
def flickr8k(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> Flickr8k:
    """Flickr8k, 6,000 / 1,000 / 1,000 images with 5 captions each (official split lists)."""
    return Flickr8k(root, train=train, download=download, image_size=image_size, **kw)


# -- generated captioned scenes ---------------------------------------------------------------

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 240),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
#: object 0 <relation> object 1; RELATIONS[r ^ 1] is the inverse
RELATIONS = ("left of", "right of", "above", "below")
_LONG = {"left of": "to the left of", "right of": "to the right of", "above": "above",
         "below": "below"}
_CHUNK = 512


def caption_scene(colours: Sequence[str], shapes: Sequence[str], relation: str) -> list[str]:
    """The five phrasings of "object 0 <relation> object 1" that ``caption-shapes`` uses."""
    a = f"a {colours[0]} {shapes[0]}"
    b = f"a {colours[1]} {shapes[1]}"
    inverse = RELATIONS[RELATIONS.index(relation) ^ 1]
    return [
        f"{a} {relation} {b}",
        f"{b} {inverse} {a}",
        f"{a} is {_LONG[relation]} {b}",
        f"there is {b} {_LONG[inverse]} {a}",
        f"the {colours[0]} {shapes[0]} is {_LONG[relation]} the {colours[1]} {shapes[1]}",
    ]


def make_caption_shapes(
    num_images: int, image_size: ImageSize = 64, seed: int = 0, return_objects: bool = False
) -> tuple[np.ndarray, list[list[str]]] | tuple[np.ndarray, list[list[str]], dict]:
    """Two flat-coloured shapes on black and five captions of their relation:
    (images uint8 (N, 3, H, W), captions (N lists of 5 strings)).

    Each image holds two objects of different colours (``COLOURS``: red, green, blue, yellow,
    white), each a circle (radius ``r``), an axis-aligned square (half side ``0.8 r``) or an
    upward equilateral triangle (circumradius ``1.15 r``), ``r`` uniform in 10%..16% of the
    shorter side. They sit side by side (``left of`` / ``right of``: one in each half,
    their heights within 8% of the side) or one over the other (``above`` / ``below``),
    so exactly one relation holds. Captions (:func:`caption_scene`): "a red circle left of a
    blue square", "a blue square right of a red circle", "a red circle is to the left of a
    blue square", "there is a blue square to the right of a red circle", "the red circle is
    to the left of the blue square". ``return_objects`` adds the parameters, arrays: ``colour``
    and ``shape`` (N, 2) indices into ``COLOURS`` / ``SHAPES``, ``cy``, ``cx``, ``radius``
    (N, 2) pixels, ``relation`` (N,) index into ``RELATIONS`` (object 0 to object 1).
    Everything follows from ``seed`` (numpy's frozen ``RandomState`` stream).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    h, w = normalize_size(image_size)
    if min(h, w) < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size!r}")
    rng = np.random.RandomState(seed)
    n, side, names = num_images, min(h, w), list(COLOURS)
    colour = rng.randint(0, len(names), (n, 2))
    colour[:, 1] = (colour[:, 0] + rng.randint(1, len(names), n)) % len(names)  # different
    shape = rng.randint(0, len(SHAPES), (n, 2))
    relation = rng.randint(0, len(RELATIONS), n)
    radius = rng.uniform(0.10 * side, 0.16 * side, (n, 2))
    reach = 1.15 * radius  # every shape lies within this distance of its centre
    # Along the relation's axis: object 0 in the first half (left / top) for "left of" /
    # "above", in the second for "right of" / "below"; across it, near a common line.
    first = rng.uniform(0, 1, (n, 2))
    across = rng.uniform(0, 1, n)
    jitter = rng.uniform(-0.08, 0.08, (n, 2)) * side
    vertical = relation >= 2
    extent = np.where(vertical, h, w)[:, None].astype(float)
    other = np.where(vertical, w, h)[:, None].astype(float)
    slot = np.stack([(relation % 2 == 1), (relation % 2 == 0)], 1)  # object in 2nd half?
    low = reach + slot * extent / 2
    along = low + first * (extent / 2 - 2 * reach)
    line = reach.max(1, keepdims=True) + 0.08 * side + across[:, None] * (
        other - 2 * (reach.max(1, keepdims=True) + 0.08 * side))
    line = np.clip(line + jitter, reach, other - reach)
    cy = np.where(vertical[:, None], along, line)
    cx = np.where(vertical[:, None], line, along)
    palette = np.array(list(COLOURS.values()), dtype=np.uint8)
    images = np.zeros((n, 3, h, w), dtype=np.uint8)
    ys = (np.arange(h, dtype=np.float64) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=np.float64) + 0.5)[None, None, :]
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        for j in range(2):
            inside = _inside(shape[part, j], cy[part, j], cx[part, j], radius[part, j], ys, xs)
            rgb = palette[colour[part, j]][:, :, None, None]  # (k, 3, 1, 1)
            np.copyto(images[part], rgb, where=inside[:, None])
    captions = [
        caption_scene([names[c] for c in colour[i]], [SHAPES[s] for s in shape[i]],
                      RELATIONS[relation[i]])
        for i in range(n)
    ]
    if return_objects:
        objects = {"colour": colour, "shape": shape, "cy": cy, "cx": cx, "radius": radius,
                   "relation": relation}
        return images, captions, objects
    return images, captions


def _inside(shape, cy, cx, radius, ys, xs) -> np.ndarray:
    """Boolean (k, h, w): pixel centres inside each image's shape."""
    dy, dx, r = ys - cy[:, None, None], xs - cx[:, None, None], radius[:, None, None]
    circle = dx * dx + dy * dy <= r * r
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    # Apex up: edges 0.575 r (half the circumradius) from the centre, outward normals
    # down, up-left and up-right.
    edge = 0.575 * r
    triangle = (dy <= edge) & (0.8660254 * dx - 0.5 * dy <= edge) \
        & (-0.8660254 * dx - 0.5 * dy <= edge)
    kind = shape[:, None, None]
    return np.where(kind == 0, circle, np.where(kind == 1, square, triangle))


class CaptionShapes(CaptionDataset):
    """Generated two-shape scenes with five captions each (:func:`make_caption_shapes`); the
    test split draws from another seed than the training split."""

    def __init__(
        self,
        num_images: int = 2000,
        image_size: ImageSize = 64,
        train: bool = True,
        seed: int = 0,
        transform: Transform | None = None,
    ):
        images, captions = make_caption_shapes(num_images, image_size, seed * 2 + (not train))
        super().__init__(torch.from_numpy(images), captions,
                         ids=[f"{'train' if train else 'test'}-{i}" for i in range(num_images)],
                         transform=transform,
                         name=f"caption-shapes {'train' if train else 'test'}")


@DATASETS.register("caption-shapes")
def caption_shapes(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    *,
    num_images: int | None = None,
    seed: int = 0,
    **kw: Any,
) -> CaptionShapes:
    """Generated two-shape scenes, 5 captions each (default 2000 train / 500 test, 64x64 RGB)."""
    # Nothing to read or download: `root` and `download` exist for the common signature.
    if num_images is None:
        num_images = 2000 if train else 500
    return CaptionShapes(num_images, image_size if image_size is not None else 64, train=train,
                         seed=seed, **kw)
