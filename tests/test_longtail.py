"""The long-tailed train split: exponential profile n_max * R^(-i/(C-1)) over a seeded class order."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.longtail import class_counts, longtail_indices, longtail_profile
from ranking_reg.utils.errors import ConfigError

# floor(100 * R^(-i/(C-1))) worked out by hand for n_max = 100, e.g. C = 5, R = 100:
# 100 * 100^(-1/4) = 31.6, 100 * 100^(-2/4) = 10, 100 * 100^(-3/4) = 3.16, 100 / 100 = 1.
PROFILES_100 = {
    (2, 1): [100, 100],
    (2, 10): [100, 10],
    (5, 2): [100, 84, 70, 59, 50],
    (5, 100): [100, 31, 10, 3, 1],
    (10, 10): [100, 77, 59, 46, 35, 27, 21, 16, 12, 10],
    (10, 50): [100, 64, 41, 27, 17, 11, 7, 4, 3, 2],
}


def balanced(n_classes: int, per_class: int, seed: int = 0) -> list[int]:
    targets = np.repeat(np.arange(n_classes), per_class)
    np.random.default_rng(seed).shuffle(targets)
    return targets.tolist()


def test_class_counts():
    assert class_counts([2, 0, 2, 5, 2]) == {0: 1, 2: 3, 5: 1}
    assert list(class_counts([3, 1, 2])) == [1, 2, 3]
    assert class_counts([]) == {}


@pytest.mark.parametrize(("n_classes", "ratio"), list(PROFILES_100))
def test_kept_counts_follow_the_exponential_profile(n_classes, ratio):
    targets = balanced(n_classes, 100)
    keep = longtail_indices(targets, ratio, seed=3)
    kept = Counter(targets[i] for i in keep)
    assert sorted(kept.values(), reverse=True) == PROFILES_100[n_classes, ratio]
    assert longtail_profile(100, n_classes, ratio) == PROFILES_100[n_classes, ratio]
    assert max(kept.values()) / min(kept.values()) == pytest.approx(ratio)
    assert keep == sorted(set(keep)) and all(0 <= i < len(targets) for i in keep)


@pytest.mark.parametrize(
    ("n_max", "n_classes", "ratio", "total"),
    [
        (5000, 10, 100, 12406),  # CIFAR-10-LT
        (5000, 10, 50, 13996),
        (5000, 10, 10, 20431),
        (500, 100, 100, 10847),  # CIFAR-100-LT
        (500, 100, 50, 12608),
        (500, 100, 10, 19573),
    ],
)
def test_profile_gives_the_published_cifar_lt_sizes(n_max, n_classes, ratio, total):
    # The training-set sizes of CIFAR-10/100-LT (Cui et al., CVPR 2019; Cao et al., LDAM,
    # NeurIPS 2019), built with this profile from 5000 / 500 images per class.
    profile = longtail_profile(n_max, n_classes, ratio)
    assert sum(profile) == total
    assert profile[0] == n_max and profile[-1] == n_max // ratio


def test_profile_per_class_cifar10_lt_ratio_100():
    assert longtail_profile(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert longtail_profile(7, 1, 100) == [7]  # one class: nothing to shrink


def test_ratio_one_keeps_everything_and_tail_keeps_at_least_one():
    targets = [0] * 7 + [1] * 3 + [2] * 5
    assert longtail_indices(targets, 1) == list(range(len(targets)))
    four = balanced(4, 10)
    kept = Counter(four[i] for i in longtail_indices(four, 1e6))
    assert sorted(kept.values()) == [1, 1, 1, 10]


def test_uneven_classes_keep_min_of_count_and_target():
    targets = [0] * 40 + [1] * 3 + [2] * 40 + [3] * 20
    have = class_counts(targets)
    profile = [40, 20, 10, 5]  # 40 * 8^(-i/3): 40, 20, 10, 5
    possible = {
        tuple(min(have[c], profile[rank]) for c, rank in enumerate(ranks))
        for ranks in itertools.permutations(range(4))
    }
    for seed in range(6):
        kept = class_counts([targets[i] for i in longtail_indices(targets, 8, seed=seed)])
        # some class order gives exactly these counts under the definition
        assert tuple(kept[c] for c in range(4)) in possible
        assert kept[1] == 3


def test_seed_fixes_order_and_choice():
    targets = balanced(6, 30)
    a = longtail_indices(targets, 10, seed=0)
    assert a == longtail_indices(targets, 10, seed=0)
    heads = {
        max(
            Counter(targets[i] for i in longtail_indices(targets, 10, seed=s)).items(),
            key=lambda kv: kv[1],
        )[0]
        for s in range(12)
    }
    assert len(heads) > 1  # the head class moves with the seed: the order is permuted


def test_invalid_ratio_is_a_config_error():
    for bad in (0.5, 0, -3, float("inf"), float("nan"), "ten", None):
        with pytest.raises(ConfigError, match="imbalance_ratio"):
            longtail_indices([0, 1], bad)
    assert longtail_indices([], 10) == []


def test_subset_of_an_image_list_keeps_classes():
    samples = [(f"img{i}.jpg", t) for i, t in enumerate(balanced(3, 20))]
    ds = ImageListDataset(samples, ["a", "b", "c"])
    tail = ds.subset(longtail_indices(ds.targets, 4, seed=1))
    assert tail.classes == ds.classes
    assert sorted(class_counts(tail.targets).values()) == [5, 10, 20]
