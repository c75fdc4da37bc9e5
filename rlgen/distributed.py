"""Scaling out with torchrun and DistributedDataParallel, nothing home-made.

``torchrun --nproc-per-node N -m rlgen train vae ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; ``rlgen.training.TrainingRun``
calls these helpers, so no trainer has distributed code of its own. Outside torchrun every
helper gives the single-process answer (rank 0 of 1), so the same code runs both ways.

Conventions the trainers rely on:
- Every process is seeded alike and makes the same random draws in the same order; random
  numbers a training step needs per example (noise, latents) are drawn for the *global* batch
  and each process keeps its rows (``shard_rows``). A run therefore computes the same thing
  whatever the number of processes, up to the order of floating-point sums.
- Collectives have a timeout (``init_distributed(timeout_s=...)``): a process that dies or
  hangs ends the job with an error instead of a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn


def is_launched() -> bool:
    """True when started by torchrun (or another launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 writes logs and checkpoints; the others only compute."""
    return rank() == 0


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> torch.device:
    """Join the process group torchrun describes; returns this process's device.

    On CUDA each process takes the GPU of its local rank and the group uses NCCL; on the CPU,
    gloo. ``timeout_s`` bounds every collective, so a rank that died or hangs ends the job
    with an error. Without a launcher it does nothing and returns ``device``.
    """
    if not is_launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return device


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def wrap_ddp(module: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """DistributedDataParallel around ``module`` when running distributed, else ``module``.

    ``sync_batchnorm`` turns batch norm into ``SyncBatchNorm`` (statistics over the global
    batch); PyTorch implements it for GPUs only.
    """
    if not is_initialized():
        return module
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError("--sync-batchnorm needs CUDA devices (PyTorch's SyncBatchNorm "
                             "runs on GPUs only); on the CPU each process normalises its "
                             "own rows")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers (for state_dict and saving)."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def no_sync(module: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` for a (possibly compiled) DDP module: a forward / backward inside it
    joins no gradient exchange (a GAN's generator step through the frozen discriminator);
    a plain module gets a do-nothing context."""
    inner = getattr(module, "_orig_mod", module)
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        return inner.no_sync()
    return contextlib.nullcontext()


def shard_rows(x: torch.Tensor) -> torch.Tensor:
    """This process's contiguous block of the rows of a global-batch tensor (all of it in a
    single process). The row count must divide evenly by the number of processes."""
    world = world_size()
    if world == 1:
        return x
    if x.shape[0] % world:
        raise ValueError(f"a global batch of {x.shape[0]} rows cannot be split evenly over "
                         f"{world} processes")
    per = x.shape[0] // world
    return x[rank() * per:(rank() + 1) * per]


def all_reduce_mean(metrics: Mapping[str, float], device: torch.device | None = None) -> dict:
    """Average scalar metrics over all ranks (identity in a single process)."""
    if not is_initialized():
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    device = device or (torch.device("cuda", local_rank()) if dist.get_backend() == "nccl"
                        else torch.device("cpu"))
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= world_size()
    return dict(zip(keys, values.tolist()))


class FlagAgreement:
    """Whether any process raised a flag (a stop request), agreed on by all of them.

    Signals reach the processes of a job at slightly different moments; deciding together
    keeps every process stopping after the same step. Uses a gloo group on CPU tensors, so a
    CUDA job does not synchronise its GPU stream for it.
    """

    def __init__(self) -> None:
        self._group = None
        if is_initialized():
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" \
                else dist.group.WORLD

    def any(self, flag: bool) -> bool:
        if self._group is None:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._group)
        return bool(value.item())
