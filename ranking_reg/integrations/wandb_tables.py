"""Logging built tables to Weights & Biases as ``wandb.Table`` objects (one per table).

The logged rows are the CSV rows of :mod:`ranking_reg.reporting.render`, with empty numbers as
None so that W&B types those columns as numbers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ranking_reg.integrations.wandb_utils import has_api_key
from ranking_reg.reporting.build import Table
from ranking_reg.reporting.render import CSV_FIELDS, csv_rows

_NUMERIC_FIELDS = ("mean", "std", "paper", "diff")


def in_wandb_run() -> bool:
    """Whether a W&B run is live in this process (without importing wandb)."""
    wandb = sys.modules.get("wandb")
    return wandb is not None and getattr(wandb, "run", None) is not None


def log_wandb(tables: Sequence[Table], project: str = "ranking_reg", name: str = "tables") -> str:
    """Log each table as a ``wandb.Table`` (the CSV rows) into the live run, or a new one.

    Never prompts: with no API key (``WANDB_API_KEY`` or a netrc entry) the run is offline and
    can be uploaded later with ``wandb sync``. Returns the run's directory.
    """
    import wandb

    run = wandb.run
    own = run is None
    if own:
        mode = os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")
        run = wandb.init(project=project, name=name, job_type="tables", mode=mode,
                         settings=wandb.Settings(silent=True))  # fmt: skip
    try:
        rows = csv_rows(tables)
        for table in tables:
            # W&B types columns from the first row: an empty cell is None, not "".
            data = [
                [None if r[f] == "" and f in _NUMERIC_FIELDS else r[f] for f in CSV_FIELDS]
                for r in rows
                if r["table"] == table.name
            ]
            run.log({f"tables/{table.name}": wandb.Table(columns=list(CSV_FIELDS), data=data)})
        return str(run.dir)
    finally:
        if own:
            run.finish()
