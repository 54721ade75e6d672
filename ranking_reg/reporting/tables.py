"""Aggregate finished runs into the paper's tables (mean ± std over seeds, beside the paper).

CLI: ``python -m ranking_reg.tables --runs DIR [DIR ...] --out OUT [--spec FILE ... --scale
smoke|paper] [--wandb]`` writes OUT/tables.md, OUT/tables.csv and OUT/tables.tex.

With ``--spec`` each table follows a spec (:mod:`ranking_reg.reporting.table_spec`); without,
runs are grouped by their config less ``seed`` (:mod:`ranking_reg.reporting.build`). Runs are
read by :mod:`ranking_reg.reporting.runs`, summarized by :mod:`ranking_reg.reporting.summary`
(mean and sample std over seeds) and rendered by :mod:`ranking_reg.reporting.render`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ranking_reg.integrations.wandb_tables import in_wandb_run, log_wandb
from ranking_reg.reporting.build import DEFAULT_METRICS, build_tables
from ranking_reg.reporting.render import render_markdown, write_tables
from ranking_reg.reporting.runs import find_runs
from ranking_reg.reporting.table_spec import SCALES
from ranking_reg.utils.errors import DataError, UserError, exit_with_user_error


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
    if args.wandb or in_wandb_run():
        print(f"logged to W&B: {log_wandb(tables)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
