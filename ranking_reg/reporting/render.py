"""Rendering built tables: Markdown, CSV and LaTeX (booktabs), and writing the three files.

Each of our numbers reads ``mean ± std`` with two decimals (×100 for percent metrics), then
``(n=k/N)`` when only k of N expected seeds have the metric, or ``(n=1)`` for a single seed (no
std); ``missing`` when none has it. Spec tables add the paper's value and the difference
(ours − paper) beside each.

Spec tables with a softmax row (:mod:`ranking_reg.reporting.statistics`) add a ``vs <softmax>``
column after each of ours: the mean paired difference to the softmax row in percentage points
and its 95 % bootstrap interval, ``+0.50 [+0.10, +0.90]*`` (``*``: the interval excludes 0;
``+0.50 (n=1)`` with a single pair; empty on the softmax row; the column is left out of a
panel without any pair), and a line under the table
stating the test. Long-tailed panels whose runs wrote ``per_class.json`` get a small table of
per-class wins / losses / ties vs softmax under them (summed over seeds). The CSV carries the
same as the columns (``CSV_STAT_FIELDS``, after ``CSV_FIELDS``) ``vs_baseline``, ``vs_baseline_low``, ``vs_baseline_high``, ``n_pairs`` and
``excludes_0``, and one row per method and column group with ``metric`` =
``per_class_wins`` and ``class_wins``, ``class_losses``, ``class_ties`` (``n`` = seeds).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ranking_reg.reporting.build import Entry, Panel, Table
from ranking_reg.utils.io import write_text_atomic


def _signed(value: float) -> str:
    """``+1.23`` / ``-1.23``; a value that rounds to zero is ``+0.00``, never ``-0.00``."""
    text = f"{value:+.2f}"
    return "+0.00" if text == "-0.00" else text


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
    return "" if entry.diff is None else _signed(entry.diff)


def _scale(entry: Entry) -> float:
    return 100.0 if entry.metric.percent else 1.0


def _paired_text(entry: Entry) -> str:
    """``+0.50 [+0.10, +0.90]*``: mean paired difference to the baseline and its interval."""
    p = entry.paired
    if p is None:
        return ""
    k = _scale(entry)
    if p.low is None or p.high is None:
        return f"{_signed(p.mean * k)} (n={p.n})"
    mark = "*" if p.excludes_zero else ""
    return f"{_signed(p.mean * k)} [{_signed(p.low * k)}, {_signed(p.high * k)}]{mark}"


def _vs_label(panel: Panel) -> str:
    """``vs <baseline row>`` when the panel has a baseline and at least one pair, else ""."""
    if panel.baseline is None or not any(e.paired for e in panel.entries.values()):
        return ""
    return f"vs {panel.row_labels[panel.baseline]}"


def _count_groups(panel: Panel) -> list[str]:
    groups: list[str] = []
    for _, group in panel.class_counts:
        if group not in groups:
            groups.append(group)
    return groups


def _counts_text(panel: Panel, i: int, group: str) -> str:
    c = panel.class_counts.get((i, group))
    if c is None:
        return ""
    return f"{c.wins} / {c.losses} / {c.ties} ({c.n_seeds} seed{'s' if c.n_seeds != 1 else ''})"


def _counts_markdown(panel: Panel) -> list[str]:
    """The per-class wins / losses / ties table under a panel (empty without counts)."""
    if not panel.class_counts or panel.baseline is None:
        return []
    groups = _count_groups(panel)
    base = panel.row_labels[panel.baseline]
    out = [f"Per-class test accuracy vs {base}: classes improved / worsened / tied, summed "
           "over seeds.", ""]  # fmt: skip
    out.append("| | " + " | ".join(g or "classes" for g in groups) + " |")
    out.append("|" + "|".join(["---"] + ["--:"] * len(groups)) + "|")
    for i, row in enumerate(panel.row_labels):
        if any((i, g) in panel.class_counts for g in groups):
            out.append(f"| {row} | " + " | ".join(_counts_text(panel, i, g) for g in groups) + " |")
    return out + [""]


def render_markdown(tables: Sequence[Table]) -> str:
    out = ["# Tables", ""]
    for table in tables:
        out += [f"## {table.title}", ""]
        for panel in table.panels:
            if panel.title:
                out += [f"**{panel.title}**", ""]
            vs = _vs_label(panel)
            header = [""]
            for label in panel.column_labels:
                header += [label] + (["paper", "Δ"] if table.paper_columns else [])
                header += [vs] if vs else []
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
            for i, row in enumerate(panel.row_labels):
                cells = [row]
                for j in range(len(panel.column_labels)):
                    entry = panel.entries[(i, j)]
                    cells.append(_ours_text(entry))
                    if table.paper_columns:
                        cells += [_fmt(entry.paper), _diff_text(entry)]
                    if vs:
                        cells.append(_paired_text(entry))
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
            out += _counts_markdown(panel)
        out.append(table.ran)
        for line in table.statistics:
            out += ["", line]
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
# the comparison with the baseline row (statistics.py): in tables.csv after CSV_FIELDS
CSV_STAT_FIELDS = (
    "vs_baseline", "vs_baseline_low", "vs_baseline_high", "n_pairs", "excludes_0",
    "class_wins", "class_losses", "class_ties",
)  # fmt: skip


def _round(value: float | None, scale: float = 1.0) -> Any:
    return "" if value is None else round(value * scale, 4)


def csv_rows(tables: Sequence[Table]) -> list[dict[str, Any]]:
    rows = []
    for table in tables:
        for panel in table.panels:
            for (i, j), entry in sorted(panel.entries.items()):
                mean, std = entry.ours()
                s = entry.summary
                p, k = entry.paired, _scale(entry)
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
                        "vs_baseline": "" if p is None else _round(p.mean, k),
                        "vs_baseline_low": "" if p is None else _round(p.low, k),
                        "vs_baseline_high": "" if p is None else _round(p.high, k),
                        "n_pairs": "" if p is None else p.n,
                        "excludes_0": "" if p is None or p.low is None else int(p.excludes_zero),
                        "class_wins": "",
                        "class_losses": "",
                        "class_ties": "",
                    }
                )
            for (i, group), c in panel.class_counts.items():
                row = dict.fromkeys(CSV_FIELDS + CSV_STAT_FIELDS, "")
                row.update(
                    table=table.name, panel=panel.title, row=panel.row_labels[i], column=group,
                    metric="per_class_wins", n=c.n_seeds, n_expected=c.n_seeds,
                    class_wins=c.wins, class_losses=c.losses, class_ties=c.ties,
                )  # fmt: skip
                rows.append(row)
    return rows


def render_csv(tables: Sequence[Table]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS + CSV_STAT_FIELDS, lineterminator="\n")
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
        for panel in table.panels:
            vs = _vs_label(panel)
            sub = (["ours", "paper", "$\\Delta$"] if with_paper else ["ours"]) + (
                [_tex(vs)] if vs else []
            )
            per_col = len(sub)
            caption = table.title + (f" ({panel.title})" if panel.title else "")
            ncols = 1 + per_col * len(panel.column_labels)
            out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(caption)}}}"]
            out.append("\\begin{tabular}{l" + "r" * (ncols - 1) + "}")
            out.append("\\toprule")
            if per_col > 1:
                top = [""] + [
                    f"\\multicolumn{{{per_col}}}{{c}}{{{_tex(label)}}}"
                    for label in panel.column_labels
                ]
                out.append(" & ".join(top) + " \\\\")
                rules = [
                    f"\\cmidrule(lr){{{2 + per_col * k}-{1 + per_col * (k + 1)}}}"
                    for k in range(len(panel.column_labels))
                ]
                out.append(" ".join(rules))
                out.append(" & ".join([""] + sub * len(panel.column_labels)) + " \\\\")
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
                    if vs:
                        cells.append(_tex(_paired_text(entry)))
                out.append(" & ".join(cells) + " \\\\")
            out += ["\\bottomrule", "\\end{tabular}"]
            out += _counts_latex(panel)
            notes = " ".join([table.ran, table.paper_note, *table.statistics]).strip()
            out.append(f"\\par\\footnotesize {_tex(notes)}")
            out += ["\\end{table}", ""]
    return "\n".join(out)


def _counts_latex(panel: Panel) -> list[str]:
    """The per-class wins / losses / ties under a panel, as a second small tabular."""
    if not panel.class_counts or panel.baseline is None:
        return []
    groups = _count_groups(panel)
    base = _tex(panel.row_labels[panel.baseline])
    out = [
        f"\\par\\smallskip\\footnotesize Per-class test accuracy vs {base}: classes improved / "
        "worsened / tied, summed over seeds.\\par",
        "\\begin{tabular}{l" + "r" * len(groups) + "}",
        "\\toprule",
        " & ".join([""] + [_tex(g or "classes") for g in groups]) + " \\\\",
        "\\midrule",
    ]
    for i, row in enumerate(panel.row_labels):
        if any((i, g) in panel.class_counts for g in groups):
            cells = [_tex(row)] + [_counts_text(panel, i, g) for g in groups]
            out.append(" & ".join(cells) + " \\\\")
    return out + ["\\bottomrule", "\\end{tabular}"]


def write_tables(tables: Sequence[Table], out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write OUT/tables.md, OUT/tables.csv and OUT/tables.tex; returns their paths."""
    out = Path(out)
    paths = {"md": out / "tables.md", "csv": out / "tables.csv", "tex": out / "tables.tex"}
    write_text_atomic(paths["md"], render_markdown(tables))
    write_text_atomic(paths["csv"], render_csv(tables))
    write_text_atomic(paths["tex"], render_latex(tables))
    return paths
