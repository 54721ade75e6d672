"""Evaluation sampler: each process takes every W-th sample, so the split is covered exactly once.

torch's ``DistributedSampler`` pads the last shard with repeated samples, which would count them
twice in test metrics; this one does not pad (shards differ in length by at most one; the module
gathers with padding and drops it by sample position).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


class ShardedEvalSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, ...`` of a dataset of ``length`` samples, in order."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.length = length
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
