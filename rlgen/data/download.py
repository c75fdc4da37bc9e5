"""Fetching dataset files: a list of mirrors, a published checksum, an atomic write.

Standard library only (urllib). A download streams into a hidden temporary file beside
the target, hashing as it goes; only a file whose hash matches the published one is
renamed onto the target, so an interrupted or corrupt download never leaves a file
that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from rlgen.data.base import ChecksumError
from rlgen.errors import InputError

USER_AGENT = "rlgen-dataset-downloader/0.1 (python urllib)"
_HASH_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256"}
_CHUNK = 1 << 20


class DownloadError(InputError, OSError):
    """No mirror delivered the file; the message lists each mirror and why it failed."""


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:ab12..."`` or a bare hex digest (algorithm from its length) -> (algo, hex)."""
    if ":" in checksum:
        algorithm, digest = checksum.split(":", 1)
        algorithm = algorithm.lower()
    else:
        digest = checksum
        algorithm = _HASH_BY_LENGTH.get(len(digest), "")
    digest = digest.lower()
    if algorithm not in hashlib.algorithms_available or not digest:
        raise ValueError(
            f"cannot read checksum {checksum!r}: expected 'md5:<hex>', 'sha256:<hex>' "
            "or a bare 32/40/64-character hex digest"
        )
    return algorithm, digest


def file_hash(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def verify_checksum(path: str | os.PathLike, checksum: str) -> None:
    """Raise :class:`ChecksumError` naming the file and both hashes if they differ."""
    algorithm, expected = parse_checksum(checksum)
    actual = file_hash(path, algorithm)
    if actual != expected:
        raise ChecksumError(
            f"{path}: {algorithm} checksum mismatch: expected {expected}, got {actual}. "
            "The file is corrupt or not the official one: delete it and re-run with "
            "--download (download=True), or pass verify=False to use it anyway."
        )


def mirror_urls(mirrors: Sequence[str], filename: str) -> list[str]:
    """One URL per mirror for ``filename`` (mirrors are base URLs, with or without '/')."""
    return [m.rstrip("/") + "/" + filename for m in mirrors]


def download_file(
    urls: str | Sequence[str],
    path: str | os.PathLike,
    checksum: str | None,
    *,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Fetch ``path`` from the first of ``urls`` that delivers it with the right checksum.

    Each mirror is tried in turn; a network error or a checksum mismatch moves on to the
    next. ``checksum`` is ``"md5:<hex>"`` / ``"sha256:<hex>"`` / a bare digest, or None to
    skip verification (only for files with no published hash).
    """
    path = Path(path)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError(f"no URL given to download {path}")
    algorithm, expected = parse_checksum(checksum) if checksum else ("md5", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    mismatches: list[str] = []
    for url in urls:
        if not quiet:
            print(f"Downloading {url} -> {path}", file=sys.stderr)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = _stream(url, out, hashlib.new(algorithm), timeout, quiet)
                out.flush()
                os.fsync(out.fileno())
            if expected is not None and actual != expected:
                mismatches.append(f"{url}: expected {algorithm} {expected}, got {actual}")
                continue
            os.replace(tmp, path)
            return path
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, HTTPError, timeouts, disk errors, malformed URLs, cut connections
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
        finally:
            # Whatever happened (mismatch, error, Ctrl-C), no partial file stays behind.
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    if mismatches:  # a wrong file is the more telling failure: report it as such
        raise ChecksumError(
            f"{path.name}: no mirror delivered a file with the published checksum "
            f"(nothing was written to {path}):\n  " + "\n  ".join(mismatches + failures)
        )
    raise DownloadError(
        f"could not download {path.name} into {path.parent} (nothing was written); tried:\n  "
        + "\n  ".join(failures)
        + f"\nWithout internet access, fetch the file elsewhere and copy it to {path}."
    )


def _stream(url: str, out, hasher, timeout: float, quiet: bool) -> str:
    """Copy ``url`` into the open file ``out``; returns the hex digest of what was read."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        show = not quiet and sys.stderr.isatty()
        with tqdm(total=total, unit="B", unit_scale=True, disable=not show, leave=False) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                hasher.update(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received != total:
        raise DownloadError(f"connection closed after {received} of {total} bytes")
    return hasher.hexdigest()


def write_atomic(path: str | os.PathLike, source) -> Path:
    """Copy the binary file object ``source`` to ``path`` through a temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for block in iter(lambda: source.read(_CHUNK), b""):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    return path
