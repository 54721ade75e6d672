"""Table specs (``ranking_reg/reporting/specs/*.yaml``): parsing and validation.

A spec names factors (method, dataset, backbone, λ...) whose levels are lists of Hydra
overrides; a *cell* is one level of every factor, and a run belongs to a cell when its task
overrides, less ``seed=`` and any overrides given as ``ignore``, are exactly the cell's overrides.
Each spec has a ``smoke`` and a ``paper`` section (seeds, common overrides, scale-specific
factors) and the published values, which only the ``paper`` scale compares against.

A scale's common overrides may name factor levels as ``{factor}``: the cell's level key of that
factor replaces it, so ``experiment={dataset}_{backbone}`` selects the experiment preset of each
(dataset, backbone) cell. The ``published`` section may also carry ``notes`` (the paper's own
inconsistencies, as printed) and ``reference`` tables (published numbers shown beside ours but
not run here, e.g. on a dataset that is not public).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranking_reg.reporting.runs import cell_key, read_yaml
from ranking_reg.utils.errors import ConfigError

SCALES = ("smoke", "paper")


@dataclass(frozen=True)
class Level:
    factor: str
    key: str
    label: str
    overrides: tuple[str, ...]
    # read the cell's metrics under another name: "pooled_" turns test/recall@1 into
    # test/pooled_recall@1 (a softmax run's GAP features, whose embedding head is untrained)
    metric_prefix: str = ""

    def metric_key(self, key: str) -> str:
        """``key`` as this level's runs log it (``test/x`` -> ``test/<prefix>x``)."""
        if not self.metric_prefix:
            return key
        stage, _, name = key.rpartition("/")
        return f"{stage}/{self.metric_prefix}{name}" if stage else f"{self.metric_prefix}{name}"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    percent: bool = True
    # the factor from the paper's printed number to the unit shown here (NMI printed as a
    # fraction, shown in percent: 100)
    published_scale: float = 1.0
    # a metric of the class head (accuracy, calibration): a level's metric_prefix, which points
    # the embedding's metrics at the pooled features, does not rename it
    classifier: bool = False


@dataclass(frozen=True)
class Cell:
    """One configuration of a table: a level of every factor, run once per seed."""

    levels: tuple[Level, ...]
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def key(self) -> tuple[str, ...]:
        return cell_key(self.overrides)

    def level(self, factor: str) -> Level:
        return next(lv for lv in self.levels if lv.factor == factor)

    def metric_key(self, key: str, classifier: bool = False) -> str:
        """The metrics.json key this cell's runs log ``key`` under (a level may rename the
        embedding's metrics, never a ``classifier`` metric)."""
        if classifier:
            return key
        for level in self.levels:
            key = level.metric_key(key)
        return key


@dataclass
class TableSpec:
    """A parsed ``ranking_reg/reporting/specs/*.yaml`` at one scale."""

    name: str
    title: str
    path: Path
    scale: str
    rows: str
    columns: str  # a factor name, or "metric"
    metrics: list[Metric]
    factors: dict[str, list[Level]]
    seeds: tuple[int, ...]
    common: tuple[str, ...]
    published: list[dict[str, Any]]
    source: str
    note: str
    notes: tuple[str, ...] = ()
    reference: tuple[dict[str, Any], ...] = ()

    @property
    def panels(self) -> list[str]:
        return [f for f in self.factors if f not in (self.rows, self.columns)]

    def cells(self) -> list[Cell]:
        out = []
        for combo in itertools.product(*self.factors.values()):
            common = self.common
            for level in combo:
                common = tuple(o.replace(f"{{{level.factor}}}", level.key) for o in common)
            overrides = common + tuple(o for level in combo for o in level.overrides)
            out.append(Cell(tuple(combo), overrides, self.seeds))
        return out

    def published_value(self, cell: Cell, metric: Metric) -> float | None:
        """The paper's number for this cell and metric, or None (not transcribed)."""
        for record in self.published:
            if record.get("metric", self.metrics[0].key) != metric.key:
                continue
            wanted = {k: str(v) for k, v in record.items() if k not in ("value", "metric")}
            if all(cell.level(f).key == v for f, v in wanted.items()):
                return round(float(record["value"]) * metric.published_scale, 10)
        return None


def _levels(path: Path, factor: str, raw: Any) -> list[Level]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: factor '{factor}' must map level names to override lists.")
    levels = []
    for key, value in raw.items():
        if isinstance(value, list):
            value = {"overrides": value}
        if not isinstance(value, dict) or not isinstance(value.get("overrides", []), list):
            raise ConfigError(
                f"{path}: level '{factor}.{key}' must be a list of Hydra overrides or a mapping "
                "with 'label' and 'overrides'."
            )
        overrides = tuple(str(o) for o in value.get("overrides", []))
        label, prefix = str(value.get("label", key)), str(value.get("metric_prefix", ""))
        levels.append(Level(factor, str(key), label, overrides, prefix))
    return levels


def _check_published(
    path: Path, scale: str, records: list[Any], factors: dict[str, list[Level]]
) -> None:
    """Every record has a value and, at paper scale, names only factor levels of the spec."""
    for record in records:
        if not isinstance(record, dict) or "value" not in record:
            raise ConfigError(f"{path}: every published.values entry needs a 'value' ({record}).")
        if scale != "paper":
            continue
        for factor, level in record.items():
            if factor in ("value", "metric"):
                continue
            if factor not in factors or str(level) not in {lv.key for lv in factors[factor]}:
                raise ConfigError(
                    f"{path}: published value {record} names {factor}={level}, which is not "
                    "a factor level of the paper section; fix the name."
                )


def _reference(path: Path, raw: Any) -> tuple[dict[str, Any], ...]:
    """Reference tables: a title, column labels and rows of [label, value...] (as printed)."""
    tables = []
    for table in raw or []:
        columns, rows = table.get("columns"), table.get("rows")
        if (
            not isinstance(table.get("title"), str)
            or not isinstance(columns, list)
            or not isinstance(rows, list)
            or any(not isinstance(r, list) or len(r) != len(columns) + 1 for r in rows)
        ):
            raise ConfigError(
                f"{path}: every published.reference entry needs a 'title', 'columns' and 'rows' "
                "of [label, one value per column]."
            )
        tables.append(table)
    return tuple(tables)


def load_spec(path: str | os.PathLike[str], scale: str) -> TableSpec:
    """Parse a table spec at ``scale`` (``smoke`` or ``paper``), checking its structure."""
    path = Path(path)
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale}: choose one of {', '.join(SCALES)}.")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a table spec must be a YAML mapping.")
    for required in ("name", "title", "layout", "metrics", "published", scale):
        if required not in raw:
            raise ConfigError(
                f"{path}: missing the '{required}' section (see the specs in "
                "ranking_reg/reporting/specs/ for the format)."
            )
    section = raw[scale] or {}
    factors_raw = dict(raw.get("factors") or {})
    factors_raw.update(section.get("factors") or {})
    factors = {name: _levels(path, name, value) for name, value in factors_raw.items()}
    layout = raw["layout"]
    rows, columns = layout.get("rows"), layout.get("columns")
    if rows not in factors or (columns != "metric" and columns not in factors):
        raise ConfigError(
            f"{path}: layout.rows must name a factor and layout.columns a factor or 'metric' "
            f"(factors at scale {scale}: {', '.join(factors)})."
        )
    metrics = [
        Metric(
            str(m["key"]),
            str(m.get("label", m["key"])),
            bool(m.get("percent", True)),
            float(m.get("published_scale", 1.0)),
            bool(m.get("classifier", False)),
        )
        for m in section.get("metrics") or raw["metrics"]  # a scale may read other metrics
    ]
    seeds = section.get("seeds")
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: {scale}.seeds must be a non-empty list of integers.")
    published = raw["published"] or {}
    records = published.get("values") or []
    _check_published(path, scale, records, factors)
    return TableSpec(
        name=str(raw["name"]),
        title=str(raw["title"]),
        path=path,
        scale=scale,
        rows=rows,
        columns=columns,
        metrics=metrics,
        factors=factors,
        seeds=tuple(seeds),
        common=tuple(str(o) for o in section.get("overrides") or []),
        published=records if scale == "paper" else [],
        source=str(published.get("source", "")).strip(),
        note=" ".join(str(section.get("note", "")).split()),
        notes=tuple(" ".join(str(n).split()) for n in published.get("notes") or []),
        reference=_reference(path, published.get("reference")) if scale == "paper" else (),
    )
