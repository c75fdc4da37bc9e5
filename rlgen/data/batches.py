"""The seeded, resumable batch order every gradient trainer draws from.

Step ``s`` (counted from 0 over the whole run) is batch ``s % steps_per_epoch`` of epoch
``s // steps_per_epoch``; each epoch's order is a permutation seeded by ``(seed, epoch)``, so
a run resumed at step ``s`` sees exactly the batches an uninterrupted run would, through either
loader. The incomplete last batch of an epoch is dropped (batch norm dislikes tiny batches);
a split smaller than one batch is one batch.

``batch_size`` is the *global* batch: under torchrun each of the ``world_size`` processes takes
its contiguous block of ``batch_size / world_size`` rows of the same permutation (the
process count must divide the batch). So the examples of a step, and everything computed
from them, do not depend on how many processes share the work.

Both loaders yield ``(inputs, targets)`` on the device: uint8 images become float32 in
``[0, 1]``; targets (labels, masks, ...) are passed through, or ``None`` when the split has
none. An optional ``transform(inputs, targets, generator)`` runs on the device (augmentation);
its ``torch.Generator`` is seeded by ``(seed, step, rank)``, so augmented batches repeat exactly
on resume.

- ``TensorBatches``: the split lives on the device as one tensor and a batch is an index into
  it (880k images/s against 63k for a single-process DataLoader on the mnist-subset, one CPU
  thread; ``benchmarks/vae_nll.py``).
- ``LoaderBatches``: the same order through a ``torch.utils.data.DataLoader`` (worker
  processes, datasets that do not fit in memory, per-item transforms).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch

Batch = tuple[torch.Tensor, Any]
Transform = Callable[[torch.Tensor, Any, torch.Generator], Batch]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` examples in ``epoch`` (CPU, int64)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


class BatchOrder:
    """Which examples each step of each process takes (the shared logic of both loaders)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if num_examples == 0:
            raise ValueError("the training split is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_examples = int(num_examples)
        self.batch_size = min(int(batch_size), self.num_examples)
        if self.batch_size % world_size:
            raise ValueError(
                f"--batch-size {self.batch_size} (the global batch) must be divisible by the "
                f"number of processes, {world_size}"
            )
        self.local_batch_size = self.batch_size // world_size
        self.steps_per_epoch = self.num_examples // self.batch_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)

    def epochs(self, start_step: int) -> Iterator[tuple[int, torch.Tensor, int]]:
        """``(epoch, this process's indices for the rest of the epoch, first step)`` from
        ``start_step`` on, endlessly; indices are ``(steps, local_batch_size)``."""
        for epoch in itertools.count(start_step // self.steps_per_epoch):
            first = max(start_step - epoch * self.steps_per_epoch, 0)
            perm = epoch_permutation(self.num_examples, self.seed, epoch)
            steps = perm[: self.steps_per_epoch * self.batch_size].view(
                self.steps_per_epoch, self.world_size, self.local_batch_size)
            yield epoch, steps[first:, self.rank], epoch * self.steps_per_epoch + first

    def generator(self, step: int, device: torch.device) -> torch.Generator:
        seed = (self.seed * 1_000_003 + step) * 4099 + self.rank
        return torch.Generator(device=device).manual_seed(seed % 2**63)


class _Batches:
    order: BatchOrder

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    @property
    def batch_size(self) -> int:
        """The global batch (all processes together)."""
        return self.order.batch_size

    @property
    def num_examples(self) -> int:
        return self.order.num_examples


class TensorBatches(_Batches):
    """Shuffled batches indexed out of in-memory tensors kept on ``device``.

    ``inputs``: ``(N, ...)`` (uint8 images are turned into floats in [0, 1] per batch);
    ``targets``: ``(N, ...)`` or None.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor | None = None,
                 batch_size: int = 128, *, seed: int = 0, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1, transform: Transform | None = None):
        if targets is not None and len(targets) != len(inputs):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.order = BatchOrder(len(inputs), batch_size, seed, rank, world_size)
        self.device = torch.device(device)
        self.inputs = inputs.to(self.device)
        self.targets = targets.to(self.device) if targets is not None else None
        self.transform = transform

    def batches(self, start_step: int = 0) -> Iterator[Batch]:
        """``(inputs, targets)`` of this process, from ``start_step`` on (endless)."""
        step = start_step
        for _, indices, _ in self.order.epochs(start_step):
            for idx in indices.to(self.device):
                x = _to_unit_float(self.inputs[idx])
                y = self.targets[idx] if self.targets is not None else None
                if self.transform is not None:
                    x, y = self.transform(x, y, self.order.generator(step, self.device))
                step += 1
                yield x, y


class LoaderBatches(_Batches):
    """The same batch order as ``TensorBatches`` through a ``DataLoader``; ``dataset[i]`` is
    ``(input, target)`` (or a bare input). Resuming mid-epoch skips the epoch's first batches
    without loading them."""

    def __init__(self, dataset, batch_size: int = 128, *, seed: int = 0,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, transform: Transform | None = None):
        self.order = BatchOrder(len(dataset), batch_size, seed, rank, world_size)
        self.dataset = dataset
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.transform = transform

    def batches(self, start_step: int = 0) -> Iterator[Batch]:
        step = start_step
        for epoch, indices, _ in self.order.epochs(start_step):
            # Its own generator: iterating a DataLoader draws a base seed (for the workers'
            # seeds) from the generator it is given, else from the global RNG, which would
            # shift every later random draw of the run (noise, latents) and break exact resume.
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=indices.tolist(), num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.order.seed * 1_000_003 + epoch),
            )
            for item in loader:
                x, y = (item[0], item[1]) if isinstance(item, list | tuple) else (item, None)
                x = _to_unit_float(x.to(self.device, non_blocking=True))
                if isinstance(y, torch.Tensor):
                    y = y.to(self.device, non_blocking=True)
                if self.transform is not None:
                    x, y = self.transform(x, y, self.order.generator(step, self.device))
                step += 1
                yield x, y
