"""MNIST and Fashion-MNIST, read from their original IDX files with numpy and struct.

MNIST: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998. Fashion-MNIST: Xiao, Rasul, Vollgraf, "Fashion-MNIST: a
novel image dataset for benchmarking machine learning algorithms", arXiv:1708.07747, 2017.

IDX layout: two zero bytes, a type code (0x08 = unsigned byte, 0x09 signed byte,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, one
big-endian uint32 per dimension, then the values in C order, big-endian. Files are read
gzip-compressed (as published) or raw (after ``gunzip``).

Bad files: the official ``.gz`` names are first checked against their published MD5
(:class:`~rlgen.data.base.ChecksumError`, unless ``verify=False``). Every file is then
checked structurally and anything wrong raises :class:`~rlgen.data.base.DataFormatError`
with a one-line message naming the file, what was expected and the fix (delete it and
re-run with ``--download``, or copy the official file there): a corrupt or truncated gzip
stream (bad CRC, cut short), an empty file, a foreign file under an MNIST name (a PNG, an
HTML error page, random bytes: the message quotes the magic number and, when it
recognises one, the format), the images file and labels file swapped, a truncated or
over-long IDX body, images that are not 28x28, an empty split, an images file whose count
differs from its labels file, a label outside 0..9, or a file that cannot be opened (e.g.
no read permission). No raw ``struct``, ``gzip``, ``zlib`` or numpy error escapes.
"""

from __future__ import annotations

import gzip
import math
import struct
import sys
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
    ImageDataset,
    ImageSize,
    describe_error,
)
from rlgen.data.download import download_file, mirror_urls, verify_checksum
from rlgen.registry import DATASETS

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_REDOWNLOAD = (
    "delete it and re-run with --download (download=True), or copy the official file there"
)
# Leading bytes of formats that end up under an MNIST name by mistake; text ones lowercase.
_SIGNATURES = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a zip archive"),
    (b"<!doctype html", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"<?xml", "an XML document (a failed download?)"),
)


def _sniff(data: bytes) -> str:
    """A short guess at what ``data`` is, e.g. ``", looks like a PNG image"``, or ``""``."""
    text = data[:64].lstrip().lower()
    for signature, name in _SIGNATURES:
        if data.startswith(signature) or text.startswith(signature):
            return f", looks like {name}"
    if data[257:262] == b"ustar":
        return ", looks like a tar archive"
    return ""


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped if it starts with the gzip magic (whatever its name)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:  # no read permission, an I/O error, ...
        raise DataFormatError(
            f"{path}: cannot read this file ({describe_error(exc)}); check its permissions, "
            "or replace it with the official file"
        ) from exc
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:  # OSError covers gzip.BadGzipFile
        raise DataFormatError(
            f"{path}: the gzip stream is truncated or corrupt ({describe_error(exc)}); "
            f"{_REDOWNLOAD}"
        ) from exc


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a native-endian numpy array, validating the header."""
    if not data:
        raise DataFormatError(
            f"{source}: the file is empty (0 bytes), expected an IDX file; {_REDOWNLOAD}"
        )
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DataFormatError(
            f"{source}: not an IDX file: magic bytes {data[:4].hex()}{_sniff(data)}, expected "
            f"00 00 <type code in {[hex(c) for c in _IDX_TYPES]}> <ndim >= 1> "
            f"(MNIST images 00000803, labels 00000801); {_REDOWNLOAD}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(
            f"{source}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need "
            f"{header}); {_REDOWNLOAD}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(
            f"{source}: truncated or corrupt IDX file: the header promises shape {dims} "
            f"({expected} bytes of {dtype.name}) but {len(data) - header} bytes follow; "
            f"{_REDOWNLOAD}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Read a (possibly gzipped) IDX file; ``expect_magic`` e.g. 0x803 checks type and rank."""
    path = Path(path)
    data = _read_bytes(path)
    if expect_magic is not None and len(data) >= 4:
        magic = struct.unpack(">I", data[:4])[0]
        if magic != expect_magic:
            raise DataFormatError(
                f"{path}: not an IDX {_role(expect_magic)}: magic number 0x{magic:08x}"
                f"{_sniff(data)}, expected 0x{expect_magic:08x} "
                f"({_describe_magic(expect_magic)}); {_REDOWNLOAD}"
            )
    return parse_idx(data, str(path))


def _role(magic: int) -> str:
    return {0x803: "image file", 0x801: "label file"}.get(magic, "file of this type")


def _describe_magic(magic: int) -> str:
    code = (magic >> 8) & 0xFF
    kind = np.dtype(_IDX_TYPES[code]).name if code in _IDX_TYPES else f"type 0x{code:02x}"
    return f"{kind}, {magic & 0xFF} dimensions"


class MNIST(ImageDataset):
    """MNIST handwritten digits: 60,000 train / 10,000 test, 28x28 grey, 10 classes.

    Files are looked for in ``root/mnist/``, torchvision's ``root/MNIST/raw/`` and ``root``
    itself, gzipped or not. Official ``.gz`` files are checked against their published MD5
    unless ``verify=False``; every file is checked structurally (magic, sizes).
    """

    folder = "mnist"
    extra_folders: tuple[str, ...] = ("MNIST/raw", ".")
    mirrors: Sequence[str] = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's copy
        "http://yann.lecun.com/exdb/mnist/",  # the original; often refuses scripts now
    )
    # MD5 of the official gzipped files (as published and used by torchvision).
    checksums: dict[str, str] = {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    }
    class_names: tuple[str, ...] = tuple(str(d) for d in range(10))
    display_name = "MNIST"
    image_shape: tuple[int, int] = (28, 28)

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
        prefix = "train" if train else "t10k"
        found = [
            self._locate(f"{prefix}-{kind}", download, verify, mirrors)
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        ]
        images = read_idx(found[0], expect_magic=0x00000803)
        labels = read_idx(found[1], expect_magic=0x00000801)
        if images.shape[1:] != self.image_shape:
            h, w = self.image_shape
            raise DataFormatError(
                f"{found[0]}: holds {images.shape[1]}x{images.shape[2]} images, expected "
                f"{h}x{w} {self.display_name} images; is this the right file? {_REDOWNLOAD}"
            )
        if images.shape[0] == 0:
            raise DataFormatError(f"{found[0]}: holds no images; {_REDOWNLOAD}")
        if images.shape[0] != labels.shape[0]:
            raise DataFormatError(
                f"{found[0]} holds {images.shape[0]} images but {found[1]} holds "
                f"{labels.shape[0]} labels; the two files must come from the same split: "
                "delete both and re-run with --download (download=True), or copy the "
                "official files there"
            )
        if labels.size and int(labels.max()) >= len(self.class_names):
            raise DataFormatError(
                f"{found[1]}: label {int(labels.max())} out of range for "
                f"{len(self.class_names)} classes (0..{len(self.class_names) - 1}); "
                f"{_REDOWNLOAD}"
            )
        super().__init__(
            torch.from_numpy(images).unsqueeze(1),
            labels.astype(np.int64),
            classes=self.class_names,
            image_size=image_size,
            transform=transform,
            name=f"{self.display_name} {'train' if train else 'test'}",
        )

    def _locate(
        self, stem: str, download: bool, verify: bool, mirrors: Sequence[str] | None
    ) -> Path:
        gz_name = f"{stem}.gz"
        candidates = [
            self.root / folder / name
            for folder in (self.folder, *self.extra_folders)
            for name in (gz_name, stem)
        ]
        target = self.root / self.folder / gz_name
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            if not (verify and found.name == gz_name and gz_name in self.checksums):
                return found
            try:
                verify_checksum(found, self.checksums[gz_name])
                return found
            except ChecksumError:
                if not download:
                    raise
                # --download repairs a corrupt copy; the new file replaces it atomically.
                print(f"{found} fails its checksum; downloading it again", file=sys.stderr)
        elif not download:
            looked = ", ".join(str(p) for p in candidates[1:])
            raise DatasetNotFoundError(
                f"{self.display_name} file not found: {target} (also looked for {looked}). "
                f"Re-run with --download (download=True) to fetch it into {target.parent}, "
                "or copy the official file there."
            )
        urls = mirror_urls(mirrors if mirrors is not None else self.mirrors, gz_name)
        return download_file(urls, target, self.checksums.get(gz_name))


class FashionMNIST(MNIST):
    """Fashion-MNIST (Zalando): 60,000 / 10,000 28x28 grey clothing images, 10 classes."""

    folder = "fashion-mnist"
    extra_folders = ("FashionMNIST/raw", ".")
    mirrors = (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    )
    # MD5 of the official gzipped files, as published in the Fashion-MNIST README.
    checksums = {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    }
    class_names = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    display_name = "Fashion-MNIST"


@DATASETS.register("mnist")
def mnist(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> MNIST:
    """MNIST digits, 60k/10k 28x28 grey, 10 classes, from the original IDX files."""
    return MNIST(root, train=train, download=download, image_size=image_size, **kw)


@DATASETS.register("fashion-mnist")
def fashion_mnist(
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: ImageSize | None = None,
    **kw: Any,
) -> FashionMNIST:
    """Fashion-MNIST clothing, 60k/10k 28x28 grey, 10 classes, from the original IDX files."""
    return FashionMNIST(root, train=train, download=download, image_size=image_size, **kw)
