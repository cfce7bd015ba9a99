"""A deterministic batch schedule: the batch at any step is a pure function of (seed, step),
so a resumed run sees exactly the examples an uninterrupted run would have."""

from __future__ import annotations

import numpy as np


class BatchSchedule:
    def __init__(self, size: int, batch: int, seed: int) -> None:
        if size < 1:
            raise ValueError("no examples to draw batches from")
        self.size = size
        self.batch = batch
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._orders[epoch]

    def indices(self, counter: int) -> list[int]:
        """Example indices of the `counter`-th batch (epochs reshuffle; batches may span two)."""
        start = counter * self.batch
        return [
            int(self._order(pos // self.size)[pos % self.size])
            for pos in range(start, start + self.batch)
        ]
