"""What the benchmark scripts share: the precisions they time, autocast for one, a device sync
around timed steps, and parsing of comma-separated choices."""

from __future__ import annotations

import argparse
import contextlib

import torch

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (one of PRECISIONS); fp32 runs without one."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def parse_list(p: argparse.ArgumentParser, value: str, allowed, flag: str) -> list[str]:
    """A comma-separated subset of ``allowed``, or a usage error naming what is allowed."""
    items = [v for v in value.split(",") if v]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        p.error(f"{flag}: unknown {bad or value!r}; expected a comma-separated subset of "
                f"{list(allowed)}")
    return items
