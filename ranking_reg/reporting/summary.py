"""Statistics of one table cell: mean and sample standard deviation over seeds.

The standard deviation is the *sample* one (ddof = 1); with one seed it is undefined (None) and
the rendered cell says ``n=1``. Values stay fractions here; rendering scales them to percent.

``seeds`` (aligned with ``values``) and ``per_class`` (test per-class accuracy of each seed's
run, from its ``per_class.json``, where the run was long-tailed and wrote one) let
:mod:`ranking_reg.reporting.statistics` pair a cell with the softmax baseline seed by seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Summary:
    """Mean ± sample std over the finished seeds of one cell and one metric."""

    values: list[float]
    expected: int
    missing: list[str] = field(default_factory=list)
    seeds: list = field(default_factory=list)  # the seed of each value, when known
    per_class: dict = field(default_factory=dict)  # seed -> per-class accuracy (None: no items)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


def summarize(values: Sequence[float], expected: int | None = None) -> Summary:
    """Summary of ``values``; ``expected`` seeds default to as many as there are values."""
    return Summary([float(v) for v in values], len(values) if expected is None else expected)
