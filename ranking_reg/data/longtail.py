"""The imbalanced (long-tailed) variant of a dataset's training split.

The paper's imbalanced set is a private driving-video dataset; here any dataset gets one by the
exponential profile of Cui et al. (CVPR 2019) and Cao et al. (LDAM, NeurIPS 2019): with ``C``
classes in a seeded random order, the class at rank ``i`` (0-based) keeps

    n_i = floor(n_max * R ** (-i / (C - 1)))     (at least 1, at most what it has)

images, ``n_max`` being the largest class count and ``R = imbalance_ratio = n_0 / n_{C-1}``. Which
images a class keeps is a seeded random choice too. Only the train split is long-tailed; the
test split stays as it is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ranking_reg.utils.errors import ConfigError


def class_counts(targets: Sequence[int]) -> dict[int, int]:
    """Images per class, keyed by label in increasing order."""
    counts = Counter(int(t) for t in targets)
    return {label: counts[label] for label in sorted(counts)}


def longtail_profile(n_max: int, n_classes: int, imbalance_ratio: float) -> list[int]:
    """The target count of the class at each rank: ``floor(n_max * R^(-i/(C-1)))``, >= 1."""
    if n_classes == 1:
        return [n_max]
    return [
        max(1, math.floor(n_max * imbalance_ratio ** (-i / (n_classes - 1)) + 1e-9))
        for i in range(n_classes)
    ]


def longtail_indices(targets: Sequence[int], imbalance_ratio: float, seed: int = 0) -> list[int]:
    """Sorted indices of the samples a long-tailed train split keeps (see the module docstring).

    ``imbalance_ratio`` = 1 keeps everything; the class order and the images kept are a function
    of ``seed`` alone.
    """
    try:
        ratio = float(imbalance_ratio)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"data.imbalance_ratio must be a number >= 1 (or null), got {imbalance_ratio!r}."
        ) from error
    if not ratio >= 1.0 or math.isinf(ratio):
        raise ConfigError(
            f"data.imbalance_ratio must be a finite number >= 1 (the ratio of the largest to "
            f"the smallest class; null turns the long tail off), got {imbalance_ratio!r}."
        )
    labels = np.asarray([int(t) for t in targets], dtype=np.int64)
    if labels.size == 0:
        return []
    counts = class_counts(labels.tolist())
    rng = np.random.default_rng(seed)
    order = [list(counts)[i] for i in rng.permutation(len(counts))]
    profile = longtail_profile(max(counts.values()), len(order), ratio)
    keep: list[int] = []
    for label, target in zip(order, profile, strict=True):
        members = np.flatnonzero(labels == label)
        if target >= members.size:
            keep += members.tolist()
        else:
            keep += rng.choice(members, size=target, replace=False).tolist()
    return sorted(keep)
