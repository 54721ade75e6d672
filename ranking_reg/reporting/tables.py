"""Aggregate finished runs into the paper's tables (mean ± std over seeds, beside the paper).

A *run* is a Hydra output dir holding ``.hydra/config.yaml`` (and ``.hydra/overrides.yaml``)
and, once finished, ``metrics.json`` (a flat object of test metrics, fractions in [0, 1]).

Two ways to build tables:

- **from a table spec** (``ranking_reg/reporting/specs/*.yaml``): the spec names factors (method,
  dataset, backbone, λ...) whose levels are lists of Hydra overrides; a *cell* is one level of
  every factor, and a run belongs to a cell when its task overrides, less ``seed=`` and any
  overrides given as ``ignore``, are exactly the cell's overrides. Each cell reports mean ± std
  over the spec's seeds, the published value and the difference; expected seeds with no
  ``metrics.json`` are listed as missing and never filled in.
- **generic** (no spec): runs are grouped by their whole config less ``seed``; each group is a
  row, labelled by the config keys that differ between groups.

Statistics: mean and *sample* standard deviation (ddof = 1) over seeds; with one seed the std is
undefined and the cell says ``n=1``. Fractions are shown in percent (×100), as in the paper.

CLI: ``python -m ranking_reg.tables --runs DIR [DIR ...] --out OUT [--spec FILE ... --scale
smoke|paper] [--wandb]`` writes OUT/tables.md, OUT/tables.csv and OUT/tables.tex.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import io
import itertools
import json
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ranking_reg.utils.errors import ConfigError, DataError, UserError, exit_with_user_error
from ranking_reg.utils.io import write_text_atomic

SCALES = ("smoke", "paper")
DEFAULT_METRICS = ("test/acc", "test/macro_acc", "test/recall@1", "test/nmi")
# Overrides that say where or how a run executes, not what it computes: never part of a cell.
_NON_IDENTITY_PREFIXES = ("seed=", "hydra.", "hydra/", "logger", "data.root=", "data.num_workers=")


# --------------------------------------------------------------------------- runs on disk


@dataclass
class Run:
    """One Hydra run dir: its config, task overrides and (when finished) its metrics."""

    path: Path
    config: dict[str, Any]
    overrides: list[str]
    metrics: dict[str, float] | None
    host: str | None = None  # the machine, when reproduce recorded it (host.json)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def finished(self) -> bool:
        return self.metrics is not None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise DataError(
            f"Cannot read {path}: {error}. Remove the broken run dir or rerun it."
        ) from error


def load_run(path: Path) -> Run:
    """Read one run dir (``path/.hydra/config.yaml`` must exist)."""
    config = _read_yaml(path / ".hydra" / "config.yaml") or {}
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = _read_yaml(overrides_file) if overrides_file.exists() else []
    metrics = None
    metrics_file = path / "metrics.json"
    if metrics_file.exists():
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(
                f"{metrics_file} is not valid JSON ({error}). Delete it and rerun that run "
                "(python -m ranking_reg.reproduce skips only runs whose metrics.json exists)."
            ) from error
        if not isinstance(metrics, dict):
            raise DataError(f"{metrics_file} must hold a JSON object of metric name -> value.")
    host = None
    if (path / "host.json").exists():
        try:
            host = json.loads((path / "host.json").read_text(encoding="utf-8")).get("host")
        except (OSError, ValueError, AttributeError):
            host = None  # informational only
    return Run(path, _flatten(config), [str(o) for o in overrides or []], metrics, host)


def find_runs(dirs: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """All run dirs at or below each of ``dirs`` (a single run, a sweep dir, or a tree)."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for directory in dirs:
        root = Path(directory)
        if not root.is_dir():
            raise DataError(
                f"--runs {root}: no such directory. Give run dirs or sweep dirs holding "
                ".hydra/config.yaml files."
            )
        for config in sorted(root.rglob(".hydra/config.yaml")):
            run_dir = config.parent.parent.resolve()
            if run_dir not in seen:
                seen.add(run_dir)
                runs.append(load_run(run_dir))
    return runs


def cell_key(overrides: Iterable[str], ignore: Iterable[str] = ()) -> tuple[str, ...]:
    """Canonical identity of a configuration: its overrides, sorted, less seed/placement ones.

    Hydra applies config-group overrides before value overrides whatever their order on the
    command line, so the sorted set names the same configuration.
    """
    ignored = {o.strip() for o in ignore}
    kept = {
        o.strip()
        for o in overrides
        if o.strip()
        and o.strip() not in ignored
        and not o.strip().startswith(_NON_IDENTITY_PREFIXES)
    }
    return tuple(sorted(kept))


def run_dir_name(key: Sequence[str]) -> str:
    """A readable, filesystem-safe directory name for a cell key (Hydra override_dirname style)."""
    name = ",".join(key) or "defaults"
    name = re.sub(r"[^A-Za-z0-9=,._+@-]", "_", name)
    if len(name) > 150:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:138]}_{digest}"
    return name


# --------------------------------------------------------------------------- statistics


@dataclass
class Summary:
    """Mean ± sample std over the finished seeds of one cell and one metric."""

    values: list[float]
    expected: int
    missing: list[str] = field(default_factory=list)

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
    return Summary([float(v) for v in values], len(values) if expected is None else expected)


# --------------------------------------------------------------------------- table specs


@dataclass(frozen=True)
class Level:
    factor: str
    key: str
    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    percent: bool = True


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

    @property
    def panels(self) -> list[str]:
        return [f for f in self.factors if f not in (self.rows, self.columns)]

    def cells(self) -> list[Cell]:
        out = []
        for combo in itertools.product(*self.factors.values()):
            overrides = self.common + tuple(o for level in combo for o in level.overrides)
            out.append(Cell(tuple(combo), overrides, self.seeds))
        return out

    def published_value(self, cell: Cell, metric: Metric) -> float | None:
        """The paper's number for this cell and metric, or None (not transcribed)."""
        for record in self.published:
            if record.get("metric", self.metrics[0].key) != metric.key:
                continue
            wanted = {k: str(v) for k, v in record.items() if k not in ("value", "metric")}
            if all(cell.level(f).key == v for f, v in wanted.items()):
                return float(record["value"])
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
        levels.append(Level(factor, str(key), str(value.get("label", key)), overrides))
    return levels


def load_spec(path: str | os.PathLike[str], scale: str) -> TableSpec:
    """Parse a table spec at ``scale`` (``smoke`` or ``paper``), checking its structure."""
    path = Path(path)
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale}: choose one of {', '.join(SCALES)}.")
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a table spec must be a YAML mapping.")
    for required in ("name", "title", "layout", "metrics", "published", scale):
        if required not in raw:
            raise ConfigError(f"{path}: missing the '{required}' section (see docs/REPRODUCE.md).")
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
        Metric(str(m["key"]), str(m.get("label", m["key"])), bool(m.get("percent", True)))
        for m in raw["metrics"]
    ]
    seeds = section.get("seeds")
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: {scale}.seeds must be a non-empty list of integers.")
    published = raw["published"] or {}
    records = published.get("values") or []
    for record in records:
        if not isinstance(record, dict) or "value" not in record:
            raise ConfigError(f"{path}: every published.values entry needs a 'value' ({record}).")
        if scale == "paper":
            for factor, level in record.items():
                if factor in ("value", "metric"):
                    continue
                if factor not in factors or str(level) not in {lv.key for lv in factors[factor]}:
                    raise ConfigError(
                        f"{path}: published value {record} names {factor}={level}, which is not "
                        "a factor level of the paper section; fix the name."
                    )
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
    )


# --------------------------------------------------------------------------- built tables


@dataclass
class Entry:
    """One rendered number: ours (summary) beside the paper's value."""

    summary: Summary | None
    paper: float | None
    metric: Metric

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


def build_spec_table(spec: TableSpec, runs: list[Run], ignore: Iterable[str] = ()) -> Table:
    """Fill a spec's cells from ``runs``; expected seeds without metrics are listed missing."""
    by_key = _by_key(runs, ignore)
    used: list[Run] = []
    missing: list[str] = []
    stats: dict[Cell, dict[str, Summary]] = {}
    for cell in spec.cells():
        per_seed: dict[Any, Run] = {}
        for run in by_key.get(cell.key, []):
            if run.seed in cell.seeds and (run.seed not in per_seed or run.finished):
                per_seed[run.seed] = run
        label = " / ".join(level.label for level in cell.levels)
        stats[cell] = {}
        lost_runs = []
        for seed in cell.seeds:
            run = per_seed.get(seed)
            if run is None:
                lost_runs.append(f"seed {seed}: no run dir")
            elif not run.finished:
                lost_runs.append(f"seed {seed}: no metrics.json in {run.path}")
        lost_keys = []
        for metric in spec.metrics:
            values, lost = [], list(lost_runs)
            for seed in cell.seeds:
                run = per_seed.get(seed)
                if run is None or not run.finished:
                    continue
                if run.metrics.get(metric.key) is None:
                    lost.append(f"seed {seed}: {metric.key} absent from {run.path}/metrics.json")
                    lost_keys.append(lost[-1])
                else:
                    values.append(float(run.metrics[metric.key]))
            stats[cell][metric.key] = Summary(values, len(cell.seeds), lost)
        if lost_runs or lost_keys:
            missing.append(f"{spec.name}: {label}: " + "; ".join(lost_runs + lost_keys))
        used.extend(r for r in per_seed.values() if r.finished)

    panels = []
    panel_factors = spec.panels
    panel_levels = list(itertools.product(*(spec.factors[f] for f in panel_factors)))
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

    n_runs = sum(len(c.seeds) for c in spec.cells())
    finished = len({r.path for r in used})
    backbones = ", ".join(lv.label for lv in spec.factors.get("backbone", [])) or "config default"
    epochs = sorted({str(r.config.get("trainer.max_epochs")) for r in used})
    ran = (
        f"Run: scale {spec.scale}; seeds {', '.join(map(str, spec.seeds))}; "
        f"backbone {backbones}; {finished}/{n_runs} runs finished"
        + (f"; trainer.max_epochs {', '.join(epochs)}" if epochs else "")
        + f"; hardware: {_hardware(used)}; spec {spec.path.name}."
    )
    has_paper = bool(spec.published)
    if spec.scale == "smoke":
        paper_note = (
            "Paper: no published values at smoke scale (embedded datasets stand in for the "
            "paper's); run SCALE=paper to compare."
        )
    else:
        paper_note = f"Paper: {spec.source or 'no source given'}."
        if not has_paper:
            paper_note += " No values transcribed for this table (cells left empty)."
        else:
            paper_note += " Empty paper cells: not transcribed."
    if spec.note:
        paper_note += f" Note: {spec.note}"
    return Table(spec.name, spec.title, panels, ran, missing, has_paper, paper_note)


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


def _plain(text: str | None) -> str:
    if text is None:
        return "-"
    try:
        return str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text


# --------------------------------------------------------------------------- rendering


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _ours_text(entry: Entry, pm: str = "±") -> str:
    mean, std = entry.ours()
    if entry.summary is None or mean is None:
        return "missing"
    s = entry.summary
    text = f"{mean:.2f}"
    if std is not None:
        text += f" {pm} {std:.2f}"
    if s.n < s.expected or s.n == 1:
        text += f" (n={s.n}/{s.expected})" if s.n < s.expected else " (n=1)"
    return text


def _diff_text(entry: Entry) -> str:
    return "" if entry.diff is None else f"{entry.diff:+.2f}"


def render_markdown(tables: Sequence[Table]) -> str:
    out = ["# Tables", ""]
    for table in tables:
        out += [f"## {table.title}", ""]
        for panel in table.panels:
            if panel.title:
                out += [f"**{panel.title}**", ""]
            header = [""]
            for label in panel.column_labels:
                header += [label] + (["paper", "Δ"] if table.paper_columns else [])
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
            for i, row in enumerate(panel.row_labels):
                cells = [row]
                for j in range(len(panel.column_labels)):
                    entry = panel.entries[(i, j)]
                    cells.append(_ours_text(entry))
                    if table.paper_columns:
                        cells += [_fmt(entry.paper), _diff_text(entry)]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        out.append(table.ran)
        if table.paper_note:
            out += ["", table.paper_note]
        if table.missing:
            out += ["", f"Missing ({len(table.missing)}), not filled in:", ""]
            out += [f"- {m}" for m in table.missing]
        out.append("")
    return "\n".join(out)


CSV_FIELDS = (
    "table", "panel", "row", "column", "metric", "mean", "std", "n", "n_expected",
    "paper", "diff", "missing",
)  # fmt: skip


def csv_rows(tables: Sequence[Table]) -> list[dict[str, Any]]:
    rows = []
    for table in tables:
        for panel in table.panels:
            for (i, j), entry in sorted(panel.entries.items()):
                mean, std = entry.ours()
                s = entry.summary
                rows.append(
                    {
                        "table": table.name,
                        "panel": panel.title,
                        "row": panel.row_labels[i],
                        "column": panel.column_labels[j],
                        "metric": entry.metric.key,
                        "mean": "" if mean is None else round(mean, 4),
                        "std": "" if std is None else round(std, 4),
                        "n": s.n if s else 0,
                        "n_expected": s.expected if s else 0,
                        "paper": "" if entry.paper is None else entry.paper,
                        "diff": "" if entry.diff is None else round(entry.diff, 4),
                        "missing": "; ".join(s.missing) if s else "",
                    }
                )
    return rows


def render_csv(tables: Sequence[Table]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(tables))
    return buffer.getvalue()


_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "λ": r"$\lambda$", "Δ": r"$\Delta$", "±": r"$\pm$",
}  # fmt: skip
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX))


def _tex(text: str) -> str:
    """Escape LaTeX specials in one pass (so replacements are not escaped again)."""
    return _TEX_RE.sub(lambda m: _TEX[m.group(0)], text)


def render_latex(tables: Sequence[Table]) -> str:
    """Booktabs tabulars, one per panel (``\\usepackage{booktabs}``)."""
    out = ["% Generated by python -m ranking_reg.tables; needs \\usepackage{booktabs}.", ""]
    for table in tables:
        with_paper = table.paper_columns
        per_col = 3 if with_paper else 1
        for panel in table.panels:
            caption = table.title + (f" ({panel.title})" if panel.title else "")
            ncols = 1 + per_col * len(panel.column_labels)
            out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(caption)}}}"]
            out.append("\\begin{tabular}{l" + "r" * (ncols - 1) + "}")
            out.append("\\toprule")
            if with_paper:
                top = [""] + [
                    f"\\multicolumn{{3}}{{c}}{{{_tex(label)}}}" for label in panel.column_labels
                ]
                out.append(" & ".join(top) + " \\\\")
                rules = [
                    f"\\cmidrule(lr){{{2 + 3 * k}-{4 + 3 * k}}}"
                    for k in range(len(panel.column_labels))
                ]
                out.append(" ".join(rules))
                out.append(
                    " & ".join([""] + ["ours", "paper", "$\\Delta$"] * len(panel.column_labels))
                    + " \\\\"
                )
            else:
                out.append(" & ".join([""] + [_tex(c) for c in panel.column_labels]) + " \\\\")
            out.append("\\midrule")
            for i, row in enumerate(panel.row_labels):
                cells = [_tex(row)]
                for j in range(len(panel.column_labels)):
                    entry = panel.entries[(i, j)]
                    cells.append(_tex(_ours_text(entry)))
                    if with_paper:
                        cells += [_fmt(entry.paper), _diff_text(entry)]
                out.append(" & ".join(cells) + " \\\\")
            out += ["\\bottomrule", "\\end{tabular}"]
            out.append(f"\\par\\footnotesize {_tex(table.ran)} {_tex(table.paper_note)}")
            out += ["\\end{table}", ""]
    return "\n".join(out)


def write_atomic(path: Path, text: str) -> None:
    """Write whole or not at all (see :mod:`ranking_reg.utils.io`)."""
    write_text_atomic(path, text)


def write_tables(tables: Sequence[Table], out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write OUT/tables.md, OUT/tables.csv and OUT/tables.tex; returns their paths."""
    out = Path(out)
    paths = {"md": out / "tables.md", "csv": out / "tables.csv", "tex": out / "tables.tex"}
    write_atomic(paths["md"], render_markdown(tables))
    write_atomic(paths["csv"], render_csv(tables))
    write_atomic(paths["tex"], render_latex(tables))
    return paths


# --------------------------------------------------------------------------- W&B


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8")
    except OSError:
        return False


def log_wandb(tables: Sequence[Table], project: str = "ranking_reg", name: str = "tables") -> str:
    """Log each table as a ``wandb.Table`` (the CSV rows) into the live run, or a new one.

    Never prompts: with no API key (``WANDB_API_KEY`` or a netrc entry) the run is offline and
    can be uploaded later with ``wandb sync``. Returns the run's directory.
    """
    import wandb

    run = wandb.run
    own = run is None
    if own:
        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_has_key() else "offline")
        run = wandb.init(project=project, name=name, job_type="tables", mode=mode,
                         settings=wandb.Settings(silent=True))  # fmt: skip
    try:
        rows = csv_rows(tables)
        for table in tables:
            # W&B types columns from the first row: an empty cell is None, not "".
            data = [
                [None if r[f] == "" and f in ("mean", "std", "paper", "diff") else r[f]
                 for f in CSV_FIELDS]
                for r in rows
                if r["table"] == table.name
            ]  # fmt: skip
            run.log({f"tables/{table.name}": wandb.Table(columns=list(CSV_FIELDS), data=data)})
        return str(run.dir)
    finally:
        if own:
            run.finish()


# --------------------------------------------------------------------------- CLI


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ranking_reg.tables",
        description="Aggregate run dirs (.hydra/config.yaml + metrics.json) into tables: "
        "OUT/tables.md, OUT/tables.csv, OUT/tables.tex.",
    )
    parser.add_argument("--runs", nargs="+", required=True, help="run dirs or sweep dirs")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--spec", nargs="*", default=[], help="table specs (ranking_reg/reporting/specs)"
    )
    parser.add_argument("--scale", default="smoke", choices=SCALES, help="spec section to use")
    parser.add_argument(
        "--ignore", nargs="*", default=[], help="overrides that do not identify a cell"
    )
    parser.add_argument(
        "--metrics", default=",".join(DEFAULT_METRICS), help="generic mode: metric keys"
    )
    parser.add_argument("--wandb", action="store_true", help="also log as wandb.Table")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.runs)
        if not runs:
            raise DataError(
                f"--runs {' '.join(args.runs)}: no run dirs found (no .hydra/config.yaml below "
                "them). Point --runs at Hydra output or sweep dirs."
            )
        tables = build_tables(
            runs, args.spec, args.scale, args.ignore, [m for m in args.metrics.split(",") if m]
        )
        paths = write_tables(tables, args.out)
    except UserError as error:
        exit_with_user_error(error)
    print(render_markdown(tables))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.wandb or _in_wandb_run():
        print(f"logged to W&B: {log_wandb(tables)}")
    return 0


def _in_wandb_run() -> bool:
    wandb = sys.modules.get("wandb")
    return wandb is not None and getattr(wandb, "run", None) is not None


if __name__ == "__main__":
    raise SystemExit(main())
