"""CIFAR-10 reading from pickles in the official format, archive extraction, safety."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from rlgen.data import CIFAR10, ChecksumError, DataFormatError, DatasetNotFoundError, load_batch
from rlgen.data.base import DataWarning
from rlgen.data.cifar import CLASSES, FOLDER, TEST_BATCHES, TRAIN_BATCHES


def write_batches(folder, files, n=4, protocol=2, meta=True):
    """All six batch files (n images each) plus batches.meta; returns {name: (data, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for seed, name in enumerate((*TRAIN_BATCHES, *TEST_BATCHES)):
        blob, data, labels = files.cifar_batch(n, seed, protocol)
        (folder / name).write_bytes(blob)
        contents[name] = (data, labels)
    if meta:
        names = [f"class_{i}".encode() for i in range(10)]
        (folder / "batches.meta").write_bytes(
            pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=protocol)
        )
    return contents


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_reads_train_and_test_batches(tmp_path, files, protocol):
    contents = write_batches(tmp_path / FOLDER, files, n=4, protocol=protocol)
    train = CIFAR10(tmp_path, train=True, verify=False)
    test = CIFAR10(tmp_path, train=False, verify=False)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (4, 3, 32, 32)
    expected = np.concatenate([contents[n][0] for n in TRAIN_BATCHES]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == sum((contents[n][1] for n in TRAIN_BATCHES), [])
    assert train.classes == [f"class_{i}" for i in range(10)]
    assert (train.num_classes, train.channels) == (10, 3)
    image, label = test[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)


def test_channel_planes_are_red_green_blue(tmp_path):
    # Row layout: 1024 red values, then 1024 green, then 1024 blue.
    row = np.concatenate([np.full(1024, v, np.uint8) for v in (10, 20, 30)])
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": row[None], b"labels": [7]}, protocol=2))
    images, labels = load_batch(path)
    assert images.shape == (1, 3, 32, 32) and labels.tolist() == [7]
    assert [int(images[0, c].mean()) for c in range(3)] == [10, 20, 30]


def test_default_class_names_without_meta(tmp_path, files):
    write_batches(tmp_path / FOLDER, files, meta=False)
    assert CIFAR10(tmp_path, train=False, verify=False).classes == list(CLASSES)


def test_truncated_pickle_names_file(tmp_path, files):
    write_batches(tmp_path / FOLDER, files)
    path = tmp_path / FOLDER / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataFormatError) as err:
        CIFAR10(tmp_path, verify=False)
    assert str(path) in str(err.value) and "--download" in str(err.value)


def test_wrong_shapes_and_keys_are_rejected(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataFormatError, match=r"\(N, 3072\)"):
        load_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DataFormatError, match="b'labels'"):
        load_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(DataFormatError, match="0..9"):
        load_batch(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_foreign_globals_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataFormatError, match="refusing to load"):
        load_batch(path)
    assert not (tmp_path / "pwned").exists()


def test_published_checksums_are_verified(tmp_path, files):
    write_batches(tmp_path / FOLDER, files)
    with pytest.raises(ChecksumError, match="40351d587109b95175f43aff81a1287e"):
        CIFAR10(tmp_path, train=False)  # verify=True by default


def _archive(tmp_path, files, extra: dict[str, bytes] | None = None):
    src = tmp_path / "src"
    contents = write_batches(src / FOLDER, files)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / FOLDER, arcname=FOLDER)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive, contents


def test_archive_is_extracted_when_batches_are_missing(tmp_path, files):
    root = tmp_path / "root"
    root.mkdir()
    archive, contents = _archive(tmp_path, files, extra={"../escaped": b"x", "/abs": b"y"})
    archive.rename(root / archive.name)
    ds = CIFAR10(root, train=False, verify=False)
    np.testing.assert_array_equal(ds.images.numpy().reshape(4, -1), contents["test_batch"][0])
    assert sorted(p.name for p in (root / FOLDER).iterdir()) == sorted(
        [*TRAIN_BATCHES, *TEST_BATCHES, "batches.meta"]
    )
    # Only known names are read out: nothing lands outside the dataset folder.
    assert not (tmp_path / "escaped").exists() and not (root / "escaped").exists()
    assert sorted(p.name for p in root.iterdir()) == [FOLDER, "cifar-10-python.tar.gz"]


def test_corrupt_archive_is_a_clear_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(DataFormatError, match="cifar-10-python.tar.gz.*--download"):
        CIFAR10(tmp_path, verify=False)


def test_missing_dataset_says_how_to_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        CIFAR10(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / FOLDER / "data_batch_1") in msg and "--download" in msg


# --- corrupt, foreign and unreadable files ------------------------------------------------


def _batch_error(path) -> str:
    """load_batch(path) must raise a one-line DataFormatError naming the file and the fix."""
    with pytest.raises(DataFormatError) as err:
        load_batch(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "--download" in msg and "copy the official file" in msg
    return msg


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x89PNG\r\n\x1a\n" + bytes(64),  # a PNG: pickle reads '\x89' as PERSID, a 2-line error
        gzip.compress(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})),
        bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)),
        b"<!DOCTYPE html><html>Not Found</html>",
    ],
    ids=["empty", "png", "gzipped-pickle", "random-bytes", "html"],
)
def test_batch_that_is_not_a_pickle(tmp_path, content):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    assert "not a readable pickle of a CIFAR-10 batch" in _batch_error(path)


@pytest.mark.parametrize("keep", [1, 100, 2000, -1], ids=lambda k: f"keep-{k}")
def test_truncated_batch(tmp_path, files, keep):
    path = tmp_path / "data_batch_1"
    path.write_bytes(files.cifar_batch(4, 0)[0][:keep])
    assert "truncated" in _batch_error(path)


@pytest.mark.parametrize(
    "entry, says",
    [
        ([1, 2, 3], "expected a pickled dict (a CIFAR-10 batch), got list"),
        ("a string", "got str"),
        ({b"batch_label": b"x", b"filenames": []}, "needs the keys b'data' and b'labels'"),
        ({b"data": [[0] * 3072], b"labels": [0]}, "got list"),
        ({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"labels": [0, 1]}, "(2, 3, 32, 32)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "float32"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "must hold 2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0], [1, 2]]}, "inhomogeneous"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1.0]}, "float64"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": None}, "must hold 2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 3]}, "0..9"),
        ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "holds no images"),
    ],
    ids=[
        "list", "str", "no-data-key", "data-list", "data-4d", "data-float", "short-labels",
        "ragged-labels", "float-labels", "labels-none", "negative-label", "empty-batch",
    ],
)  # fmt: skip
def test_pickle_of_something_else(tmp_path, entry, says):
    path = tmp_path / "data_batch_2"
    path.write_bytes(pickle.dumps(entry, protocol=2))
    assert says in _batch_error(path)


def test_corrupt_batch_inside_the_folder_is_named(tmp_path, files):
    write_batches(tmp_path / FOLDER, files)
    path = tmp_path / FOLDER / "test_batch"
    path.write_bytes(pickle.dumps({b"labels": [0]}))
    with pytest.raises(DataFormatError, match="test_batch: a CIFAR-10 batch needs the keys"):
        CIFAR10(tmp_path, train=False, verify=False)


def test_unreadable_batch_is_named(tmp_path, files, monkeypatch):
    import rlgen.data.cifar as cifar_module

    write_batches(tmp_path / FOLDER, files)
    real_open = open

    def no_permission(path, *args, **kwargs):
        if str(path).endswith("test_batch"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cifar_module, "open", no_permission, raising=False)
    with pytest.raises(DataFormatError) as err:
        CIFAR10(tmp_path, train=False, verify=False)
    msg = str(err.value)
    assert str(tmp_path / FOLDER / "test_batch") in msg
    assert "PermissionError" in msg and "check its permissions" in msg


def _damage_tail(offset_from_end):
    def mutate(blob):
        data = bytearray(blob)
        data[len(data) - offset_from_end] ^= 0xFF
        return bytes(data)

    return mutate


def _zip_bytes():
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("data_batch_1", b"x")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mutate",
    [
        _damage_tail(8),  # the gzip CRC32: tarfile alone never reads that far
        _damage_tail(1),  # the gzip length field
        lambda b: b[:-20],  # cut inside the tar's end-of-archive padding
        lambda b: b[: len(b) // 2],
        lambda b: b + b"trailing junk",
        lambda b: gzip.decompress(b),  # a plain .tar under the .tar.gz name
        lambda b: gzip.compress(b"not a tar archive " * 100),
        lambda b: _zip_bytes(),
        lambda b: b"<html><body>Service unavailable</body></html>",
        lambda b: b"",
    ],
    ids=[
        "bad-crc", "bad-length", "cut-padding", "cut-half", "trailing", "plain-tar",
        "gzip-not-tar", "zip", "html", "empty",
    ],
)  # fmt: skip
def test_corrupt_archive_is_named_and_leaves_no_batches(tmp_path, files, mutate):
    root = tmp_path / "root"
    root.mkdir()
    archive, _ = _archive(tmp_path, files)
    (root / archive.name).write_bytes(mutate(archive.read_bytes()))
    with pytest.raises(DataFormatError) as err:
        CIFAR10(root, verify=False)
    msg = str(err.value)
    assert str(root / archive.name) in msg and "--download" in msg and "\n" not in msg
    # Nothing half-extracted stays behind for a later run (with verify=False) to trust.
    assert not any((root / FOLDER).glob("*_batch*"))


def test_archive_without_the_batches(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DataFormatError, match="lacks data_batch_1, .*test_batch"):
        CIFAR10(tmp_path, verify=False)


@pytest.mark.parametrize(
    "meta, says",
    [
        (b"garbage", "not a readable pickle"),
        (pickle.dumps([b"airplane"]), "got list"),
        (pickle.dumps({b"label_names": [b"a", b"b"]}), "list of 10 names"),
        (pickle.dumps({b"num_vis": 3072}), "list of 10 names"),
        (pickle.dumps({b"label_names": [b"\xff\xfe"] * 10}), "UnicodeDecodeError"),
    ],
    ids=["garbage", "list", "two-names", "no-names", "not-utf8"],
)
def test_bad_meta_warns_and_uses_standard_names(tmp_path, files, meta, says):
    write_batches(tmp_path / FOLDER, files)
    path = tmp_path / FOLDER / "batches.meta"
    path.write_bytes(meta)
    with pytest.warns(DataWarning) as record:
        ds = CIFAR10(tmp_path, train=False, verify=False)
    assert ds.classes == list(CLASSES) and len(ds) == 4
    assert len(record) == 1
    msg = str(record[0].message)
    assert str(path) in msg and says in msg and "standard CIFAR-10 class names" in msg
