"""The one training run every rlgen trainer uses: run directory, resume, checkpoints, stop
signals, logging, hparams, and torchrun / DistributedDataParallel, handled here once.

A trainer builds its model, optimizer and data, hands the run *what to save* (anything with
``state_dict`` / ``load_state_dict``: modules, optimizers, ``Precision`` objects, small state
objects of its own) and writes its loop; the run never inspects a model::

    with TrainingRun("vae", config) as run:       # resume, device, seeds, process group
        config = run.config                        # with --resume: the saved config + new flags
        model = VAE(...).to(run.device)
        optimizer, precision = torch.optim.Adam(model.parameters()), Precision(...)
        data = TensorBatches(images, None, config.batch_size, **run.shard_args())
        run.start(total_steps, {"model": model, "optimizer": optimizer, "precision": precision},
                  meta={"kind": "vae", "model_config": model.model_config})
        net = run.prepare(model)                   # device, channels_last, DDP, compile
        for step, (x, _) in run.steps(data):       # Ctrl-C / SIGTERM, periodic checkpoints
            ...                                    # one optimizer update
            if run.should(step, config.log_every):
                run.log(step, {"train/loss": loss})  # averaged over processes, rank 0 writes
        return run.finish(step, final_metrics)     # last checkpoint, hparams, summary line

What it does for every trainer:
- **Run directory** ``runs/{task}__{name}__{seed}__{unixtime}`` (CleanRL's naming) unless
  ``--run-dir`` is given; a resumed run keeps writing into the directory it resumes from.
- **Resume** from a run directory (its newest checkpoint) or a checkpoint file: the saved config
  with the flags given now laid over it (a longer ``--epochs``), except the fields the config
  class lists in ``fixed_on_resume`` (what defines the model and the data order); then every
  state object, the RNG states and the step counter are restored, so a resumed run computes
  what an uninterrupted one would.
- **Checkpoints** ``{run_dir}/checkpoints/ckpt_{step}.pt``, atomic, the newest
  ``keep_checkpoints`` kept: ``{"format": "rlgen.run/1", "task", "config", "step", "meta",
  "state": {name: state_dict}, "rng", "world_size"}`` (``meta``: what a loader needs to rebuild
  the model without the trainer). A failed write stops the run naming the directory and keeps
  the previous checkpoint.
- **Ctrl-C or SIGTERM** (what cluster schedulers send before a kill): the current step finishes,
  a checkpoint is written, and ``KeyboardInterrupt`` ends the run; a second Ctrl-C stops at
  once. A NaN / inf loss in fp32 or bf16 stops the run with the step named and saves nothing.
- **Logging**: TensorBoard + ``metrics.jsonl`` + ``config.json`` (``RunLogger``), a progress bar
  on a terminal or a plain line every ``--log-interval-s`` seconds off one, throughput
  (``charts/{items}_per_s``), the config as hparams beside the final metrics, a closing summary.
- **torchrun / DDP**: under ``torchrun --nproc-per-node N`` each process joins the group (NCCL on
  CUDA with one GPU per local rank, gloo on CPU; collectives time out after
  ``--dist-timeout-s``), ``prepare`` wraps modules in DDP (``--sync-batchnorm`` on GPUs),
  ``shard_args`` gives each process its block of every global batch, ``log`` averages metrics
  over processes, and only rank 0 writes files or prints. ``--batch-size`` is the global batch.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from rlgen import distributed
from rlgen.errors import InputError

PrecisionName = Literal["32", "16-mixed", "bf16-mixed"]
CHECKPOINT_FORMAT = "rlgen.run/1"


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict, /) -> Any: ...


# -- the shared config -------------------------------------------------------------------------
def check(ok: bool, message: str) -> None:
    """Config validation: ``InputError(message)`` unless ``ok`` (one line from the CLI)."""
    if not ok:
        raise InputError(message)


@dataclass
class TrainConfig:
    """Fields every gradient trainer shares; a trainer's config adds only its own."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = ("seed", "batch_size", "precision")

    device: str = "auto"
    """cpu, cuda, cuda:1, mps or auto (cuda, else mps, else cpu)"""
    precision: PrecisionName = "32"
    """numeric precision: 32, 16-mixed (fp16 autocast + loss scaling) or bf16-mixed"""
    seed: int = 0
    """random seed (weights, batch order, noise)"""
    run_dir: str | None = None
    """run directory (None: runs/{task}__{name}__{seed}__{time}, or the resumed run's)"""
    resume: str | None = None
    """run directory (its newest checkpoint) or checkpoint file to continue from; flags given
    with it override the saved config, except those that define the model and data order"""
    epochs: int = 10
    """passes over the training split"""
    max_steps: int | None = None
    """stop after this many optimizer steps in total (None: run all --epochs)"""
    batch_size: int = 128
    """examples per optimizer step, summed over all processes under torchrun"""
    log_every: int = 50
    """log training scalars every this many steps"""
    sample_every: int = 500
    """write samples / pictures every this many steps (0: only at the end)"""
    checkpoint_every: int = 1000
    """save a checkpoint every this many steps (0: only at the end)"""
    keep_checkpoints: int = 3
    """number of newest checkpoints kept in {run_dir}/checkpoints"""
    log_interval_s: float = 30.0
    """off a terminal (a job log), print a progress line every this many seconds (0: never)"""
    channels_last: bool = False
    """use the channels_last memory format (faster convolutions on recent GPUs)"""
    compile: bool = False
    """wrap the networks with torch.compile"""
    num_workers: int = 0
    """DataLoader worker processes (only with a DataLoader-based loader)"""
    sync_batchnorm: bool = False
    """under torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)"""
    dist_timeout_s: float = 600.0
    """under torchrun: seconds a collective may wait for the other processes before the job
    fails (a dead or hung process ends the job instead of hanging it)"""

    def __post_init__(self) -> None:
        check(self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}")
        check(self.epochs > 0, f"--epochs must be > 0, got {self.epochs}")
        check(self.max_steps is None or self.max_steps > 0,
              f"--max-steps must be > 0 (or omitted), got {self.max_steps}")
        check(self.precision in ("32", "16-mixed", "bf16-mixed"),
              f"--precision must be one of 32, 16-mixed, bf16-mixed, got {self.precision!r}")
        check(self.log_every > 0, f"--log-every must be > 0, got {self.log_every}")
        check(self.sample_every >= 0, f"--sample-every must be >= 0, got {self.sample_every}")
        check(self.checkpoint_every >= 0,
              f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1,
              f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        check(self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}")
        check(self.dist_timeout_s > 0,
              f"--dist-timeout-s must be > 0, got {self.dist_timeout_s}")


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``epochs * steps_per_epoch``, capped by max_steps."""
    steps = config.epochs * steps_per_epoch
    return min(steps, config.max_steps) if config.max_steps is not None else steps


def resume_config(config: Any, saved: Mapping[str, Any]) -> Any:
    """The saved config with the fields ``config`` sets to non-default values laid over it.

    A field listed in the class's ``fixed_on_resume`` may not change (it defines what was
    learned); ``resume`` is this call's, and ``run_dir`` too (a run moved or copied elsewhere
    keeps writing where it is resumed from, unless ``--run-dir`` is given now). Setting a field
    back to its default on resume is not seen (it looks like "not given"): give the saved run's
    value or start a new run.
    """
    cls = type(config)
    defaults = cls()
    fixed = getattr(cls, "fixed_on_resume", ())
    merged = {k: v for k, v in saved.items() if k != "run_dir"}
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if f.name == "resume" or value == getattr(defaults, f.name):
            continue
        if f.name in fixed and f.name in saved and value != saved[f.name]:
            raise InputError(
                f"--{f.name.replace('_', '-')} cannot change when resuming (the run used "
                f"{saved[f.name]!r}, got {value!r}); start a new run for that"
            )
        merged[f.name] = value
    merged["resume"] = config.resume
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in merged.items() if k in known})


# -- stop signals ------------------------------------------------------------------------------
class StopSignals:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step; a second
    Ctrl-C stops at once. Installed only in the main thread (signals are delivered there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class RunStopped(KeyboardInterrupt):
    """Raised after a requested stop was checkpointed (the CLI exits with status 130)."""


# -- the run ---------------------------------------------------------------------------------
class TrainingRun:
    """Everything around a training loop, so the loop itself reads top to bottom.

    ``task`` names the trainer (``vae``, ``dqn``, ...); ``name`` the second part of the run
    directory (default ``config.dataset``). ``distributed=False`` for trainers that run in one
    process (DQN): under torchrun they refuse with a clear error. The interval arguments
    default to the config's ``checkpoint_every`` / ``keep_checkpoints`` / ``log_interval_s``.
    """

    def __init__(
        self,
        task: str,
        config: Any,
        *,
        name: str | None = None,
        distributed: bool = True,
        progress: bool | None = None,
        description: str | None = None,
        checkpoint_every: int | None = None,
        keep_checkpoints: int | None = None,
        log_interval_s: float | None = None,
    ):
        self.task = task
        self.config = config
        self.name = name
        self.supports_distributed = distributed
        self.progress_enabled = progress
        self.description = description or task
        self.checkpoint_every = _first(checkpoint_every, getattr(config, "checkpoint_every", 0))
        self.keep_checkpoints = _first(keep_checkpoints, getattr(config, "keep_checkpoints", 3))
        self.log_interval_s = _first(log_interval_s, getattr(config, "log_interval_s", 30.0))
        self.resumed: dict[str, Any] | None = None  # the checkpoint a resumed run starts from
        self.resume_path: Path | None = None
        self.start_step = 0
        self.total_steps = 0
        self.state: dict[str, Stateful] = {}
        self.meta: dict[str, Any] = {}
        self.logger = None
        self.checkpoints = None
        self.last_checkpoint: Path | None = None
        self.run_dir: Path | None = None
        self._last_saved_step = -1
        self._last_step = 0
        self._current_step: int | None = None
        self._items_per_step: int | None = None
        self._rate_step = 0
        self._items_name = "images"
        self._stop = StopSignals()
        self._stop_agreement: distributed.FlagAgreement | None = None
        self._owns_process_group = False
        self._deterministic_before = torch.are_deterministic_algorithms_enabled()
        self._t0, self._t0_step = time.perf_counter(), 0

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> TrainingRun:
        from rlgen.checkpoint import find_checkpoint, load_checkpoint
        from rlgen.runtime import resolve_device, seed_everything

        if distributed.is_launched() and not self.supports_distributed:
            raise InputError(
                f"{self.task} trains in one process; it cannot run under torchrun "
                f"(WORLD_SIZE={distributed.world_size() if distributed.is_initialized() else '>1'})"
            )
        if getattr(self.config, "resume", None):
            self.resume_path = find_checkpoint(self.config.resume)
            self.resumed = load_checkpoint(self.resume_path, map_location="cpu")
            self._check_resumable(self.resumed)
            self.config = resume_config(self.config, self.resumed["config"])
        self.device = resolve_device(getattr(self.config, "device", "auto"))
        if distributed.is_launched():
            self._owns_process_group = not distributed.is_initialized()
            self.device = distributed.init_distributed(
                self.device, timeout_s=getattr(self.config, "dist_timeout_s", 600.0))
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        seed_everything(self.config.seed,
                        deterministic=bool(getattr(self.config, "deterministic", False)))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        from rlgen.runtime import NonFiniteLossError

        self._stop.restore()
        if self.logger is not None:
            self.logger.close()
        torch.use_deterministic_algorithms(self._deterministic_before)
        if self._owns_process_group:
            if exc is None:
                # Every process has finished its collectives before any tears its links down
                # (a process leaving early can make gloo abort the others at exit).
                distributed.barrier()
            distributed.cleanup()
        if isinstance(exc, NonFiniteLossError) and self._current_step is not None:
            last = f"; the last checkpoint is {self.last_checkpoint}" if self.last_checkpoint \
                else ""
            raise NonFiniteLossError(f"{self.task} stopped at step {self._current_step}: {exc}; "
                                     f"no checkpoint of this state was written{last}") from exc

    def _check_resumable(self, state: dict) -> None:
        from rlgen.checkpoint import CheckpointError

        where = f"--resume {self.resume_path}"
        if state.get("format") != CHECKPOINT_FORMAT or "state" not in state:
            raise CheckpointError(f"{where} is not an rlgen training checkpoint (format "
                                  f"{state.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
        if state.get("task") != self.task:
            raise CheckpointError(f"{where} holds a {state.get('task')!r} run, not a "
                                  f"{self.task!r} one; use `rlgen train {state.get('task')}`")

    def start(
        self,
        total_steps: int,
        state: Mapping[str, Stateful],
        *,
        meta: Mapping[str, Any] | None = None,
        items_per_step: int | None = None,
        items_name: str = "images",
    ) -> int:
        """Restore ``state`` when resuming, open the run directory and the logger, install the
        stop handler; returns the step to start from. ``items_per_step`` (the global batch)
        adds ``charts/{items_name}_per_s`` to every ``log``."""
        from rlgen.checkpoint import CheckpointManager
        from rlgen.logger import RunLogger, make_run_dir

        self.total_steps = int(total_steps)
        self.state = dict(state)
        self.meta = dict(meta or {})
        self._items_per_step, self._items_name = items_per_step, items_name
        if self.resumed is not None:
            self._restore(self.resumed)
        run_dir = self._run_dir(make_run_dir)
        self.run_dir = Path(_broadcast(str(run_dir)))
        if self.is_main:
            self.checkpoints = CheckpointManager(self.run_dir / "checkpoints",
                                                 keep_last=self.keep_checkpoints)
            self.checkpoints.remove_partial_writes()  # left by a process killed mid-save
            self.logger = RunLogger(
                self.run_dir, task=self.task, name=self._name(), seed=self.config.seed,
                config=self.config, total_steps=self.total_steps,
                progress=self.progress_enabled, initial_step=self.start_step,
                description=self.description, log_interval_s=self.log_interval_s,
            )
        self._stop.install()
        self._stop_agreement = distributed.FlagAgreement() if self.world_size > 1 else None
        self._t0, self._t0_step = time.perf_counter(), self.start_step
        self._last_step = self._rate_step = self.start_step
        return self.start_step

    def _name(self) -> str:
        name = self.name or getattr(self.config, "dataset", None) or "run"
        return str(name).replace("/", "-")

    def _run_dir(self, make_run_dir: Any) -> Path:
        if getattr(self.config, "run_dir", None):
            return Path(self.config.run_dir)
        if self.resume_path is not None:
            # .../run_dir/checkpoints/ckpt_X.pt -> keep writing into the resumed run
            parent = self.resume_path.parent
            return parent.parent if parent.name == "checkpoints" else parent
        return make_run_dir(self.task, name=self._name(), seed=self.config.seed)

    def _restore(self, saved: dict) -> None:
        from rlgen.checkpoint import CheckpointError, set_rng_state

        missing = sorted(set(self.state) - set(saved["state"]))
        if missing:
            raise CheckpointError(f"--resume {self.resume_path}: no saved state for {missing} "
                                  f"(it holds {sorted(saved['state'])})")
        for key, value in self.meta.items():
            if key in saved.get("meta", {}) and saved["meta"][key] != value:
                raise InputError(
                    f"--resume {self.resume_path}: the checkpoint's {key} {saved['meta'][key]} "
                    f"differs from this run's {value}; use the same model options"
                )
        for key, obj in self.state.items():
            if isinstance(obj, torch.optim.Optimizer):
                _load_keeping_hyperparameters(obj, saved["state"][key])
            else:
                obj.load_state_dict(saved["state"][key])
        set_rng_state(saved["rng"], self.device)
        self.start_step = int(saved["step"])

    # -- modules and data ----------------------------------------------------------------------
    def prepare(self, module: nn.Module, *, channels_last: bool | None = None,
                compile: bool | None = None) -> nn.Module:
        """``module`` on the run's device, in channels_last / DDP / torch.compile as configured.

        Returns the module to call in the loop; keep the original for ``state_dict`` (the
        optimizer already holds its parameters). Call after ``start`` (a resumed module is
        restored first, then DDP starts every process from rank 0's weights).
        """
        channels_last = _first(channels_last, getattr(self.config, "channels_last", False))
        compile = _first(compile, getattr(self.config, "compile", False))
        module = module.to(self.device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.world_size > 1 and any(p.requires_grad for p in module.parameters()):
            module = distributed.wrap_ddp(module, self.device,
                                          bool(getattr(self.config, "sync_batchnorm", False)))
        if compile:
            module = torch.compile(module)
        return module

    def shard_args(self) -> dict[str, Any]:
        """Keyword arguments of the batch loaders (``rlgen.data.batches``): seed, device and
        this process's share of every global batch."""
        return {"seed": self.config.seed, "device": self.device, "rank": self.rank,
                "world_size": self.world_size}

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor drawn for the global batch (noise, latents): every
        process draws the same numbers, so a step does not depend on the process count."""
        return distributed.shard_rows(x)

    # -- the loop ------------------------------------------------------------------------------
    def steps(self, batches: Any) -> Iterator[tuple[int, Any]]:
        """``(step, batch)`` for the steps still to run: ``step`` numbers the update about to
        be made (``start_step + 1 .. total_steps``). After each step's body: the periodic
        checkpoint and the stop check (``end_of_step``)."""
        step = self.start_step
        if step >= self.total_steps:
            return
        for batch in batches.batches(self.start_step):
            step += 1
            self._current_step = step
            yield step, batch
            self.end_of_step(step)
            if step >= self.total_steps:
                return

    def end_of_step(self, step: int) -> None:
        """Checkpoint when ``step`` crossed a multiple of ``checkpoint_every``; on a stop
        request (agreed by all processes) checkpoint and raise ``RunStopped``. Loops that do
        not use ``steps`` (DQN's environment-step loop) call this once per iteration."""
        previous, self._last_step = self._last_step, step
        self._current_step = step
        every = self.checkpoint_every
        if every and step // every != previous // every:
            self.checkpoint(step)
        requested = self._stop.requested
        if self._stop_agreement is not None:
            requested = self._stop_agreement.any(requested)
        if requested:
            if self._last_saved_step != step:
                self.checkpoint(step)
            self.print(f"stopped at step {step}; checkpoint {self.last_checkpoint}; continue "
                       f"with: rlgen train {self.task} --resume {self.run_dir}")
            raise RunStopped

    @staticmethod
    def should(step: int, every: int, last: int | None = None) -> bool:
        """True every ``every`` steps and at step ``last`` (``every == 0``: only at ``last``)."""
        return step == last or (every > 0 and step % every == 0)

    def due(self, step: int, every: int) -> bool:
        """``should`` with the run's last step: true every ``every`` steps and at the end."""
        return self.should(step, every, self.total_steps)

    # -- logging -----------------------------------------------------------------------------
    def log(self, step: int, metrics: Mapping[str, float | torch.Tensor],
            show: tuple[str, ...] = ()) -> dict[str, float]:
        """Average ``metrics`` over the processes (every process must call this at the same
        steps), add the throughput, write them (rank 0) and move the progress, showing the
        ``show`` tags beside it; returns the averaged figures."""
        values = distributed.all_reduce_mean(
            {k: float(v.item() if isinstance(v, torch.Tensor) else v)
             for k, v in metrics.items()})
        elapsed, done = time.perf_counter() - self._t0, step - self._t0_step
        # Throughput once per step reached: a second log at the same step (end-of-run
        # evaluation figures) would count the evaluation's time as training time.
        if self._items_per_step and done > 0 and elapsed > 0 and step > self._rate_step:
            values[f"charts/{self._items_name}_per_s"] = done * self._items_per_step / elapsed
            self._rate_step = step
        if self.logger is not None:
            self.logger.scalars(values, step)
            self.logger.progress(step, **{tag.split("/")[-1]: values[tag] for tag in show})
        return values

    def scalar(self, tag: str, value: float | torch.Tensor, step: int) -> None:
        """One scalar from rank 0's view (episode returns, eval figures), not averaged."""
        if self.logger is not None:
            self.logger.scalar(tag, value, step)

    def progress(self, step: int, **postfix: Any) -> None:
        if self.logger is not None:
            self.logger.progress(step, **postfix)

    def print(self, message: str) -> None:
        """Print on rank 0 without breaking the progress bar."""
        if self.logger is not None:
            self.logger.print(message)
        elif self.is_main:
            print(message, flush=True)

    def save_grid(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> Path | None:
        """``samples/<tag>`` in TensorBoard and ``{run_dir}/samples/<tag>_<step>.png`` (rank 0)."""
        from rlgen.data.images import save_image

        if self.logger is None:
            return None
        self.logger.image_grid(f"samples/{tag}", images, step, nrow=nrow)
        return save_image(images, self.run_dir / "samples" / f"{tag}_{step:07d}.png", nrow=nrow)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, step: int) -> Path | None:
        """Save every state object, the RNG states and ``step`` (atomic; rank 0 writes)."""
        from rlgen.checkpoint import rng_state

        self._last_saved_step = step
        if not self.is_main:
            return None
        state = {
            "format": CHECKPOINT_FORMAT, "task": self.task,
            "config": dataclasses.asdict(self.config), "step": int(step),
            "meta": dict(self.meta),
            "state": {key: obj.state_dict() for key, obj in self.state.items()},
            "rng": rng_state(self.device), "world_size": self.world_size,
        }
        self.last_checkpoint = self.checkpoints.save(state, step)
        for obj in self.state.values():  # files beside the checkpoint may now be pruned
            if hasattr(obj, "checkpoint_saved"):
                obj.checkpoint_saved(self.last_checkpoint)
        return self.last_checkpoint

    def save_snapshot(self, name: str, step: int, keys: tuple[str, ...] = ("model",)
                      ) -> Path | None:
        """A checkpoint of only the state objects ``keys`` as ``checkpoints/<name>`` (rank 0),
        outside the keep-last-k rotation: e.g. ``best.pt``, the weights of the best validation
        epoch. Loaders read it like any checkpoint (same format and ``meta``)."""
        from rlgen.checkpoint import save_checkpoint

        if not self.is_main:
            return None
        state = {
            "format": CHECKPOINT_FORMAT, "task": self.task,
            "config": dataclasses.asdict(self.config), "step": int(step),
            "meta": dict(self.meta),
            "state": {key: self.state[key].state_dict() for key in keys},
        }
        return save_checkpoint(state, self.checkpoints.directory / name)

    def save_final(self, step: int) -> None:
        """The final checkpoint, unless ``step``'s was just written (a periodic checkpoint at
        the last step). After changing state at the end, call ``checkpoint`` instead."""
        if self._last_saved_step != step:
            self.checkpoint(step)

    def finish(self, step: int, metrics: Mapping[str, float], summary: str | None = None
               ) -> dict[str, Any]:
        """The final checkpoint (``save_final``), the config as hparams beside the final
        ``metrics``, and one summary line; returns the metrics + paths."""
        self.save_final(step)
        self._current_step = None
        finite = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        last = _broadcast(str(self.last_checkpoint) if self.last_checkpoint else None)
        if self.logger is not None:
            self.logger.hparams(finite)
            figures = ", ".join(f"{k} {v:.4g}" for k, v in finite.items())
            self.logger.print(summary or f"{self.task}: {step} steps"
                              f"{', ' + figures if figures else ''}; checkpoint {last}; "
                              f"`tensorboard --logdir {self.run_dir.parent}`")
        return {**metrics, "step": step, "run_dir": str(self.run_dir), "checkpoint": last}


def _load_keeping_hyperparameters(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore an optimizer's state (moments, step counts) but keep the hyperparameters it was
    built with from the config (learning rate, betas, ...), so a flag given with --resume, like
    a new --learning-rate, takes effect instead of being overwritten by the saved value."""
    built = [{k: v for k, v in group.items() if k != "params"}
             for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, hyperparameters in zip(optimizer.param_groups, built):
        group.update(hyperparameters)


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def _broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every process (one small collective; identity in one process)."""
    if not distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
