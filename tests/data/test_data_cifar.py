"""CIFAR-10 reading from pickles in the official format, archive extraction, safety."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from rlgen.data import CIFAR10, ChecksumError, DataFormatError, DatasetNotFoundError, load_batch
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
