"""The P x K batch sampler (Hermans et al. 2017; Taha et al. 2020 §4: P classes x K = 4 images).

Why our own: PML's ``MPerClassSampler`` has a fixed epoch length unrelated to the dataset, no DDP
version, and samples classes uniformly (it would undo a long-tailed train split), and Lightning
re-wraps plain samplers under DDP in a way that destroys P x K groups (Lightning #21131, #21447).

Two ways to choose the classes (``class_sampling``), both seeded by ``seed`` and the epoch number:

``uniform`` (the default; the authors' ``data_sampling/triplet_tuple_loader.py``, used for the
softmax baseline too): the class ids are shuffled and taken in turn (a fresh shuffle when all have
been taken), so every class is drawn equally often whatever its size. Each time a class is drawn it
gives its next K images from a per-epoch shuffle of its images (a new shuffle when fewer than K are
left, so the K are distinct); a class with fewer than K images gives all of them plus draws from
the class with replacement.

``proportional``: each class's images are shuffled and cut into groups of K; a last group with
fewer than K images is completed by drawing from the class with replacement (so does a class with
fewer than K images). The groups are shuffled together, so a class appears in proportion to its
size: sampling keeps the dataset's class distribution (a long-tailed split stays long-tailed).

Batches take P groups of P distinct classes from that stream, in order, skipping (and keeping for
later) a group whose class is already in the batch. In both modes an epoch has
``floor(n_groups / (P * W))`` steps, where ``n_groups = sum_c ceil(n_c / K)`` and W is the number
of processes: about one pass over the split's images, whichever the mode. When the stream cannot
complete a step it continues on a fresh shuffle, so the length never changes.

Under DDP every step draws W x P groups; process ``rank`` gets the ``rank``-th P of them: whole
classes, identical streams on every process (same seed), disjoint images across processes (in
``uniform`` mode, as long as a class drawn on two processes in one step has at least 2K images).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ranking_reg.data.choices import CLASS_SAMPLING
from ranking_reg.utils.errors import ConfigError


def check_pk_batch(batch_size: int, samples_per_class: int) -> None:
    """A batch is P classes x K images: K at most the batch, the batch a multiple of K.

    The one place this rule lives: the sampler checks it when built, and FGVRDataModule calls it
    when it is built (before any data is read). The range of each key alone is the schema's.
    """
    batch, k = batch_size, samples_per_class
    for key, value in (("batch_size", batch), ("samples_per_class", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.{key}={value}: expects an integer >= 1; got {value!r}.")
    if k > batch:
        raise ConfigError(
            f"data.samples_per_class={k} is larger than data.batch_size={batch}: a batch holds"
            f" P classes x K images, so K must be at most the batch size (the paper: 32 = 8 x 4)."
        )
    if batch % k != 0:
        raise ConfigError(
            f"data.batch_size={batch} is not a multiple of data.samples_per_class={k}: a batch"
            f" holds P classes x K images; use e.g. data.batch_size={batch - batch % k}."
        )


class PKBatchSampler(Sampler[list[int]]):
    """Yields lists of P x K dataset indices: P distinct classes, K images each."""

    def __init__(
        self,
        targets: Sequence[int],
        batch_size: int,
        samples_per_class: int = 4,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        class_sampling: str = "uniform",
    ) -> None:
        check_pk_batch(batch_size, samples_per_class)
        if class_sampling not in CLASS_SAMPLING:
            raise ConfigError(
                f"data.class_sampling={class_sampling}: expects one of {'|'.join(CLASS_SAMPLING)}"
                " (uniform: every class equally often, the authors'; proportional: in proportion"
                " to its size)."
            )
        self.class_sampling = class_sampling
        self.targets = np.asarray(targets, dtype=np.int64)
        self.k = samples_per_class
        self.p = batch_size // samples_per_class
        n_classes = len(np.unique(self.targets))
        if self.p > n_classes:
            raise ConfigError(
                f"data.batch_size={batch_size} with data.samples_per_class={samples_per_class} asks"
                f" for P={self.p} distinct classes per batch, but the training split has only"
                f" {n_classes} classes. Lower data.batch_size to at most"
                f" {n_classes * samples_per_class} or lower data.samples_per_class."
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._members = [np.flatnonzero(self.targets == c) for c in np.unique(self.targets)]
        n_groups = sum(-(-len(m) // self.k) for m in self._members)
        self._steps = max(1, n_groups // (self.p * num_replicas))
        # Lightning calls ``batch_sampler.sampler.set_epoch``; pointing at ourselves gets that call.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._steps

    def _groups(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """One shuffled pass over all classes cut into K-groups: (class position, indices)."""
        groups: list[tuple[int, np.ndarray]] = []
        for position, members in enumerate(self._members):
            shuffled = rng.permutation(members)
            for start in range(0, len(shuffled), self.k):
                group = shuffled[start : start + self.k]
                if len(group) < self.k:
                    group = np.concatenate([group, rng.choice(members, self.k - len(group))])
                groups.append((position, group))
        order = rng.permutation(len(groups))
        return [groups[i] for i in order]

    def _uniform_groups(
        self, rng: np.random.Generator, queues: list[np.ndarray]
    ) -> list[tuple[int, np.ndarray]]:
        """Every class once, in a shuffled order, each with its next K images (``queues``: the
        images each class has not given yet in its current shuffle; updated in place)."""
        groups: list[tuple[int, np.ndarray]] = []
        for position in rng.permutation(len(self._members)):
            members = self._members[position]
            if len(members) <= self.k:
                extra = rng.choice(members, self.k - len(members))
                groups.append((int(position), np.concatenate([rng.permutation(members), extra])))
                continue
            queue = queues[position]
            if len(queue) < self.k:  # the leftovers first, then a fresh shuffle of the others
                fresh = rng.permutation(members)
                queue = np.concatenate([queue, fresh[~np.isin(fresh, queue)]])
            groups.append((int(position), queue[: self.k]))
            queues[position] = queue[self.k :]
        return groups

    def _global_batches(self) -> Iterator[list[np.ndarray]]:
        """Per step, W lists of P groups (one list per process), from the seeded stream."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.class_sampling == "uniform":
            queues = [np.empty(0, dtype=np.int64) for _ in self._members]

            def refill() -> list[tuple[int, np.ndarray]]:
                return self._uniform_groups(rng, queues)
        else:

            def refill() -> list[tuple[int, np.ndarray]]:
                return self._groups(rng)

        stream: list[tuple[int, np.ndarray]] = []
        for _ in range(self._steps):
            per_process: list[list[np.ndarray]] = []
            for _ in range(self.num_replicas):
                chosen: list[np.ndarray] = []
                classes_in_batch: set[int] = set()
                cursor = 0
                while len(chosen) < self.p:
                    if cursor >= len(stream):
                        stream.extend(refill())
                    position, group = stream[cursor]
                    if position in classes_in_batch:
                        cursor += 1
                        continue
                    classes_in_batch.add(position)
                    chosen.append(group)
                    stream.pop(cursor)
                per_process.append(chosen)
            yield [np.concatenate(groups) for groups in per_process]

    def __iter__(self) -> Iterator[list[int]]:
        for per_process in self._global_batches():
            yield per_process[self.rank].tolist()
