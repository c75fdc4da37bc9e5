"""A whole DQN update captured in one CUDA graph and replayed (``--cuda-graph``).

At batch 32 a Nature-CNN update is some 60 small kernels; launched one by one from Python the
GPU waits on the launches. A CUDA graph records them once and replays them with one launch
(PyTorch's "whole network capture": static input buffers, warm-up on a side stream, capture
of forward, backward and ``optimizer.step``, then ``replay``). :class:`GraphedUpdate` does that
for ``update(batch) -> (loss, q_taken, td_errors)``, the same computation as the eager update:

- each batch is copied into static buffers (device to device), the graph replayed, and the
  static outputs returned (valid until the next update: read them before it, as logging does);
- the first ``warmup`` updates run eagerly on a side stream (real updates, counted as such:
  they also create the optimizer's state), the next one captures the graph and replays it;
- the optimizer runs with ``capturable=True`` (its step count stays on the GPU), and the
  gradient check of :class:`rlgen.agents.device_step.DeviceStep` is in the graph;
- target-network syncs copy into the target's weights in place, so the graph reads them.

Refused, with a message: a CPU or MPS device; ``--compile`` (torch.compile's own graphs; use
one or the other); ``--precision 16-mixed`` (GradScaler's skip and scale bookkeeping runs in
Python between kernels, which a replay does not re-run; use bf16-mixed); an optimizer without
``capturable`` support. Prioritized replay works (its weights are a static input; the TD
errors are read back after each replay for the sum tree, one read per update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch

from rlgen.agents.replay import ReplayBatch
from rlgen.errors import InputError

UpdateOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_TENSOR_FIELDS = ("obs", "actions", "rewards", "next_obs", "discounts", "weights")


def check_cuda_graph(device: torch.device, *, compile: bool, precision: str) -> None:
    """Raise ``InputError`` when ``--cuda-graph`` cannot work with these settings."""
    if device.type != "cuda":
        raise InputError(f"--cuda-graph needs a CUDA device (this run is on {device}); CUDA "
                         "graphs replay GPU kernels. Leave it off on CPU / MPS")
    if compile:
        raise InputError("--cuda-graph and --compile both capture the update; use one of them "
                         "(torch.compile's mode='reduce-overhead' also uses CUDA graphs)")
    if precision == "16-mixed":
        raise InputError("--cuda-graph does not work with --precision 16-mixed: GradScaler "
                         "decides in Python whether to skip a step and how to rescale, which a "
                         "graph replay would not repeat; use --precision bf16-mixed or 32")


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Switch an optimizer that has not stepped yet (or whose state is on the GPU) to
    ``capturable=True``: its step counts live on the device and its step can be captured."""
    for group in optimizer.param_groups:
        if "capturable" not in group:
            raise InputError(f"--cuda-graph needs an optimizer with capturable=True support; "
                             f"{type(optimizer).__name__} has none")
        group["capturable"] = True
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):  # a resumed optimizer: steps onto the GPU
            device = next(v.device for v in state.values()
                          if isinstance(v, torch.Tensor) and v.dim() > 0)
            state["step"] = step.to(device=device, dtype=torch.float32)


class GraphedUpdate:
    """``update(batch)`` replayed from a CUDA graph (see the module docstring)."""

    def __init__(self, update: Callable[[ReplayBatch], UpdateOutputs],
                 optimizer: torch.optim.Optimizer, warmup: int = 3):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the optimizer state must exist before "
                             f"capture), got {warmup}")
        self.update, self.optimizer, self.warmup = update, optimizer, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: ReplayBatch | None = None
        self.outputs: UpdateOutputs | None = None
        self._side = torch.cuda.Stream()

    def _check_static(self, batch: ReplayBatch) -> None:
        for name in _TENSOR_FIELDS:
            new, old = getattr(batch, name), getattr(self.static, name)
            if new.shape != old.shape or new.dtype != old.dtype or new.device != old.device:
                raise ValueError(f"--cuda-graph needs batches of one shape: {name} was "
                                 f"{tuple(old.shape)} {old.dtype} at capture, now "
                                 f"{tuple(new.shape)} {new.dtype} on {new.device}")

    def __call__(self, batch: ReplayBatch) -> UpdateOutputs:
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            # Eager updates on a side stream: kernels and allocator settle before capture.
            side = self._side
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.update(batch)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self._capture(batch)
        else:
            self._check_static(batch)
            for name in _TENSOR_FIELDS:
                getattr(self.static, name).copy_(getattr(batch, name), non_blocking=True)
            self.static.indices = batch.indices
        self.graph.replay()
        return self.outputs

    def _capture(self, batch: ReplayBatch) -> None:
        values = {f.name: getattr(batch, f.name) for f in fields(ReplayBatch)}
        for name in _TENSOR_FIELDS:  # own contiguous copies: the graph reads these addresses
            values[name] = values[name].clone(memory_format=torch.contiguous_format)
        self.static = ReplayBatch(**values)
        self.optimizer.zero_grad(set_to_none=True)  # backward inside the graph writes them
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.update(self.static)
        self.graph = graph


def graph_stats(graphed: GraphedUpdate | None) -> dict[str, Any]:
    """For the run's summary: whether the update ran from a graph, and how often."""
    if graphed is None:
        return {"cuda_graph": False}
    return {"cuda_graph": graphed.graph is not None,
            "graph_replays": max(graphed.calls - graphed.warmup, 0)}
