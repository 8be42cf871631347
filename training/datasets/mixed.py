"""Several sources in one training stream, drawn with weights, reproducibly.

The batch sampler is a pure function of (seed, rank, step): which source, which image and which
augmentation seed each batch slot gets. Resuming at step k therefore replays exactly what an
uninterrupted run would have seen, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from .base import ParsingDataset


class MixedDataset(Dataset):
    """Indexes ``(source, index, seed)`` into the source datasets (each with its own transform)."""

    def __init__(self, sources: Sequence[ParsingDataset]) -> None:
        if not sources:
            raise ValueError("at least one data source is needed")
        tasks = {s.task for s in sources}
        if len(tasks) != 1:
            raise ValueError(f"all sources must label the same task, got {sorted(tasks)}")
        self.sources = list(sources)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: tuple[int, int, int]):
        source, index, seed = key
        return self.sources[source][(index, seed)]


class MixedBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Endless batches; each slot picks a source with probability ∝ weight, then an image uniformly.

    Under DDP each rank draws its own stream (``rank`` is part of the seed).
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, *, seed: int = 0,
                 start_step: int = 0, rank: int = 0) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("one weight per source is needed")
        weights = np.asarray(weights, dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("source weights must be non-negative and not all zero")
        self.sizes = [int(s) for s in sizes]
        self.probabilities = weights / weights.sum()
        self.batch_size = int(batch_size)
        self.seed, self.rank = int(seed), int(rank)
        self.start_step = int(start_step)

    def batch(self, step: int) -> list[tuple[int, int, int]]:
        rng = np.random.default_rng([self.seed, self.rank, step])
        sources = rng.choice(len(self.sizes), size=self.batch_size, p=self.probabilities)
        return [(int(s), int(rng.integers(self.sizes[s])), int(rng.integers(2**31 - 1))) for s in sources]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1
