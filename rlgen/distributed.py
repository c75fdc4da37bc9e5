"""Scaling out with torchrun and DistributedDataParallel, nothing home-made.

Launch any rlgen training script with ``torchrun --nproc-per-node N script.py``; torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address, and these helpers read them.
Outside torchrun every helper degrades to the single-process answer (rank 0 of 1), so the same
code runs both ways.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler


def is_launched() -> bool:
    """True when started by torchrun (or another launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


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


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the process group torchrun describes; returns this process's device.

    NCCL on CUDA (one GPU per local rank), gloo on CPU. Without torchrun it does nothing and
    returns the default device.
    """
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if is_launched() and not is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"))
    return device


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` when running distributed, else ``module``."""
    if not is_initialized():
        return module
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


def distributed_sampler(dataset: Dataset, shuffle: bool = True, seed: int = 0):
    """A DistributedSampler when distributed (call ``set_epoch`` each epoch), else None."""
    if not is_initialized():
        return None
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle,
                              seed=seed)


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
