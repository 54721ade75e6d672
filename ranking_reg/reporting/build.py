"""Tables built from runs: ours (mean ± std over seeds) beside the paper's value.

Two ways to build tables:

- **from a table spec** (:func:`build_spec_table`): each cell reports mean ± std over the spec's
  seeds, the published value and the difference; expected seeds with no ``metrics.json`` are
  listed as missing and never filled in.
- **generic** (:func:`build_generic_table`, no spec): runs are grouped by their whole config less
  ``seed``; each group is a row, labelled by the config keys that differ between groups.

Fractions are shown in percent (×100), as in the paper. Spec tables with a softmax row
(``regularizer=none``) also compare every other row with it, seed by seed
(:mod:`ranking_reg.reporting.statistics`).
"""

from __future__ import annotations

import ast
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ranking_reg.reporting.runs import Run, cell_key
from ranking_reg.reporting.statistics import Paired, WinLoss, attach_statistics
from ranking_reg.reporting.summary import Summary
from ranking_reg.reporting.table_spec import Cell, Metric, TableSpec, load_spec

DEFAULT_METRICS = ("test/acc", "test/macro_acc", "test/recall@1", "test/nmi", "test/knn_acc@1")


@dataclass
class Entry:
    """One rendered number: ours (summary) beside the paper's value."""

    summary: Summary | None
    paper: float | None
    metric: Metric
    paired: Paired | None = None  # the paired difference to the baseline row (statistics.py)

    def ours(self) -> tuple[float | None, float | None]:
        scale = 100.0 if self.metric.percent else 1.0
        s = self.summary
        if s is None or s.mean is None:
            return None, None
        return s.mean * scale, None if s.std is None else s.std * scale

    @property
    def diff(self) -> float | None:
        mean, _ = self.ours()
        return None if mean is None or self.paper is None else mean - self.paper


@dataclass
class Panel:
    title: str
    row_labels: list[str]
    column_labels: list[str]
    entries: dict[tuple[int, int], Entry]
    baseline: int | None = None  # the softmax row, compared with by statistics.py
    # (row, column group) -> per-class wins/losses vs the baseline (long-tailed runs)
    class_counts: dict[tuple[int, str], WinLoss] = field(default_factory=dict)


@dataclass
class Table:
    name: str
    title: str
    panels: list[Panel]
    ran: str  # the "what was run" line
    missing: list[str]
    has_paper: bool
    paper_note: str
    paper_columns: bool = True  # "paper" and "Δ" beside each of ours (spec tables)
    statistics: list[str] = field(default_factory=list)  # the lines stating the test


def _hardware(runs: list[Run]) -> str:
    """What the runs ran on: a ``hardware`` metric if train.py wrote one, else the trainer's
    accelerator/devices and, where reproduce recorded it, the machine."""
    found = set()
    for run in runs:
        hw = (run.metrics or {}).get("hardware")
        if not hw:
            acc = run.config.get("trainer.accelerator", "auto")
            dev = run.config.get("trainer.devices", "auto")
            hw = f"accelerator={acc}, devices={dev}"
        found.add(f"{hw} ({run.host})" if run.host else str(hw))
    return "; ".join(sorted(found)) or "no finished runs"


def _by_key(runs: list[Run], ignore: Iterable[str]) -> dict[tuple, list[Run]]:
    by_key: dict[tuple, list[Run]] = {}
    ignore = tuple(ignore)
    for run in runs:
        by_key.setdefault(cell_key(run.overrides, ignore), []).append(run)
    return by_key


def _cell_runs(cell: Cell, candidates: list[Run]) -> dict[Any, Run]:
    """The cell's run per expected seed; a finished run wins over an unfinished one."""
    per_seed: dict[Any, Run] = {}
    for run in candidates:
        if run.seed in cell.seeds and (run.seed not in per_seed or run.finished):
            per_seed[run.seed] = run
    return per_seed


def _cell_summaries(
    spec: TableSpec, cell: Cell, per_seed: dict[Any, Run]
) -> tuple[dict[str, Summary], list[str]]:
    """Per metric, the summary over the finished seeds; and what is missing, seed by seed."""
    lost_runs = []
    for seed in cell.seeds:
        run = per_seed.get(seed)
        if run is None:
            lost_runs.append(f"seed {seed}: no run dir")
        elif not run.finished:
            lost_runs.append(f"seed {seed}: no metrics.json in {run.path}")
    lost_keys = []
    summaries = {}
    per_class = {  # long-tailed runs' test per-class accuracy, for the win/loss counts
        seed: run.per_class["accuracy"]
        for seed, run in per_seed.items()
        if run.finished and run.per_class and run.config.get("data.imbalance_ratio") is not None
    }
    for metric in spec.metrics:
        values, lost, seeds = [], list(lost_runs), []
        logged = cell.metric_key(metric.key, metric.classifier)
        for seed in cell.seeds:
            run = per_seed.get(seed)
            if run is None or not run.finished:
                continue
            if run.metrics.get(logged) is None:
                lost.append(f"seed {seed}: {logged} absent from {run.path}/metrics.json")
                lost_keys.append(lost[-1])
            else:
                values.append(float(run.metrics[logged]))
                seeds.append(seed)
        summaries[metric.key] = Summary(values, len(cell.seeds), lost, seeds, per_class)
    return summaries, lost_runs + lost_keys


def _spec_panels(spec: TableSpec, stats: dict[Cell, dict[str, Summary]]) -> list[Panel]:
    """One panel per combination of the factors that are neither rows nor columns."""
    panels = []
    panel_levels = list(itertools.product(*(spec.factors[f] for f in spec.panels)))
    row_levels = spec.factors[spec.rows]
    if spec.columns == "metric":
        col_items = [(None, m) for m in spec.metrics]
    else:
        col_items = [(lv, m) for lv in spec.factors[spec.columns] for m in spec.metrics]
    cells = spec.cells()
    for panel_combo in panel_levels or [()]:
        entries = {}
        for i, row in enumerate(row_levels):
            for j, (col, metric) in enumerate(col_items):
                wanted = set(panel_combo) | {row} | ({col} if col is not None else set())
                cell = next(c for c in cells if set(c.levels) == wanted)
                entries[(i, j)] = Entry(
                    stats[cell][metric.key], spec.published_value(cell, metric), metric
                )
        if spec.columns == "metric":
            col_labels = [m.label for _, m in col_items]
        elif len(spec.metrics) == 1:
            col_labels = [lv.label for lv, _ in col_items]
        else:
            col_labels = [f"{lv.label} {m.label}" for lv, m in col_items]
        title = ", ".join(f"{lv.label}" for lv in panel_combo)
        panels.append(Panel(title, [r.label for r in row_levels], col_labels, entries))
    return panels


def _spec_ran(spec: TableSpec, used: list[Run]) -> str:
    """The "what was run" line: scale, seeds, backbone, runs finished, epochs, hardware."""
    n_runs = sum(len(c.seeds) for c in spec.cells())
    finished = len({r.path for r in used})
    backbones = ", ".join(lv.label for lv in spec.factors.get("backbone", [])) or "config default"
    epochs = sorted({str(r.config.get("trainer.max_epochs")) for r in used})
    return (
        f"Run: scale {spec.scale}; seeds {', '.join(map(str, spec.seeds))}; "
        f"backbone {backbones}; {finished}/{n_runs} runs finished"
        + (f"; trainer.max_epochs {', '.join(epochs)}" if epochs else "")
        + f"; hardware: {_hardware(used)}; spec {spec.path.name}."
    )


def _paper_note(spec: TableSpec) -> str:
    """Where the published values come from, and why cells may lack one."""
    if spec.scale == "smoke":
        note = (
            "Paper: no published values at smoke scale (embedded datasets stand in for the "
            "paper's); run SCALE=paper to compare."
        )
    else:
        note = f"Paper: {spec.source or 'no source given'}."
        if not spec.published:
            note += " No values transcribed for this table (cells left empty)."
        else:
            note += " Empty paper cells: not transcribed."
        if spec.notes:
            note += " The paper's own inconsistencies: " + " ".join(spec.notes)
        for ref in spec.reference:
            rows = "; ".join(
                f"{row[0]}: "
                + ", ".join(f"{c} {v}" for c, v in zip(ref["columns"], row[1:], strict=True))
                for row in ref["rows"]
            )
            note += f" {ref['title']}: {rows}."
    if spec.note:
        note += f" Note: {spec.note}"
    return note


def build_spec_table(spec: TableSpec, runs: list[Run], ignore: Iterable[str] = ()) -> Table:
    """Fill a spec's cells from ``runs``; expected seeds without metrics are listed missing."""
    by_key = _by_key(runs, ignore)
    used: list[Run] = []
    missing: list[str] = []
    stats: dict[Cell, dict[str, Summary]] = {}
    for cell in spec.cells():
        per_seed = _cell_runs(cell, by_key.get(cell.key, []))
        stats[cell], lost = _cell_summaries(spec, cell, per_seed)
        if lost:
            label = " / ".join(level.label for level in cell.levels)
            missing.append(f"{spec.name}: {label}: " + "; ".join(lost))
        used.extend(r for r in per_seed.values() if r.finished)
    panels = _spec_panels(spec, stats)
    return Table(
        spec.name,
        spec.title,
        panels,
        _spec_ran(spec, used),
        missing,
        bool(spec.published),
        _paper_note(spec),
        statistics=attach_statistics(spec, panels),
    )


def _plain(text: str | None) -> str:
    if text is None:
        return "-"
    try:
        return str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text


def build_generic_table(runs: list[Run], metrics: Sequence[str] = DEFAULT_METRICS) -> Table:
    """Group runs by their config less ``seed``; one row per group, one column per metric."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        ident = tuple(sorted((k, repr(v)) for k, v in run.config.items() if k != "seed"))
        groups.setdefault(ident, []).append(run)
    keys = sorted({k for ident in groups for k, _ in ident})
    varying = [k for k in keys if len({dict(ident).get(k) for ident in groups}) > 1]
    metric_objs = [Metric(m, m.removeprefix("test/"), True) for m in metrics]
    rows, entries, missing = [], {}, []
    for i, (ident, members) in enumerate(groups.items()):
        values = dict(ident)
        label = ", ".join(f"{k}={_plain(values.get(k))}" for k in varying) or "all runs"
        rows.append(label)
        for j, metric in enumerate(metric_objs):
            vals, lost = [], []
            for run in sorted(members, key=lambda r: str(r.path)):
                if not run.finished:
                    lost.append(f"{run.path}: no metrics.json")
                elif run.metrics.get(metric.key) is None:
                    lost.append(f"{run.path}: no {metric.key}")
                else:
                    vals.append(float(run.metrics[metric.key]))
            entries[(i, j)] = Entry(Summary(vals, len(members), lost), None, metric)
        missing.extend(
            f"{label}: {r.path} (seed {r.seed}): no metrics.json" for r in members if not r.finished
        )
    seeds = sorted({str(r.seed) for r in runs})
    finished = sum(r.finished for r in runs)
    ran = (
        f"Run: {len(runs)} run dirs ({finished} finished) in {len(groups)} configurations; "
        f"seeds {', '.join(seeds)}; hardware: {_hardware([r for r in runs if r.finished])}."
    )
    panel = Panel("", rows, [m.label for m in metric_objs], entries)
    title = "Runs grouped by configuration"
    return Table("runs", title, [panel], ran, missing, False, "", paper_columns=False)


def build_tables(
    runs: list[Run],
    specs: Sequence[str | os.PathLike[str]] = (),
    scale: str = "smoke",
    ignore: Iterable[str] = (),
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[Table]:
    """Spec tables when specs are given, else one generic table over all runs."""
    if not specs:
        return [build_generic_table(runs, metrics)]
    ignore = tuple(ignore)
    return [build_spec_table(load_spec(s, scale), runs, ignore) for s in specs]
