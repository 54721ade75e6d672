"""The P x K batch sampler: composition, length, seeding, DDP sharding, class distribution."""

from collections import Counter

import numpy as np
import pytest
from lightning.fabric.utilities.data import _set_sampler_epoch
from scipy import stats
from torch.utils.data import DataLoader

from ranking_reg.data.pk_sampler import PKBatchSampler
from ranking_reg.utils.errors import ConfigError

MODES = pytest.mark.parametrize("mode", ["uniform", "proportional"])


def _targets(sizes):
    return [c for c, n in enumerate(sizes) for _ in range(n)]


@MODES
def test_every_batch_has_p_distinct_classes_with_k_images_each(mode):
    targets = _targets([9, 7, 12, 4, 5, 8, 6, 10, 3, 11])
    sampler = PKBatchSampler(
        targets, batch_size=16, samples_per_class=4, seed=3, class_sampling=mode
    )
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        labels = [targets[i] for i in batch]
        counts = Counter(labels)
        assert len(batch) == 16
        assert len(counts) == 4
        assert set(counts.values()) == {4}


@MODES
def test_epoch_length_is_groups_over_p(mode):
    # K = 4 groups per class: 3 + 2 + 3 + 1 + 2 + 2 + 2 + 3 + 1 + 3 = 22; P = 2 -> 11 steps
    sizes = [9, 7, 12, 4, 5, 8, 6, 10, 3, 11]
    sampler = PKBatchSampler(
        _targets(sizes), batch_size=8, samples_per_class=4, class_sampling=mode
    )
    assert len(sampler) == 11
    assert len(list(sampler)) == 11


@MODES
def test_one_epoch_uses_each_image_before_repeating_it_within_its_class(mode):
    # Class sizes that are multiples of K: within one epoch every image appears exactly once.
    targets = _targets([8, 8, 8, 8])
    sampler = PKBatchSampler(
        targets, batch_size=8, samples_per_class=4, seed=1, class_sampling=mode
    )
    seen = Counter(i for batch in sampler for i in batch)
    assert sorted(seen) == list(range(32))
    assert set(seen.values()) == {1}


@MODES
def test_small_class_is_sampled_with_replacement(mode):
    targets = _targets([2, 8, 8])  # class 0 has fewer than K = 4 images
    sampler = PKBatchSampler(
        targets, batch_size=8, samples_per_class=4, seed=0, class_sampling=mode
    )
    groups_of_class_0 = 0
    for epoch in range(4):
        sampler.set_epoch(epoch)
        for batch in sampler:
            members = [i for i in batch if targets[i] == 0]
            if members:
                groups_of_class_0 += 1
                # both images once, then 2 draws with replacement from the same two
                assert len(members) == 4 and set(members) == {0, 1}
    assert groups_of_class_0 > 0  # the check above really ran


@MODES
def test_seeded_reproducible_and_epochs_differ(mode):
    targets = _targets([10] * 6)
    a = PKBatchSampler(targets, 8, 4, seed=5, class_sampling=mode)
    b = PKBatchSampler(targets, 8, 4, seed=5, class_sampling=mode)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    c = PKBatchSampler(targets, 8, 4, seed=6, class_sampling=mode)
    assert list(c) != first


def test_lightning_sets_the_epoch_through_the_dataloader():
    targets = _targets([10] * 6)
    sampler = PKBatchSampler(targets, 8, 4, seed=5)
    loader = DataLoader(list(range(len(targets))), batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3


@MODES
def test_ddp_shards_are_disjoint_whole_classes_and_identical_streams(mode):
    targets = _targets([8] * 12)
    shards = [
        PKBatchSampler(targets, 8, 4, seed=2, num_replicas=2, rank=r, class_sampling=mode)
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 6  # 24 groups / (P = 2 x 2 processes)
    used = Counter()
    for batch0, batch1 in zip(*shards, strict=True):
        for batch in (batch0, batch1):
            counts = Counter(targets[i] for i in batch)
            assert set(counts.values()) == {4} and len(counts) == 2
        assert not set(batch0) & set(batch1)
        used.update(batch0 + batch1)
    # every image once per epoch across both processes
    assert set(used.values()) == {1} and len(used) == 96


def test_class_frequencies_follow_the_dataset_not_uniform():
    # A long-tailed split must stay long-tailed: PML's MPerClassSampler would balance it.
    sizes = [200, 100, 40, 20, 8, 4, 4, 4]
    targets = _targets(sizes)
    sampler = PKBatchSampler(targets, 8, 4, seed=0, class_sampling="proportional")
    counts = Counter()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        counts.update(targets[i] for batch in sampler for i in batch)
    share = np.array([counts[c] for c in range(8)], dtype=float)
    share /= share.sum()
    expected = np.array(sizes, dtype=float) / sum(sizes)
    assert share[0] > 0.4 and share[0] == pytest.approx(expected[0], abs=0.05)
    assert share[7] < 0.03


def test_impossible_batches_are_config_errors():
    # the message names both keys and their values, whatever its wording
    with pytest.raises(ConfigError, match=r"data\.batch_size=10\b.*data\.samples_per_class=4"):
        PKBatchSampler(_targets([8] * 4), batch_size=10, samples_per_class=4)
    with pytest.raises(ConfigError, match="only 3 classes"):
        PKBatchSampler(_targets([8] * 3), batch_size=16, samples_per_class=4)


LONG_TAIL = [200, 100, 40, 20, 12, 8, 4, 2]  # class 7 has fewer than K = 4 images


def _group_counts(sampler, targets, epochs):
    """Per class, how many K-groups it got over ``epochs`` epochs; checks the P x K shape."""
    counts = Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            per_class = Counter(targets[i] for i in batch)
            assert len(per_class) == sampler.p and set(per_class.values()) == {sampler.k}
            counts.update(per_class.keys())
    return np.array([counts[c] for c in range(len(LONG_TAIL))], dtype=float)


def test_uniform_draws_every_class_equally_often_on_a_long_tail():
    # The authors' loader: class ids shuffled and taken in turn. Under that null hypothesis the
    # groups per class are (at most) multinomial with equal shares; chi-square at p = 0.001.
    targets = _targets(LONG_TAIL)
    sampler = PKBatchSampler(targets, 8, 4, seed=0, class_sampling="uniform")
    counts = _group_counts(sampler, targets, epochs=20)
    assert len(sampler) == (50 + 25 + 10 + 5 + 3 + 2 + 1 + 1) // 2  # same length as proportional
    expected = np.full(len(LONG_TAIL), counts.sum() / len(LONG_TAIL))
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < stats.chi2.ppf(0.999, df=len(LONG_TAIL) - 1)
    # taken in turn: far tighter than chance, every class within a few groups of the mean
    assert np.abs(counts - expected).max() <= 4


def test_proportional_draws_classes_in_proportion_to_their_groups():
    targets = _targets(LONG_TAIL)
    sampler = PKBatchSampler(targets, 8, 4, seed=0, class_sampling="proportional")
    counts = _group_counts(sampler, targets, epochs=20)
    groups = np.array([-(-n // 4) for n in LONG_TAIL], dtype=float)  # ceil(n / K) per class
    expected = counts.sum() * groups / groups.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < stats.chi2.ppf(0.999, df=len(LONG_TAIL) - 1)
    assert counts[0] > 20 * counts[7]


def test_uniform_gives_distinct_images_and_replacement_only_for_a_small_class():
    targets = _targets(LONG_TAIL)
    sampler = PKBatchSampler(targets, 8, 4, seed=1, class_sampling="uniform")
    small = set(np.flatnonzero(np.array(targets) == 7).tolist())
    for batch in sampler:
        for c in set(targets[i] for i in batch):
            members = [i for i in batch if targets[i] == c]
            if c == 7:  # 2 images: both once, then 2 draws with replacement
                assert set(members) == small
            else:
                assert len(set(members)) == 4


def test_unknown_class_sampling_is_a_config_error():
    with pytest.raises(ConfigError, match="data.class_sampling=balanced"):
        PKBatchSampler(_targets([8] * 4), 8, 4, class_sampling="balanced")
