"""Downloads: checksums, mirrors, atomic writes; served from file:// and a 127.0.0.1 server."""

from __future__ import annotations

import hashlib
import re
import tarfile

import numpy as np
import pytest

from rlgen.data import (
    CIFAR10,
    MNIST,
    ChecksumError,
    DownloadError,
    FashionMNIST,
    download_file,
    file_hash,
    verify_checksum,
)
from rlgen.data import cifar as cifar_module
from rlgen.data.download import parse_checksum

ABC_MD5 = "900150983cd24fb0d6963f7d28e17f72"
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def leftovers(folder):
    """Hidden temporary files a download might have left behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_hashes_and_checksum_parsing(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert file_hash(path) == ABC_MD5 and file_hash(path, "sha256") == ABC_SHA256
    assert parse_checksum(ABC_MD5) == ("md5", ABC_MD5)
    assert parse_checksum("SHA256:" + ABC_SHA256.upper()) == ("sha256", ABC_SHA256)
    verify_checksum(path, "sha256:" + ABC_SHA256)
    with pytest.raises(ValueError, match="cannot read checksum"):
        parse_checksum("abc123")
    with pytest.raises(ChecksumError) as err:
        verify_checksum(path, "0" * 32)
    assert str(path) in str(err.value) and "0" * 32 in str(err.value) and ABC_MD5 in str(err.value)


def test_published_checksums_are_well_formed():
    # A typo in a hard-coded hash would make every real download fail.
    tables = [MNIST.checksums, FashionMNIST.checksums, cifar_module.CHECKSUMS]
    digests = [v for t in tables for v in t.values()] + [cifar_module.ARCHIVE_CHECKSUM]
    assert all(re.fullmatch(r"md5:[0-9a-f]{32}", d) for d in digests)
    assert len(set(digests)) == len(digests)


def test_download_from_file_url(tmp_path):
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(b"abc")
    dest = tmp_path / "out" / "blob.bin"
    assert download_file(src.as_uri(), dest, "md5:" + ABC_MD5, quiet=True) == dest
    assert dest.read_bytes() == b"abc" and leftovers(dest.parent) == []


def test_mirrors_are_tried_in_order(tmp_path, http_server):
    (http_server.dir / "good.bin").write_bytes(b"abc")
    (http_server.dir / "bad.bin").write_bytes(b"abd")
    dest = tmp_path / "dl" / "file.bin"
    urls = [
        f"{http_server.url}/missing.bin",  # 404
        f"{http_server.url}/bad.bin",  # wrong content
        f"{http_server.url}/good.bin",
    ]
    download_file(urls, dest, ABC_MD5, quiet=True)
    assert dest.read_bytes() == b"abc" and leftovers(dest.parent) == []


def test_corrupt_download_is_rejected_and_leaves_nothing(tmp_path, http_server):
    (http_server.dir / "file.bin").write_bytes(b"tampered")
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(ChecksumError) as err:
        download_file(f"{http_server.url}/file.bin", dest, ABC_MD5, quiet=True)
    msg = str(err.value)
    assert "file.bin" in msg and ABC_MD5 in msg and hashlib.md5(b"tampered").hexdigest() in msg
    assert list(dest.parent.iterdir()) == []


def test_cut_connection_and_unreachable_mirrors(tmp_path, http_server):
    (http_server.dir / "file.bin").write_bytes(b"abc")
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(DownloadError) as err:
        download_file(
            [f"{http_server.url}/truncated/file.bin", f"{http_server.url}/nothing-here"],
            dest,
            ABC_MD5,
            quiet=True,
        )
    assert "truncated/file.bin" in str(err.value) and "404" in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_existing_file_survives_a_failed_download(tmp_path, http_server):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"previous")
    (http_server.dir / "file.bin").write_bytes(b"tampered")
    with pytest.raises(ChecksumError):
        download_file(f"{http_server.url}/file.bin", dest, ABC_MD5, quiet=True)
    assert dest.read_bytes() == b"previous"


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST])
def test_dataset_download_over_loopback(tmp_path, http_server, files, monkeypatch, cls):
    arrays = files.fake_mnist(http_server.dir, n_train=6, n_test=3, gz=True)
    published = {
        name: "md5:" + file_hash(http_server.dir / name)
        for name in (f"{stem}.gz" for stem in arrays)
    }
    monkeypatch.setattr(cls, "checksums", published)
    monkeypatch.setattr(cls, "mirrors", [f"{http_server.url}/gone/", http_server.url])
    ds = cls(tmp_path / "data", train=True, download=True)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    folder = tmp_path / "data" / cls.folder
    # Only the requested split is fetched; later loads use the files (verified again).
    assert sorted(p.name for p in folder.iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert len(cls(tmp_path / "data", train=True)) == 6


def test_dataset_download_with_wrong_content_is_rejected(tmp_path, http_server, files):
    files.fake_mnist(http_server.dir, gz=True)  # not the official bytes
    with pytest.raises(ChecksumError, match="f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        MNIST(tmp_path, download=True, mirrors=[f"{http_server.url}/gone", http_server.url])
    assert list((tmp_path / "mnist").iterdir()) == []


def test_cifar_archive_download_and_extraction(tmp_path, files, monkeypatch):
    www = tmp_path / "www"
    staging = www / cifar_module.FOLDER
    staging.mkdir(parents=True)
    for seed, name in enumerate((*cifar_module.TRAIN_BATCHES, *cifar_module.TEST_BATCHES)):
        (staging / name).write_bytes(files.cifar_batch(3, seed)[0])
    archive = www / cifar_module.ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname=cifar_module.FOLDER)
    monkeypatch.setattr(CIFAR10, "archive_checksum", "md5:" + file_hash(archive))
    monkeypatch.setattr(
        CIFAR10,
        "checksums",
        {p.name: "md5:" + file_hash(p) for p in staging.iterdir()},
    )
    root = tmp_path / "data"
    ds = CIFAR10(root, train=True, download=True, mirrors=[www.as_uri()])
    assert ds.images.shape == (15, 3, 32, 32)
    assert (root / cifar_module.ARCHIVE).is_file()
    assert len(CIFAR10(root, train=False)) == 3  # extracted batches, verified, no download


def test_download_flag_repairs_a_corrupt_local_copy(tmp_path, http_server, files, monkeypatch):
    arrays = files.fake_mnist(http_server.dir, n_train=6, n_test=3, gz=True)
    published = {f"{s}.gz": "md5:" + file_hash(http_server.dir / f"{s}.gz") for s in arrays}
    monkeypatch.setattr(MNIST, "checksums", published)
    files.fake_mnist(tmp_path / "mnist", n_train=6, n_test=3, gz=True, seed=9)  # wrong bytes
    with pytest.raises(ChecksumError, match="--download"):
        MNIST(tmp_path, train=False)
    ds = MNIST(tmp_path, train=False, download=True, mirrors=[http_server.url])
    np.testing.assert_array_equal(ds.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert leftovers(tmp_path / "mnist") == []


def test_corrupt_cifar_batch_is_extracted_again_from_the_archive(tmp_path, files, monkeypatch):
    staging = tmp_path / "staging" / cifar_module.FOLDER
    staging.mkdir(parents=True)
    for seed, name in enumerate((*cifar_module.TRAIN_BATCHES, *cifar_module.TEST_BATCHES)):
        (staging / name).write_bytes(files.cifar_batch(3, seed)[0])
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / cifar_module.ARCHIVE, "w:gz") as tar:
        tar.add(staging, arcname=cifar_module.FOLDER)
    monkeypatch.setattr(
        CIFAR10, "archive_checksum", "md5:" + file_hash(root / cifar_module.ARCHIVE)
    )
    monkeypatch.setattr(
        CIFAR10, "checksums", {p.name: "md5:" + file_hash(p) for p in staging.iterdir()}
    )
    assert len(CIFAR10(root, train=False)) == 3  # first use extracts
    batch = root / cifar_module.FOLDER / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-10] + b"\x00" * 10)  # silent corruption
    assert len(CIFAR10(root, train=False)) == 3  # repaired from the local archive, no download
    assert file_hash(batch) == file_hash(staging / "test_batch")
