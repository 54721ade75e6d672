"""Finished and unfinished runs on disk, and the identity of a configuration.

A *run* is a Hydra output dir holding ``.hydra/config.yaml`` (and ``.hydra/overrides.yaml``)
and, once finished, ``metrics.json`` (a flat object of test metrics: fractions in [0, 1],
except the squared distances ``*_dist`` and their ``*_ratio``, which are >= 0) and
``per_class.json`` (test accuracy per class, written by
:class:`~ranking_reg.lightning.results_callback.TestResultsWriter`).
A run's identity (:func:`cell_key`) is its task overrides, sorted, less ``seed=`` and the
overrides that only say where or how it executes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ranking_reg.utils.errors import DataError

# Overrides that say where or how a run executes, not what it computes: never part of a cell.
_NON_IDENTITY_PREFIXES = ("seed=", "hydra.", "hydra/", "logger", "data.root=", "data.num_workers=")


@dataclass
class Run:
    """One Hydra run dir: its config, task overrides and (when finished) its metrics."""

    path: Path
    config: dict[str, Any]
    overrides: list[str]
    metrics: dict[str, float] | None
    host: str | None = None  # the machine, when reproduce recorded it (host.json)
    per_class: dict[str, Any] | None = None  # per_class.json: classes, accuracy, train_counts

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


def read_yaml(path: Path) -> Any:
    """The parsed YAML file at ``path``; a :class:`DataError` naming it when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise DataError(
            f"Cannot read {path}: {error}. Remove the broken run dir or rerun it."
        ) from error


def _read_metrics(metrics_file: Path) -> dict[str, float] | None:
    if not metrics_file.exists():
        return None
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(
            f"{metrics_file} is not valid JSON ({error}). Delete it and rerun that run "
            "(python -m ranking_reg.reproduce skips only runs whose metrics.json exists)."
        ) from error
    if not isinstance(metrics, dict):
        raise DataError(f"{metrics_file} must hold a JSON object of metric name -> value.")
    return metrics


def _read_host(host_file: Path) -> str | None:
    if not host_file.exists():
        return None
    try:
        return json.loads(host_file.read_text(encoding="utf-8")).get("host")
    except (OSError, ValueError, AttributeError):
        return None  # informational only


def _read_per_class(per_class_file: Path) -> dict[str, Any] | None:
    """``per_class.json`` when present and well formed (a list ``accuracy``), else None."""
    if not per_class_file.exists():
        return None
    try:
        data = json.loads(per_class_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # optional: the tables then leave out the per-class counts of this run
    if not isinstance(data, dict) or not isinstance(data.get("accuracy"), list):
        return None
    return data


def load_run(path: Path) -> Run:
    """Read one run dir (``path/.hydra/config.yaml`` must exist)."""
    config = read_yaml(path / ".hydra" / "config.yaml") or {}
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = read_yaml(overrides_file) if overrides_file.exists() else []
    metrics = _read_metrics(path / "metrics.json")
    host = _read_host(path / "host.json")
    per_class = _read_per_class(path / "per_class.json")
    return Run(path, _flatten(config), [str(o) for o in overrides or []], metrics, host, per_class)


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
