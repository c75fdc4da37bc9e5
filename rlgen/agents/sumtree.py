"""Array-based sum tree (and min tree) for proportional prioritized replay.

Schaul et al., "Prioritized Experience Replay" (ICLR 2016), appendix B.2.1: a binary segment
tree whose leaves hold the priorities ``p_i ** alpha`` and whose inner nodes hold sums, so that
sampling ``i`` with probability ``p_i / sum_j p_j`` is a descent from the root, here vectorized
over a whole batch (one numpy operation per tree level). A parallel min tree gives the smallest
positive priority, which the importance weights are normalized by.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """``size`` leaves, all zero at first; a zero leaf is never sampled."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"SumTree size must be >= 1, got {size}")
        self.size = size
        self._leaf0 = 1 << max(0, int(size - 1).bit_length())  # leaves at [leaf0, leaf0 + size)
        self._depth = self._leaf0.bit_length() - 1
        # np.zeros / np.full of a fresh array: pages are only touched once written.
        self._sum = np.zeros(2 * self._leaf0, dtype=np.float64)
        self._min = np.full(2 * self._leaf0, np.inf, dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return self._sum.nbytes + self._min.nbytes

    @property
    def total(self) -> float:
        return float(self._sum[1])

    @property
    def min(self) -> float:
        """Smallest positive leaf (``inf`` when every leaf is zero)."""
        return float(self._min[1])

    def get(self, indices) -> np.ndarray:
        return self._sum[np.asarray(indices, dtype=np.int64) + self._leaf0]

    def leaves(self) -> np.ndarray:
        return self._sum[self._leaf0:self._leaf0 + self.size]

    def update(self, indices, values) -> None:
        """Sets leaves ``indices`` to ``values`` (>= 0); with repeated indices the last wins."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            return
        values = np.broadcast_to(np.asarray(values, dtype=np.float64), indices.shape)
        if indices.min() < 0 or indices.max() >= self.size:
            raise IndexError(f"leaf index out of range [0, {self.size})")
        if not np.all(np.isfinite(values)) or values.min() < 0:
            raise ValueError("priorities must be finite and >= 0")
        nodes = indices + self._leaf0
        self._sum[nodes] = values
        self._min[nodes] = np.where(values > 0, values, np.inf)
        while nodes[0] > 1:
            # Level by level; a parent listed twice just gets the same (correct) value twice.
            nodes = nodes >> 1
            left = 2 * nodes
            self._sum[nodes] = self._sum[left] + self._sum[left + 1]
            self._min[nodes] = np.minimum(self._min[left], self._min[left + 1])

    def find(self, prefix: np.ndarray) -> np.ndarray:
        """Leaf index ``i`` with ``cumsum[i-1] <= prefix < cumsum[i]`` for each prefix sum."""
        u = np.asarray(prefix, dtype=np.float64).copy()
        nodes = np.ones(u.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = 2 * nodes
            left_sum = self._sum[left]
            right = u >= left_sum
            u -= np.where(right, left_sum, 0.0)
            nodes = left + right
        return nodes - self._leaf0

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Stratified proportional sampling: one draw in each of ``batch_size`` equal slices of
        the total mass. Raises ``ValueError`` when the tree is empty."""
        total = self.total
        if total <= 0:
            raise ValueError("cannot sample from a sum tree whose priorities are all zero")
        prefix = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        indices = self.find(np.minimum(prefix, np.nextafter(total, 0)))
        # Rounding in the partial sums can, very rarely, land on a zero leaf or past the end.
        bad = (indices >= self.size) | (self.get(np.minimum(indices, self.size - 1)) <= 0)
        while bad.any():
            redraw = self.find(rng.random(int(bad.sum())) * total)
            indices[bad] = redraw
            bad = (indices >= self.size) | (self.get(np.minimum(indices, self.size - 1)) <= 0)
        return indices
