"""Warnings for table cells whose runs did not run on the same data or the same code.

Each run folder holds ``provenance.json`` (:mod:`ranking_reg.lightning.provenance_callback`).
The seeds of one table cell are averaged as repetitions of one experiment, so they should share
the data (``data_fingerprint``: the three splits' file lists, sizes and labels) and the code
(``git_commit`` and ``git_dirty``). :func:`provenance_warnings` names every cell whose runs
differ in either, with the runs on each side; runs without ``provenance.json`` (run before it
was recorded) are reported once, in one line, however many cells use them.

``config_hash`` is not compared: it includes the seed, which differs between a cell's runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FILE_NAME = "provenance.json"
MAX_LISTED = 5  # runs named in the "no provenance" line before "and N more"


def read_provenance(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's provenance.json, or None when absent or unreadable."""
    try:
        data = json.loads((Path(run_dir) / FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _code(record: dict[str, Any]) -> str:
    commit = record.get("git_commit")
    if commit is None:
        return "unknown commit"
    return f"{str(commit)[:12]}{' (uncommitted changes)' if record.get('git_dirty') else ''}"


def _data(record: dict[str, Any]) -> str:
    fingerprint = record.get("data_fingerprint")
    return "unknown data" if fingerprint is None else str(fingerprint)[:12]


def _names(paths: list[Path]) -> tuple[dict[Path, str], str]:
    """Short names of a cell's runs (relative to their common folder: ``seed0``) and that
    folder; whole paths and "" when they share none."""
    try:
        common = Path(os.path.commonpath([str(p) for p in paths]))
    except ValueError:  # relative and absolute paths mixed
        return {p: str(p) for p in paths}, ""
    if any(p == common for p in paths):
        return {p: str(p) for p in paths}, ""
    return {p: str(p.relative_to(common)) for p in paths}, str(common)


def _difference(
    cell: str, what: str, values: dict[Path, str], names: dict[Path, str], folder: str
) -> str | None:
    groups: dict[str, list[str]] = {}
    for path, value in values.items():
        groups.setdefault(value, []).append(names[path])
    if len(groups) < 2:
        return None
    sides = "; ".join(f"{value} in {', '.join(sorted(runs))}" for value, runs in groups.items())
    return f"cell {cell}: runs differ in {what}: {sides}{folder}"


def provenance_warnings(
    cells: Mapping[str, Iterable[str | os.PathLike[str]]], finished_only: bool = True
) -> list[str]:
    """Warning lines for the cells (label -> run folders) whose runs differ in
    ``data_fingerprint`` or in ``git_commit``/``git_dirty``; plus one line naming the runs that
    have no provenance.json. Folders that do not exist are skipped (the tables list them as
    missing), and so, with ``finished_only``, are runs without ``metrics.json`` (the tables do
    not use them)."""
    lines: list[str] = []
    without: dict[Path, None] = {}  # ordered set: each run reported once
    for cell, run_dirs in cells.items():
        records: dict[Path, dict[str, Any]] = {}
        for run_dir in run_dirs:
            path = Path(run_dir)
            if not path.is_dir() or (finished_only and not (path / "metrics.json").exists()):
                continue
            record = read_provenance(path)
            if record is None:
                without[path] = None
            else:
                records[path] = record
        if len(records) < 2:
            continue
        names, common = _names(list(records))
        folder = f" (under {common})" if common else ""
        for what, describe in (("data_fingerprint", _data), ("git_commit/git_dirty", _code)):
            values = {p: describe(r) for p, r in records.items()}
            line = _difference(cell, what, values, names, folder)
            if line is not None:
                lines.append(line)
    if without:
        listed = [str(p) for p in list(without)[:MAX_LISTED]]
        more = len(without) - len(listed)
        lines.append(
            f"no provenance: {len(without)} run(s) have no {FILE_NAME} (run before it was"
            f" recorded): {', '.join(listed)}" + (f" and {more} more" if more > 0 else "")
        )
    return lines
