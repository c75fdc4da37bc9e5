"""CIFAR-10 from its python pickles (``cifar-10-batches-py``), downloaded as the official archive.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", technical report,
University of Toronto, 2009. 50,000 train / 10,000 test 32x32 RGB images, 10 classes.

Each batch file is a pickled dict: ``b'data'`` a uint8 array (N, 3072) holding the red,
then green, then blue 32x32 planes of each image, and ``b'labels'`` a list of N ints.
The pickles are read with an unpickler that accepts numpy arrays and plain containers
only, so a tampered file cannot run code (a plain ``pickle.load`` would).

Bad files: each batch is checked against its published MD5 unless ``verify=False``
(:class:`~rlgen.data.base.ChecksumError`), then structurally. A batch that is not a pickle
(random bytes, a gzip or PNG file under a batch name), a truncated pickle, a pickle of
something else (a list, a dict without ``data``/``labels``), a pickle that refers to
anything but numpy arrays, wrong array shapes or types, an empty batch and labels outside
0..9 each raise :class:`~rlgen.data.base.DataFormatError` with one line naming the file and
the fix. A ``cifar-10-python.tar.gz`` that is not a gzip'd tar, is truncated, fails its gzip
CRC or lacks a batch also raises ``DataFormatError``, and the batches it had written are
removed, so a later run cannot pick up a half-extracted set. An unreadable or foreign
``batches.meta`` (which only holds the class names) is not fatal: one
:class:`~rlgen.data.base.DataWarning` names it and the standard CIFAR-10 names are used.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import pickle
import posixpath
import sys
import tarfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlgen.data.base import (
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    DataWarning,
    ImageDataset,
    ImageSize,
    describe_error,
)
from rlgen.data.download import download_file, mirror_urls, verify_checksum, write_atomic
from rlgen.registry import DATASETS

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_CHECKSUM = "md5:c58f30108f718f92721af3b95e74349a"
# MD5 of the files inside the official archive (the figures torchvision checks too).
CHECKSUMS = {
    "data_batch_1": "md5:c99cafc152244af753f735de768cd75f",
    "data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "md5:634d18415352ddfa80567beed471001a",
    "data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "md5:40351d587109b95175f43aff81a1287e",
    "batches.meta": "md5:5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_REDOWNLOAD = (
    "delete it and re-run with --download (download=True), or copy the official file there"
)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # The numpy helpers a pickled array refers to, under their numpy 1.x and 2.x module names.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
        ("__builtin__", "bytes"): bytes,  # ... and empty bytes (e.g. of an empty array)
        ("builtins", "bytes"): bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays, "
                "lists, bytes and numbers"
            ) from None


def _unpickle(path: Path, what: str = "a CIFAR-10 batch") -> dict:
    """The pickled dict in ``path`` (bytes keys decoded); ``what`` names it in errors."""
    try:
        with open(path, "rb") as f:
            try:
                entry = _ArrayUnpickler(f, encoding="bytes").load()
            except Exception as exc:  # corrupt pickles fail in many ways (EOF, struct, ...)
                raise DataFormatError(
                    f"{path}: not a readable pickle of {what} ({describe_error(exc)}); the "
                    f"file is truncated, corrupt or foreign: {_REDOWNLOAD}"
                ) from exc
    except FileNotFoundError:
        raise
    except OSError as exc:  # no read permission, an I/O error, ...
        raise DataFormatError(
            f"{path}: cannot read this file ({describe_error(exc)}); check its permissions, "
            "or replace it with the official file"
        ) from exc
    if not isinstance(entry, dict):
        raise DataFormatError(
            f"{path}: expected a pickled dict ({what}), got {type(entry).__name__}; {_REDOWNLOAD}"
        )
    # Python 3 writers may have used str keys; the official files use bytes.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def load_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    path = Path(path)
    entry = _unpickle(path)
    if "data" not in entry or "labels" not in entry:
        raise DataFormatError(
            f"{path}: a CIFAR-10 batch needs the keys b'data' and b'labels', "
            f"found {sorted(map(str, entry))}; {_REDOWNLOAD}"
        )
    data = entry["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or (data.shape[1] != 3 * 32 * 32)
    ):
        got = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataFormatError(
            f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {got}; {_REDOWNLOAD}"
        )
    if data.shape[0] == 0:
        raise DataFormatError(f"{path}: the batch holds no images; {_REDOWNLOAD}")
    try:
        labels = np.asarray(entry["labels"])
    except (ValueError, TypeError) as exc:  # e.g. a ragged list
        labels = np.asarray(None)
        reason = describe_error(exc)
    else:
        reason = f"shape {labels.shape}, dtype {labels.dtype}"
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            f"{path}: b'labels' must hold {data.shape[0]} integers, got {reason}; {_REDOWNLOAD}"
        )
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataFormatError(
            f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}; {_REDOWNLOAD}"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def extract_archive(archive: str | Path, root: str | Path) -> Path:
    """Extract the batch files of ``cifar-10-python.tar.gz`` into ``root/cifar-10-batches-py``.

    Only the known file names are read out of the archive and each is written atomically,
    so a crafted archive cannot write outside ``root`` and an interrupted extraction leaves
    whole files only. The gzip stream is read to its end so that its CRC is checked; if the
    archive turns out corrupt, the files written from it are removed again.
    """
    archive, dest = Path(archive), Path(root) / FOLDER
    written: list[str] = []
    try:
        with gzip.open(archive, "rb") as stream:
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                for member in tar:
                    name = posixpath.basename(member.name)
                    if member.isfile() and name in CHECKSUMS:
                        written.append(name)
                        write_atomic(dest / name, tar.extractfile(member))
            while stream.read(1 << 20):  # the rest of the stream: its end checks the CRC
                pass
        missing = [n for n in (*TRAIN_BATCHES, *TEST_BATCHES) if n not in written]
        if missing:
            raise DataFormatError(
                f"{archive}: the archive lacks {', '.join(missing)} (truncated, corrupt or "
                f"not the CIFAR-10 python archive); {_REDOWNLOAD}"
            )
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        _remove(dest, written)
        raise DataFormatError(
            f"{archive}: cannot extract ({describe_error(exc)}); the archive is truncated, "
            f"corrupt or not a .tar.gz: {_REDOWNLOAD}"
        ) from exc
    except DataFormatError:
        _remove(dest, written)
        raise
    return dest


def _remove(folder: Path, names: Sequence[str]) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


class CIFAR10(ImageDataset):
    """CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images, 10 classes.

    Reads ``root/cifar-10-batches-py/`` (or ``root`` itself if it holds the batches); if the
    batches are missing it extracts ``root/cifar-10-python.tar.gz``, downloading it first
    when ``download=True``. Batches are checked against their published MD5 unless
    ``verify=False``.
    """

    mirrors: Sequence[str] = ("https://www.cs.toronto.edu/~kriz/",)
    archive_checksum = ARCHIVE_CHECKSUM
    checksums = CHECKSUMS

    def __init__(
        self,
        root: str | Path = "data",
        train: bool = True,
        download: bool = False,
        image_size: ImageSize | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        *,
        verify: bool = True,
        mirrors: Sequence[str] | None = None,
    ):
        self.root = Path(root).expanduser()
        self.train = train
        names = TRAIN_BATCHES if train else TEST_BATCHES
        folder = self._locate(names, download, verify, mirrors)
        parts = [load_batch(folder / n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        super().__init__(
            torch.from_numpy(images),
            labels,
            classes=self._class_names(folder),
            image_size=image_size,
            transform=transform,
            name=f"CIFAR-10 {'train' if train else 'test'}",
        )

    def _locate(
        self, names: Sequence[str], download: bool, verify: bool, mirrors: Sequence[str] | None
    ) -> Path:
        folder = next(
            (d for d in (self.root / FOLDER, self.root) if all((d / n).is_file() for n in names)),
            None,
        )
        if folder is not None:
            try:
                self._verify(folder, names, verify)
                return folder
            except ChecksumError as exc:
                # A corrupt batch is repaired from the archive (downloaded if need be).
                if not download and not (self.root / ARCHIVE).is_file():
                    raise
                print(f"{exc}\nExtracting the batches again.", file=sys.stderr)
        archive = self._archive(download, verify, mirrors, names)
        folder = extract_archive(archive, self.root)
        self._verify(folder, names, verify)
        return folder

    def _verify(self, folder: Path, names: Sequence[str], verify: bool) -> None:
        if verify:
            for n in names:
                verify_checksum(folder / n, self.checksums[n])

    def _archive(
        self, download: bool, verify: bool, mirrors: Sequence[str] | None, names: Sequence[str]
    ) -> Path:
        """The local archive, verified; downloaded first when missing or corrupt."""
        archive = self.root / ARCHIVE
        if archive.is_file():
            if not verify:
                return archive
            try:
                verify_checksum(archive, self.archive_checksum)
                return archive
            except ChecksumError:
                if not download:
                    raise
                print(f"{archive} fails its checksum; downloading it again", file=sys.stderr)
        elif not download:
            raise DatasetNotFoundError(
                f"CIFAR-10 not found: neither {self.root / FOLDER / names[0]} nor the "
                f"archive {archive} exists. Re-run with --download (download=True) to "
                f"fetch the archive into {self.root}, or copy it there."
            )
        urls = mirror_urls(mirrors if mirrors is not None else self.mirrors, ARCHIVE)
        return download_file(urls, archive, self.archive_checksum)

    @staticmethod
    def _class_names(folder: Path) -> tuple[str, ...]:
        """The names in ``batches.meta``; the standard names, with a warning, if it is bad."""
        meta = folder / "batches.meta"
        if not meta.is_file():
            return CLASSES
        try:
            names = _unpickle(meta, "CIFAR-10's batches.meta").get("label_names")
            if not isinstance(names, list) or len(names) != len(CLASSES):
                raise DataFormatError(
                    f"{meta}: b'label_names' must be a list of {len(CLASSES)} names; {_REDOWNLOAD}"
                )
            try:
                return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    f"{meta}: b'label_names' must be UTF-8 names ({describe_error(exc)}); "
                    f"{_REDOWNLOAD}"
                ) from exc
        except DataFormatError as exc:
            warnings.warn(
                f"{exc}; meanwhile the standard CIFAR-10 class names are used",
                DataWarning,
                stacklevel=3,
            )
            return CLASSES


@DATASETS.register("cifar10")
def cifar10(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> CIFAR10:
    """CIFAR-10, 50k/10k 32x32 RGB, 10 classes, from the python pickles (archive on download)."""
    return CIFAR10(root, train=train, download=download, image_size=image_size, **kw)
