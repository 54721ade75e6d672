"""The comparison with the softmax baseline in the tables: a test fixed before the runs.

**Baseline row.** The level of a spec table's row factor whose overrides contain
``regularizer=none`` (softmax only). A table without such a level gets no comparison.

**Paired difference.** For every other row, in the same panel (backbone, dataset) and column,
and each metric: the differences ``d_s = method(seed s) - softmax(seed s)`` over the seeds that
both cells finished, matched by seed number (a seed missing on either side drops out). The
tables show the mean of the ``d_s``, in percentage points for percent metrics.

**Interval.** With ``n >= 2`` pairs: a 95 % percentile bootstrap interval of that mean —
``N_RESAMPLES`` = 10,000 resamples, each ``n`` pairs drawn with replacement from the ``n``
pairs (``numpy.random.default_rng(BOOTSTRAP_SEED)``, seed 0, so the same runs give the same
interval), the mean of each resample, and the 2.5 % and 97.5 % quantiles of those means
(inverted-CDF quantiles: values a resample can take). A cell is marked ``*`` when the interval
excludes 0 (both ends > 0 or both < 0; an end within 1e-12 of 0 counts as 0). With one pair the difference is shown without an
interval or a mark.

**Few seeds make it coarse.** The bootstrap distribution of the mean of ``n`` pairs has at most
C(2n-1, n) values, and a resample made of the smallest (largest) difference ``n`` times has
probability ``n**-n``. With n = 2 or 3 (the smoke and paper seeds) that is 1/4 or 1/27, above
2.5 %, so the interval is exactly [min d_s, max d_s]: it excludes 0 when every seed moved the
same way. That is a descriptive statement about these seeds, not a strict significance test.

**Per-class wins/losses** (long-tailed tables). When both runs of a pair were trained on a
long-tailed split (``data.imbalance_ratio`` set) and wrote ``per_class.json``
(:class:`~ranking_reg.lightning.results_callback.TestResultsWriter`): the classes whose test
accuracy is higher (a win), lower (a loss) or equal (a tie) than softmax's with the same seed,
**summed over the seeds** (a class counts once per seed; classes without test items are left
out).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranking_reg.reporting.summary import Summary

BASELINE_OVERRIDE = "regularizer=none"
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
ZERO_TOLERANCE = 1e-12  # an end within this of 0 counts as 0 (rounding of the resample means)

TEST_NOTE = (
    "Statistics: paired difference to {baseline} over seeds, 95 % bootstrap percentile interval "
    f"({N_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}); * = interval excludes 0; fixed before "
    "the runs. With 2 or 3 seeds the interval is [min, max] of the paired differences (coarse)."
)
CLASS_NOTE = (
    "Per-class counts: classes whose test accuracy improved / worsened / tied vs {baseline} "
    "(same seed), summed over seeds; long-tailed runs with per_class.json only."
)


@dataclass(frozen=True)
class Paired:
    """Mean paired difference to the baseline (fractions) and its bootstrap interval."""

    mean: float
    n: int
    low: float | None = None  # None with fewer than 2 pairs
    high: float | None = None

    @property
    def excludes_zero(self) -> bool:
        if self.low is None or self.high is None:
            return False
        return self.low > ZERO_TOLERANCE or self.high < -ZERO_TOLERANCE


@dataclass(frozen=True)
class WinLoss:
    """Classes improved / worsened / tied vs the baseline, summed over ``n_seeds`` seeds."""

    wins: int
    losses: int
    ties: int
    n_seeds: int


def bootstrap_interval(
    diffs: Sequence[float],
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampled with replacement)."""
    values = np.asarray(diffs, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_interval needs at least one difference")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(n_resamples, values.size))
    means = values[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], method="inverted_cdf")
    return float(low), float(high)


def _by_seed(summary: Summary) -> dict[Any, float]:
    return dict(zip(summary.seeds, summary.values, strict=False))


def paired_difference(method: Summary | None, baseline: Summary | None) -> Paired | None:
    """``method - baseline`` over the seeds both have; None without a common seed."""
    if method is None or baseline is None:
        return None
    ours, base = _by_seed(method), _by_seed(baseline)
    common = [s for s in ours if s in base]
    if not common:
        return None
    diffs = [ours[s] - base[s] for s in common]
    mean = math.fsum(diffs) / len(diffs)
    if len(diffs) < 2:
        return Paired(mean, 1)
    low, high = bootstrap_interval(diffs)
    return Paired(mean, len(diffs), low, high)


def class_wins(method: Summary | None, baseline: Summary | None) -> WinLoss | None:
    """Per-class wins/losses/ties vs the baseline, summed over the seeds both have."""
    if method is None or baseline is None:
        return None
    wins = losses = ties = seeds = 0
    for seed, ours in method.per_class.items():
        base = baseline.per_class.get(seed)
        if base is None or len(base) != len(ours):
            continue
        seeds += 1
        for a, b in zip(ours, base, strict=True):
            if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
                continue
            if isinstance(b, float) and math.isnan(b):
                continue
            wins += a > b
            losses += a < b
            ties += a == b
    return WinLoss(wins, losses, ties, seeds) if seeds else None


def baseline_row(levels: Iterable[Any]) -> int | None:
    """Index of the first level whose ``overrides`` contain ``regularizer=none``, or None."""
    for i, level in enumerate(levels):
        if BASELINE_OVERRIDE in (o.strip() for o in level.overrides):
            return i
    return None


def attach_statistics(spec: Any, panels: Sequence[Any]) -> list[str]:
    """Set ``entry.paired`` of every non-baseline entry and ``panel.class_counts``; returns the
    lines stating the test (empty when the table has no baseline row)."""
    baseline = baseline_row(spec.factors[spec.rows])
    if baseline is None:
        return []
    per_group = len(spec.metrics)
    if spec.columns == "metric":
        groups = [""]
    else:
        groups = [lv.label for lv in spec.factors[spec.columns]]
    any_counts = False
    for panel in panels:
        panel.baseline = baseline
        for (i, j), entry in panel.entries.items():
            if i == baseline:
                continue
            base_entry = panel.entries[(baseline, j)]
            entry.paired = paired_difference(entry.summary, base_entry.summary)
            if j % per_group == 0:  # one count per cell (the first metric's column)
                counts = class_wins(entry.summary, base_entry.summary)
                if counts is not None:
                    panel.class_counts[(i, groups[j // per_group])] = counts
                    any_counts = True
    name = panels[0].row_labels[baseline] if panels else "softmax"
    lines = [TEST_NOTE.format(baseline=name)]
    if any_counts:
        lines.append(CLASS_NOTE.format(baseline=name))
    return lines
