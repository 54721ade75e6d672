"""Plots, and the paper's tables from run dirs (see :mod:`ranking_reg.reporting.tables`)."""

from ranking_reg.reporting.build import build_tables
from ranking_reg.reporting.render import render_markdown, write_tables
from ranking_reg.reporting.runs import find_runs
from ranking_reg.reporting.table_spec import load_spec

__all__ = ["build_tables", "find_runs", "load_spec", "render_markdown", "write_tables"]
