"""Augmentation draws that depend only on (seed, epoch, step, slot), not on process history.

Why: torchvision transforms draw from the global torch RNG, whose state depends on when
Lightning creates and prefetches the loader iterator and on the worker processes' seeds; a run
resumed from ``last.ckpt`` then augments differently from the uninterrupted run. Wrapping the batch
sampler so that every index travels with its own seed (and :class:`~ranking_reg.data.splits.
SplitView` applying the transform under that seed) makes augmentation a pure function of the
sample's place in the run, with any number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields the batches of ``batch_sampler`` as lists of ``(index, augmentation_seed)``."""

    def __init__(self, batch_sampler, seed: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.epoch = 0
        # Lightning calls ``batch_sampler.sampler.set_epoch``: route it here.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        inner = getattr(self.batch_sampler, "set_epoch", None)
        if callable(inner):
            inner(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step, batch in enumerate(self.batch_sampler):
            seeds = np.random.SeedSequence([self.seed, self.epoch, step]).generate_state(len(batch))
            yield [(int(i), int(s)) for i, s in zip(batch, seeds, strict=True)]
