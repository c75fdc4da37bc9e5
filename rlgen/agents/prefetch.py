"""Target Q-values computed on a second CPU core while the agent acts.

At one update per 4 environment steps the update dominates a CPU DQN loop. Right after an
update the loop draws the next batch and hands it to ``TargetPrefetcher.start``; a worker
thread (one intra-op thread) runs the target network over the batch's next observations while
the main thread acts and steps the emulator; the next update ``take``\\s the result. The update
is the same computation as in the serial loop; the one difference is that the batch was drawn
``train_frequency`` steps earlier, so it cannot hold the newest transitions.

Weights the worker reads may change between ``start`` and ``take`` only through
``holding()``: a target-network update (hard copy or Polyak) that falls between two updates
runs inside it, which waits for a running computation to end, lets the weights change, and
recomputes the targets on the new weights. The worker therefore never reads weights while they
are written, and the targets always come from the weights the serial loop would use. The online
network (Double DQN) changes only in the optimizer step, after ``take``.

The pending batch (its slot ids and importance weights: drawing it consumed replay RNG) is
part of the checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from rlgen.agents.replay import ReplayBatch, ReplayBuffer

NextQ = tuple[torch.Tensor, torch.Tensor | None]


def _on_one_thread(compute: Callable[[ReplayBatch], NextQ], batch: ReplayBatch) -> NextQ:
    torch.set_num_threads(1)  # the acting thread has the other core
    return compute(batch)


class TargetPrefetcher:
    """``compute(batch)`` for the next update's batch, on a worker thread when ``enabled``.
    Disabled, the loop draws and computes at update time; a pending batch restored from a
    checkpoint is then computed when it is taken."""

    def __init__(self, compute: Callable[[ReplayBatch], NextQ], replay: ReplayBuffer,
                 enabled: bool):
        self.compute = compute
        self.replay = replay
        self.enabled = enabled
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rlgen-next-q") if enabled \
            else None
        self._pending: tuple[ReplayBatch, Future | None] | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def start(self, batch: ReplayBatch) -> None:
        """Begin computing the targets of ``batch`` (a copy of the replay's data: the replay
        may change meanwhile)."""
        if self._pending is not None:
            raise RuntimeError("a prefetched batch is still pending; take() it first")
        future = self._worker.submit(_on_one_thread, self.compute, batch) if self._worker \
            else None
        self._pending = (batch, future)

    def take(self) -> tuple[ReplayBatch, NextQ]:
        """The pending batch and its targets (waits for the worker if it is still busy)."""
        if self._pending is None:
            raise RuntimeError("no prefetched batch is pending")
        (batch, future), self._pending = self._pending, None
        return batch, future.result() if future is not None else self.compute(batch)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Change weights the worker reads inside this block: a running computation is waited
        for and discarded, and restarted on the new weights afterwards."""
        if self._pending is None or self._pending[1] is None:
            yield
            return
        (batch, future), self._pending = self._pending, None
        future.result()  # no forward pass may read the weights while they change
        yield
        self.start(batch)

    def state_dict(self) -> dict[str, Any]:
        if self._pending is None:
            return {"indices": None, "weights": None}
        batch = self._pending[0]
        return {"indices": torch.from_numpy(batch.indices.copy()),
                "weights": batch.weights.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restart the saved pending batch; restore the replay and the networks first. A
        replay that was not saved cannot give the batch back: the next update draws anew."""
        if state.get("indices") is None or len(self.replay) == 0:
            return
        self.start(self.replay.gather(state["indices"].numpy(), state["weights"].numpy()))

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
