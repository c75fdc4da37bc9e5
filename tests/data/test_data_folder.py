"""Image folders via Pillow: class sub-folders or flat, fixed mode and size, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rlgen.data import DataFormatError, DatasetNotFoundError, ImageFolder, load_dataset


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


@pytest.mark.parametrize("content", [b"this is not a png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10])
def test_corrupt_image_is_named(tmp_path, content):
    save(tmp_path / "a" / "good.png")
    bad = tmp_path / "a" / "zz_bad.png"
    bad.write_bytes(content)
    with pytest.raises(DataFormatError) as err:
        ImageFolder(tmp_path, image_size=8)
    assert str(bad) in str(err.value)


def test_truncated_image_is_named(tmp_path):
    path = save(tmp_path / "c" / "big.png", (64, 64))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataFormatError, match="big.png"):
        ImageFolder(tmp_path, image_size=8)


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
    with pytest.warns(UserWarning, match="stray.png"):
        ds = ImageFolder(class_folder, image_size=8)
    assert len(ds) == 4
