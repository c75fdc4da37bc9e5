"""RunLogger: the one object every trainer logs through.

It writes TensorBoard events (scalars, images, histograms, text, hparams), a ``metrics.jsonl``
with the same scalars (easy to read back without TensorBoard), the run's ``config.json``, and
drives the console progress: a bar with rate and ETA on a terminal; off a terminal (a cluster
job's log file, ``nohup``) one plain line every ``log_interval_s`` seconds (step / total, rate,
ETA and the figures the trainer shows), so a job log visibly moves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlgen.data.images import make_grid


def make_run_dir(task: str, name: str = "run", seed: int = 0, root: str | Path = "runs") -> Path:
    """``runs/{task}__{name}__{seed}__{unixtime}`` (CleanRL's naming), made unique if taken."""
    base = Path(root) / f"{task}__{name}__{seed}__{int(time.time())}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}_{i}"), i + 1
    return path


def config_to_dict(config: Any) -> dict:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    raise TypeError(f"config must be a dataclass instance or a dict, got {type(config).__name__}")


def _hparam_value(v: Any) -> Any:
    if isinstance(v, bool | int | float | str):
        return v
    if v is None:
        return "None"
    return str(v)


def _drop_records_after(path: Path, step: int) -> None:
    """Keep the ``metrics.jsonl`` records up to ``step``: a resumed run rewrites what the run
    it resumes logged after its checkpoint (as TensorBoard's ``purge_step`` does for events)."""
    if not path.is_file():
        return
    from rlgen.checkpoint import atomic_write

    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a killed process
            continue
        if record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write(path, lambda f: f.write("".join(kept).encode()))


def _duration(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``4000`` -> ``1h06m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RunLogger:
    """TensorBoard + metrics.jsonl + config.json + progress bar for one run directory."""

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        task: str = "run",
        name: str = "run",
        seed: int = 0,
        config: Any = None,
        total_steps: int | None = None,
        progress: bool | None = None,
        root: str | Path = "runs",
        initial_step: int = 0,
        description: str | None = None,
        log_interval_s: float = 30.0,
    ):
        # Imported here: tensorboard pulls in a lot and only loggers need it.
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir) if run_dir else make_run_dir(task, name, seed, root)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config_to_dict(config)
        if config is not None:
            config_text = json.dumps(self.config, indent=2, default=str)
            (self.run_dir / "config.json").write_text(config_text)
        # On resume, events written after the checkpoint (by the run that crashed) are purged so
        # TensorBoard does not show two curves over the same steps.
        self.writer = SummaryWriter(log_dir=str(self.run_dir),
                                    purge_step=initial_step if initial_step > 0 else None)
        if initial_step > 0:
            _drop_records_after(self.run_dir / "metrics.jsonl", initial_step)
        self._metrics = (self.run_dir / "metrics.jsonl").open("a", buffering=1)
        self._last_step = initial_step
        self._bar = None
        self.description = description or task
        self.total_steps = total_steps
        if progress is None:
            progress = sys.stdout.isatty()
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                             desc=self.description, dynamic_ncols=True, smoothing=0.05)
        # Off a terminal: a plain line every log_interval_s (0 or less: none).
        self.log_interval_s = log_interval_s
        self._line_start = (time.monotonic(), initial_step)
        self._last_line = time.monotonic()
        self._closed = False

    # -- scalars -------------------------------------------------------------------------
    def scalar(self, tag: str, value: float | torch.Tensor, step: int) -> None:
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        self.writer.add_scalar(tag, value, step)
        record = {"step": int(step), "tag": tag, "time": round(time.time(), 3)}
        record["value"] = value if math.isfinite(value) else str(value)
        self._metrics.write(json.dumps(record) + "\n")

    def scalars(self, values: dict[str, float | torch.Tensor], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    # -- media ---------------------------------------------------------------------------
    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """One ``(C, H, W)`` image, float in [0, 1] or uint8."""
        if image.dtype != torch.uint8:
            image = image.detach().float().clamp(0, 1)
        self.writer.add_image(tag, image.cpu(), step, dataformats="CHW")

    def image_grid(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        """``(N, C, H, W)`` images in [0, 1] tiled into one grid image."""
        if images.dtype == torch.uint8:
            images = images.float() / 255
        self.image(tag, make_grid(images, nrow=nrow), step)

    def histogram(self, tag: str, values: torch.Tensor | np.ndarray, step: int) -> None:
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu()
        self.writer.add_histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def hparams(self, metrics: dict[str, float]) -> None:
        """The config as TensorBoard hparams, next to the run's final ``metrics``."""
        hparams = {k: _hparam_value(v) for k, v in self.config.items()}
        clean = {f"hparams/{k}" if "/" not in k else k: float(v) for k, v in metrics.items()}
        self.writer.add_hparams(hparams, clean, run_name=".")

    # -- progress ------------------------------------------------------------------------
    def progress(self, step: int, **postfix: Any) -> None:
        """Move the progress to absolute ``step`` and show ``postfix`` (e.g. SPS, return):
        the bar on a terminal, else a plain line when ``log_interval_s`` has passed."""
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
        if self._bar is not None:
            self._bar.update(step - self._last_step)
            if shown:
                self._bar.set_postfix(shown, refresh=False)
        elif self.log_interval_s > 0 and time.monotonic() - self._last_line >= self.log_interval_s:
            self.print(self.progress_line(step, shown))
            self._last_line = time.monotonic()
        self._last_step = step

    def progress_line(self, step: int, shown: dict[str, Any]) -> str:
        """``vae 1200/4680 (25.6%) 41.3 step/s ETA 1m24s elbo=-120.3``: rate and ETA over
        the steps of this process (a resumed run counts from where it resumed)."""
        t0, step0 = self._line_start
        elapsed = time.monotonic() - t0
        rate = (step - step0) / elapsed if elapsed > 0 else 0.0
        parts = [self.description]
        if self.total_steps:
            parts.append(f"{step}/{self.total_steps} ({100 * step / self.total_steps:.1f}%)")
        else:
            parts.append(f"step {step}")
        parts.append(f"{rate:.4g} step/s")
        if self.total_steps and rate > 0:
            parts.append(f"ETA {_duration((self.total_steps - step) / rate)}")
        parts += [f"{k}={v}" for k, v in shown.items()]
        return " ".join(parts)

    def print(self, message: str) -> None:
        """Print without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    # -- lifetime ------------------------------------------------------------------------
    def flush(self) -> None:
        self.writer.flush()
        self._metrics.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        self.writer.close()
        self._metrics.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
