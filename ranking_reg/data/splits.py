"""Views of a dataset: a subset with its own transform, and the seeded stratified split.

The parsers build each split once with no transform; a :class:`SplitView` picks indices out of it
(train/val carved from the paper's training split, the long-tailed train subset) and applies the
stage's transform. Views keep the torchvision ImageFolder attributes (``samples``, ``targets``,
``classes``) so everything downstream sees one kind of dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class SplitView(Dataset):
    """``base`` restricted to ``indices``; items are ``(transform(image), label, position)``.

    ``position`` is the index within this view: evaluation gathers it across processes to put
    every sample back in order exactly once.
    """

    def __init__(
        self, base: Any, indices: Sequence[int] | None = None, transform: Callable | None = None
    ) -> None:
        self.base = base
        self.indices = list(range(len(base))) if indices is None else [int(i) for i in indices]
        self.transform = transform
        base_samples = base.samples
        self.samples = [base_samples[i] for i in self.indices]
        self.targets = [int(label) for _, label in self.samples]
        self.classes = list(base.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int, int]:
        """``key`` is a position, or ``(position, seed)``: then the transform's random draws come
        from ``seed`` alone (see :mod:`ranking_reg.data.seeded`)."""
        position, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.base[self.indices[position]]
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image = self.transform(image)
        return image, int(label), position

    def load_image(self, position: int):
        """The untransformed RGB image (for plots)."""
        return self.base.load_image(self.indices[position])


def stratified_split(
    targets: Sequence[int], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split indices into (kept, held_out) with ``fraction`` of each class held out.

    Per class, ``floor(fraction * n + 0.5)`` images are held out, but never the last one: a class
    with a single image stays entirely in the kept part. ``fraction=0`` keeps everything (no
    validation split). Seeded, independent of the run seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    targets_array = np.asarray(targets)
    kept: list[int] = []
    held: list[int] = []
    for label in np.unique(targets_array):
        members = np.flatnonzero(targets_array == label)
        rng.shuffle(members)
        n_held = min(math.floor(fraction * len(members) + 0.5), len(members) - 1)
        held.extend(members[:n_held].tolist())
        kept.extend(members[n_held:].tolist())
    return sorted(kept), sorted(held)
