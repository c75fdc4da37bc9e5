"""MNIST / Fashion-MNIST IDX reading: gz and raw files, header validation, clear errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from rlgen.data import (
    MNIST,
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    FashionMNIST,
    load_dataset,
    parse_idx,
    read_idx,
)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzipped_and_raw_idx(tmp_path, files, gz):
    arrays = files.fake_mnist(tmp_path / "mnist", n_train=12, n_test=5, gz=gz)
    train = MNIST(tmp_path, train=True, verify=False)
    test = MNIST(tmp_path, train=False, verify=False)
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 5
    np.testing.assert_array_equal(train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert train.labels.dtype == torch.int64
    assert (train.num_classes, train.channels, train.image_size) == (10, 1, (28, 28))
    image, label = train[3]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert torch.allclose(image, train.images[3].float() / 255)
    assert label == int(arrays["train-labels-idx1-ubyte"][3]) and isinstance(label, int)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_parse_idx_round_trips_every_type(files, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    parsed = parse_idx(files.idx_bytes(array))
    assert parsed.dtype == np.dtype(dtype).newbyteorder("=") and parsed.shape == (2, 3, 4)
    np.testing.assert_array_equal(parsed, array)
    assert parsed.flags.writeable


def test_truncated_raw_file_names_file_and_fix(tmp_path, files):
    files.fake_mnist(tmp_path / "mnist", gz=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFormatError) as err:
        MNIST(tmp_path, verify=False)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and "--download" in msg and "delete" in msg
    assert "(12, 28, 28)" in msg  # what the header promised


def test_truncated_gzip_stream(tmp_path, files):
    files.fake_mnist(tmp_path / "mnist", gz=True)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataFormatError, match="truncated or corrupt.*--download"):
        MNIST(tmp_path, verify=False)


def test_trailing_bytes_are_rejected(files):
    data = files.idx_bytes(np.zeros((2, 2), np.uint8)) + b"\x00"
    with pytest.raises(DataFormatError, match="4 bytes of uint8.*5 bytes follow"):
        parse_idx(data, "x.idx")


def test_wrong_magic_for_the_role(tmp_path, files):
    arrays = files.fake_mnist(tmp_path / "mnist", gz=False)
    # A labels file where the images file should be.
    files.write_idx(
        tmp_path / "mnist" / "train-images-idx3-ubyte", arrays["train-labels-idx1-ubyte"]
    )
    with pytest.raises(DataFormatError, match="magic number 0x00000801, expected 0x00000803"):
        MNIST(tmp_path, verify=False)


@pytest.mark.parametrize(
    "head", [b"\x1f\x00\x08\x03", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00", b"\x00\x00"]
)
def test_not_an_idx_file(head):
    with pytest.raises(DataFormatError, match="not an IDX file"):
        parse_idx(head + b"\x00" * 16, "bad.idx")


def test_images_and_labels_count_mismatch(tmp_path, files):
    arrays = files.fake_mnist(tmp_path / "mnist", gz=False)
    files.write_idx(
        tmp_path / "mnist" / "train-labels-idx1-ubyte", arrays["train-labels-idx1-ubyte"][:-1]
    )
    with pytest.raises(DataFormatError, match="12 images but .* 11 labels"):
        MNIST(tmp_path, verify=False)


def test_missing_files_say_where_and_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        MNIST(tmp_path / "data")
    assert isinstance(err.value, DatasetNotFoundError)
    msg = str(err.value)
    assert str(tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert "--download" in msg and "download=True" in msg


def test_official_names_are_checked_against_published_md5(tmp_path, files):
    files.fake_mnist(tmp_path / "mnist", gz=True)
    with pytest.raises(ChecksumError) as err:
        MNIST(tmp_path)  # verify=True by default; fake content cannot match
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert "got " in msg and "verify=False" in msg


def test_torchvision_layout_and_root_itself_are_found(tmp_path, files):
    files.fake_mnist(tmp_path / "MNIST" / "raw", gz=True, seed=1)
    assert len(MNIST(tmp_path, verify=False)) == 12
    files.fake_mnist(tmp_path / "flat", gz=False, seed=2)
    assert len(MNIST(tmp_path / "flat", train=False, verify=False)) == 5


def test_image_size_resizes_the_stored_images(tmp_path, files):
    folder = tmp_path / "mnist"
    files.fake_mnist(folder, gz=False)
    files.write_idx(folder / "train-images-idx3-ubyte", np.full((12, 28, 28), 200, np.uint8))
    ds = MNIST(tmp_path, image_size=32, verify=False)
    assert ds.images.shape == (12, 1, 32, 32) and ds.image_size == (32, 32)
    assert int(ds.images.min()) == 200 == int(ds.images.max())  # constant stays constant
    assert ds[0][0].shape == (1, 32, 32)


def test_transform_applies_to_items(tmp_path, files):
    files.fake_mnist(tmp_path / "mnist", gz=True)
    ds = MNIST(tmp_path, verify=False, transform=lambda x: x * 2 - 1)
    image, _ = ds[0]
    assert torch.allclose(image, ds.images[0].float() / 255 * 2 - 1)


def test_fashion_mnist_folder_and_classes(tmp_path, files):
    files.fake_mnist(tmp_path / "fashion-mnist", gz=True)
    ds = load_dataset("fashion-mnist", root=tmp_path, verify=False)
    assert isinstance(ds, FashionMNIST) and len(ds) == 12
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    with pytest.raises(DatasetNotFoundError, match="Fashion-MNIST"):
        FashionMNIST(tmp_path / "elsewhere")


def test_read_idx_detects_gzip_by_content(tmp_path, files):
    # A gzipped file without the .gz suffix (renamed by hand) still reads.
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(files.idx_bytes(np.arange(7, dtype=np.uint8))))
    np.testing.assert_array_equal(read_idx(path, expect_magic=0x801), np.arange(7))


# --- corrupt, foreign and unreadable files: one-line DataFormatError naming the file ---------


def _mnist_error(tmp_path, stem="train-images-idx3-ubyte") -> str:
    """Build MNIST, expecting DataFormatError; the checks every such message must pass."""
    with pytest.raises(DataFormatError) as err:
        MNIST(tmp_path, verify=False)
    msg = str(err.value)
    assert "\n" not in msg  # the CLI prints the first line only
    assert str(tmp_path / "mnist" / stem) in msg
    assert "--download" in msg and "copy the official file" in msg
    return msg


def _png_bytes() -> bytes:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("L", (28, 28)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, says",
    [
        (_png_bytes(), "magic number 0x89504e47, looks like a PNG image, expected 0x00000803"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML page"),
        (bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8)), "expected 0x00000803"),
        (b"", "empty"),
        (b"\x00\x00\x08", "not an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x0c", "truncated IDX header"),
    ],
    ids=["png", "html", "random-bytes", "empty", "three-bytes", "cut-header"],
)
def test_foreign_file_under_the_images_name(tmp_path, files, content, says):
    files.fake_mnist(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(content)
    assert says in _mnist_error(tmp_path)


def test_gzipped_foreign_file_is_named(tmp_path, files):
    files.fake_mnist(tmp_path / "mnist", gz=True)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_png_bytes()))
    msg = _mnist_error(tmp_path, "train-labels-idx1-ubyte.gz")
    assert "not an IDX label file" in msg and "PNG" in msg and "0x00000801" in msg


def _flip(offset_from_end: int):
    def mutate(blob: bytes) -> bytes:
        data = bytearray(blob)
        data[len(data) - offset_from_end] ^= 0xFF
        return bytes(data)

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        _flip(8),  # the CRC32 in the gzip trailer
        _flip(2),  # the uncompressed length in the trailer
        lambda b: b[:-4],  # the trailer cut short
        lambda b: b[: len(b) // 2],  # the deflate stream cut short
        lambda b: b[:2],  # the gzip magic and nothing else
        lambda b: b + b"trailing garbage",
        lambda b: b[:12] + bytes(x ^ 0x5A for x in b[12:40]) + b[40:],  # garbled deflate data
    ],
    ids=["bad-crc", "bad-length", "cut-trailer", "cut-stream", "magic-only", "trailing", "garbled"],
)
def test_corrupt_gzip_stream_is_named(tmp_path, files, mutate):
    files.fake_mnist(tmp_path / "mnist", gz=True)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(mutate(path.read_bytes()))
    assert "gzip stream is truncated or corrupt" in _mnist_error(tmp_path, path.name)


@pytest.mark.parametrize("gz", [True, False])
def test_random_damage_never_leaks_a_raw_exception(tmp_path, files, gz):
    """Cuts and bit flips anywhere: a DataFormatError, or (raw pixel bytes) a clean load."""
    rng = np.random.default_rng(1)
    files.fake_mnist(tmp_path / "mnist", gz=gz)
    path = tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    good = path.read_bytes()
    for _ in range(40):
        data = bytearray(good)
        if rng.random() < 0.5:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        try:
            MNIST(tmp_path, verify=False)
        except DataFormatError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)


def test_images_that_are_not_28x28_are_refused(tmp_path, files):
    files.fake_mnist(tmp_path / "mnist", gz=False)
    files.write_idx(
        tmp_path / "mnist" / "train-images-idx3-ubyte", np.zeros((12, 32, 32), np.uint8)
    )
    assert "holds 32x32 images, expected 28x28 MNIST images" in _mnist_error(tmp_path)


def test_empty_split_is_refused(tmp_path, files):
    files.fake_mnist(tmp_path / "mnist", gz=False)
    files.write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    files.write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(0, np.uint8))
    assert "holds no images" in _mnist_error(tmp_path)


def test_count_mismatch_says_how_to_fix(tmp_path, files):
    arrays = files.fake_mnist(tmp_path / "fashion-mnist", gz=False)
    labels = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte"
    files.write_idx(labels, np.concatenate([arrays["t10k-labels-idx1-ubyte"]] * 2))
    with pytest.raises(DataFormatError) as err:
        FashionMNIST(tmp_path, train=False, verify=False)
    msg = str(err.value)
    assert "5 images but" in msg and str(labels) in msg and "10 labels" in msg
    assert "delete both" in msg and "--download" in msg and "\n" not in msg


def test_label_out_of_range_says_how_to_fix(tmp_path, files):
    files.fake_mnist(tmp_path / "mnist", gz=False)
    files.write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.full(12, 10, np.uint8))
    assert "label 10 out of range" in _mnist_error(tmp_path, "train-labels-idx1-ubyte")


def test_unreadable_file_is_named(tmp_path, files, monkeypatch):
    import rlgen.data.mnist as mnist_module

    files.fake_mnist(tmp_path / "mnist", gz=True)
    real_open = open

    def no_permission(path, *args, **kwargs):
        if str(path).endswith("train-images-idx3-ubyte.gz"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(mnist_module, "open", no_permission, raising=False)
    with pytest.raises(DataFormatError) as err:
        MNIST(tmp_path, verify=False)
    msg = str(err.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert "PermissionError" in msg and "permissions" in msg and "\n" not in msg
