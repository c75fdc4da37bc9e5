"""Image folders via Pillow: class sub-folders or flat, fixed mode and size, corrupt files."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlgen.data import (
    DataFormatError,
    DatasetNotFoundError,
    ImageFolder,
    load_dataset,
    load_image,
)
from rlgen.data.base import DataWarning


def save(path, size=(20, 12), colour=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "imgs"
    save(root / "cat" / "a.png", (20, 12), (255, 0, 0))
    save(root / "cat" / "nested" / "b.jpg", (30, 30), (250, 0, 0))
    save(root / "dog" / "c.bmp", (16, 40), (0, 0, 255))
    save(root / "dog" / "d.png", (16, 16), 255, mode="L")  # grey source image
    (root / "empty").mkdir()
    (root / "dog" / "._d.png").write_bytes(b"macOS resource fork, not an image")
    (root / "dog" / "notes.txt").write_text("ignored")
    return root


def test_class_subfolders_rgb_resized(class_folder):
    ds = load_dataset("folder", root=class_folder, image_size=8)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert [p.name for p in ds.files] == ["a.png", "b.jpg", "c.bmp", "d.png"]
    # Solid colours survive conversion and resizing (JPEG within a few levels).
    assert ds.images[0, 0].min() == 255 and ds.images[0, 1:].max() == 0
    assert ds.images[2, 2].min() == 255
    assert abs(int(ds.images[1, 0].float().mean()) - 250) <= 3
    assert (ds.images[3] == 255).all()  # grey 255 -> white in RGB
    image, label = ds[2]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 1


def test_grey_mode_and_exact_size(class_folder):
    ds = ImageFolder(class_folder, image_size=(6, 10), mode="L")
    assert ds.images.shape == (4, 1, 6, 10) and ds.channels == 1


def test_int_size_centre_crops_after_resizing_shorter_side(tmp_path):
    # 30 wide x 10 high, white only in the middle third: the centre 10x10 crop is all white.
    array = np.zeros((10, 30), np.uint8)
    array[:, 10:20] = 255
    Image.fromarray(array, "L").save(tmp_path / "x.png")
    ds = ImageFolder(tmp_path, image_size=10, mode="L")
    assert ds.images.shape == (1, 1, 10, 10) and (ds.images == 255).all()
    stretched = ImageFolder(tmp_path, image_size=(10, 10), mode="L")
    assert stretched.images.float().mean() < 200  # black sides squeezed in


def test_flat_folder_is_one_class(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", (12, 12), (i * 50, 0, 0))
    ds = ImageFolder(tmp_path)
    assert len(ds) == 3 and ds.num_classes == 1 and ds.labels.tolist() == [0, 0, 0]
    assert ds.images.shape == (3, 3, 12, 12)
    assert ds.images[:, 0, 0, 0].tolist() == [0, 50, 100]


def test_images_of_different_sizes_need_image_size(class_folder):
    with pytest.raises(DataFormatError, match="image_size"):
        ImageFolder(class_folder)


def _png(size=(64, 64), seed=0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(size=(64, 64), seed=0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG")
    return buffer.getvalue()


UNREADABLE = {
    "zero-bytes": b"",
    "text": b"this is not a png",
    "random-bytes": bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8)),
    "png-signature-only": b"\x89PNG\r\n\x1a\n" + b"\x00" * 10,
    "truncated-png": _png()[:-200],
    "truncated-jpeg": _jpeg()[:-300],
    "jpeg-header-only": _jpeg()[:200],
}


@pytest.mark.parametrize("content", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_unreadable_image_is_skipped_with_one_warning(tmp_path, content):
    save(tmp_path / "a" / "good.png", (12, 12), (255, 0, 0))
    bad = tmp_path / "a" / "m_bad.png"
    bad.write_bytes(content)
    save(tmp_path / "b" / "z.png", (12, 12), (0, 0, 255))
    with pytest.warns(DataWarning) as record:
        ds = ImageFolder(tmp_path)  # no image_size: the good images' size is used
    assert len(record) == 1
    msg = str(record[0].message)
    assert "skipped 1 of 3 image files" in msg and "a/m_bad.png" in msg and "\n" not in msg
    assert ds.skipped == [bad] and [p.name for p in ds.files] == ["good.png", "z.png"]
    assert len(ds) == 2 and ds.labels.tolist() == [0, 1] and ds.classes == ["a", "b"]
    # Everything is in memory: items and the full batch never touch the bad file again.
    assert [label for _, label in ds] == [0, 1]
    images, _ = ds.full_batch()
    assert images.shape == (2, 3, 12, 12) and float(images[1, 2].min()) == 1.0


def test_warning_lists_the_first_few_and_the_count(tmp_path):
    save(tmp_path / "ok.png", (8, 8))
    for i in range(5):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"")
    with pytest.warns(DataWarning) as record:
        ds = ImageFolder(tmp_path, image_size=8)
    assert len(record) == 1
    msg = str(record[0].message)
    assert msg.startswith(f"{tmp_path}: skipped 5 of 6 image files")
    assert "bad0.jpg" in msg and "bad2.jpg" in msg and "bad3.jpg" not in msg
    assert "and 2 more (see .skipped)" in msg
    assert [p.name for p in ds.skipped] == [f"bad{i}.jpg" for i in range(5)] and len(ds) == 1


def test_first_image_unreadable_without_image_size(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    save(tmp_path / "b.png", (10, 6))
    save(tmp_path / "c.png", (10, 6))
    with pytest.warns(DataWarning, match="a.png"):
        ds = ImageFolder(tmp_path)
    assert ds.images.shape == (2, 3, 6, 10) and [p.name for p in ds.files] == ["b.png", "c.png"]


def test_class_whose_images_are_all_unreadable_keeps_its_label(tmp_path):
    save(tmp_path / "a" / "x.png", (8, 8))
    (tmp_path / "b" / "y.png").parent.mkdir()
    (tmp_path / "b" / "y.png").write_bytes(b"junk")
    save(tmp_path / "c" / "z.png", (8, 8))
    with pytest.warns(DataWarning, match="b/y.png"):
        ds = ImageFolder(tmp_path)
    assert ds.classes == ["a", "b", "c"] and ds.labels.tolist() == [0, 2]


@pytest.mark.parametrize("image_size", [None, 8])
def test_no_readable_image_is_an_error_naming_the_folder(tmp_path, image_size):
    for name, content in UNREADABLE.items():
        (tmp_path / "only" / f"{name}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "only" / f"{name}.png").write_bytes(content)
    with pytest.raises(DataFormatError) as err:
        ImageFolder(tmp_path, image_size=image_size)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}: none of the {len(UNREADABLE)} image files can be read")
    first = tmp_path / "only" / f"{sorted(UNREADABLE)[0]}.png"  # the first file, sorted
    assert f"(first: {first}: " in msg and "\n" not in msg


def test_exceptions_pillow_raises_besides_oserror_are_caught(tmp_path, monkeypatch):
    save(tmp_path / "good.png", (8, 8))
    save(tmp_path / "odd.png", (8, 8))
    real_open = Image.open

    def plugin_bug(path, *args, **kwargs):  # as a corrupt file can make a plugin raise
        if str(path).endswith("odd.png"):
            raise struct.error("unpack requires a buffer of 4 bytes")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", plugin_bug)
    with pytest.warns(DataWarning, match=r"odd.png \(error: unpack requires"):
        ds = ImageFolder(tmp_path)
    assert len(ds) == 1
    with pytest.raises(DataFormatError, match="odd.png: cannot read this image"):
        load_image(tmp_path / "odd.png")


@pytest.mark.parametrize("encode", [_png, _jpeg], ids=["png", "jpeg"])
def test_truncated_images_are_loaded_whole_or_skipped(tmp_path, encode):
    """Whatever the cut, an image is either complete (equal to the intact file) or skipped."""
    blob = encode((16, 16), seed=3)
    (tmp_path / "intact").mkdir()
    (tmp_path / "intact" / "x.img.png").write_bytes(blob)
    reference = ImageFolder(tmp_path / "intact").images[0]
    cuts = sorted({1, 2, 4, 12, 16, 20, 21, 40, len(blob) // 2, len(blob) - 9})
    folder = tmp_path / "cut"
    folder.mkdir()
    save(folder / "0000_good.png", (16, 16))
    for cut in cuts:
        (folder / f"cut_{cut:05d}.png").write_bytes(blob[:-cut])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = ImageFolder(folder)
    assert len(ds) + len(ds.skipped) == len(cuts) + 1
    for path, image in zip(ds.files[1:], ds.images[1:]):
        assert torch.equal(image, reference), path.name  # nothing half-decoded
    for i in range(len(ds)):  # and nothing can fail later, at batch time
        ds[i]


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images found"):
        ImageFolder(tmp_path / "empty")


def test_bad_mode_and_download_are_refused(class_folder):
    with pytest.raises(ValueError, match="mode"):
        ImageFolder(class_folder, image_size=8, mode="CMYK")
    with pytest.raises(ValueError, match="cannot download"):
        load_dataset("folder", root=class_folder, download=True)


def test_loose_images_beside_class_folders_warn(class_folder):
    save(class_folder / "stray.png")
    with pytest.warns(DataWarning, match="stray.png"):
        ds = ImageFolder(class_folder, image_size=8)
    assert len(ds) == 4


def test_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    save(tmp_path / "a.png")
    real_iterdir = Path.iterdir

    def no_permission(self):
        if self == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", no_permission)
    with pytest.raises(DataFormatError, match="cannot list this image folder.*PermissionError"):
        ImageFolder(tmp_path)
