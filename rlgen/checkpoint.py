"""Checkpoints that survive crashes and resume everything a run needs.

A checkpoint is a plain dict of tensors, numbers, strings and lists (state_dicts, counters,
``dataclasses.asdict(config)``, ``rng_state()``), so it loads with ``weights_only=True``: a
file from elsewhere cannot run code when it is opened. Writes go to a temporary file in the
same directory, are flushed to disk and renamed over the target, so a crash mid-write leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlgen.errors import InputError


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that is missing, truncated, or not an rlgen/torch checkpoint."""


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(file_object)`` on a temp file next to ``path``, fsync, then rename onto it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Atomically write ``state`` with ``torch.save``."""
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint state must be a dict, got {type(state).__name__}")
    return atomic_write(path, lambda f: torch.save(state, f))


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the newest ``ckpt_*.pt`` of a run directory (or of
    its ``checkpoints/`` folder); a clear ``CheckpointError`` when there is none."""
    path = Path(path)
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        latest = CheckpointManager(directory).latest()
        if latest is None:
            raise CheckpointError(f"no checkpoint (ckpt_*.pt) found in directory {path}")
        return latest
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = True
) -> dict:
    """Load a checkpoint dict; a missing, truncated or foreign file raises ``CheckpointError``."""
    path = find_checkpoint(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated or not a torch checkpoint file "
            f"({path.stat().st_size} bytes); the previous checkpoint in that directory, if any, "
            "is intact"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain data, so it is not an rlgen "
            "checkpoint; load it with weights_only=False only if you trust its source"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is corrupt ({type(exc).__name__}: {first_line})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not an rlgen checkpoint (a dict of states)"
        )
    return state


def rng_state(device: str | torch.device | None = None) -> dict:
    """Python, numpy and torch RNG states as tensors/lists (loadable with weights_only=True).

    With a CUDA ``device``, also that device's generator (only this process's GPU: under
    torchrun every process has its own, and they are kept in step)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def set_rng_state(state: dict, device: str | torch.device | None = None) -> None:
    """Restore what ``rng_state`` captured (the CUDA generator onto ``device``)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((
        "MT19937",
        np_state["keys"].numpy().astype(np.uint32),
        np_state["pos"],
        np_state["has_gauss"],
        np_state["cached_gaussian"],
    ))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), torch.device(device))


class CheckpointManager:
    """``ckpt_{step:09d}.pt`` files in one directory, keeping the newest ``keep_last``."""

    PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")

    def __init__(self, directory: str | Path, keep_last: int | None = 3):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir()
                 if (m := self.PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict, step: int) -> Path:
        """Write ``ckpt_{step}.pt`` atomically, then drop the oldest beyond ``keep_last``. A
        failed write (disk full, read-only directory) raises ``CheckpointError`` naming the
        directory and leaves every earlier checkpoint as it was."""
        try:
            path = save_checkpoint(state, self.directory / f"ckpt_{step:09d}.pt")
        except OSError as exc:
            previous = self.latest()
            kept = f"the previous checkpoint {previous} is intact" if previous else \
                "no earlier checkpoint exists"
            raise CheckpointError(
                f"cannot write the step-{step} checkpoint to {self.directory} "
                f"({type(exc).__name__}: {exc}); {kept}"
            ) from exc
        if self.keep_last is not None:
            for old in self.checkpoints()[: -self.keep_last]:
                old.unlink(missing_ok=True)
        return path

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files of writes that never finished (``.<name>.<random>.tmp``
        from ``atomic_write``: a process killed mid-save); returns what was removed."""
        if not self.directory.is_dir():
            return []
        stale = [p for p in self.directory.glob(".*.tmp") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict | None:
        latest = self.latest()
        return None if latest is None else load_checkpoint(latest, map_location)
