"""Regenerate the paper's tables: run the sweeps that have no results yet, then aggregate.

``python -m ranking_reg.reproduce --scale smoke|paper --out DIR [overrides ...]``

Reads the table specs (``ranking_reg/reporting/specs/*.yaml``), collects the cells of every
table at the chosen scale and merges cells with the same overrides (the retrieval table reads the
classification runs; the λ = 1 ablation row is the semi-hard classification cell). Each distinct
configuration gets one sweep dir ``DIR/runs/<overrides>/`` with one run per seed in
``seed<N>/``; a run is finished when its ``metrics.json`` exists. Missing seeds of a
configuration are started as one Hydra multirun::

    python -m ranking_reg.train -m <overrides> [extra overrides] seed=1,2 \\
        hydra.sweep.dir=DIR/runs/<overrides> hydra.sweep.subdir=seed${seed}

so an interrupted reproduction continues where it stopped, a failed run is reported and the next
configuration starts, and ``--launcher joblib|submitit_slurm`` spreads the seeds over processes
or a cluster. Finally DIR/tables.md, DIR/tables.csv and DIR/tables.tex are written by
:mod:`ranking_reg.reporting.render`. Extra overrides (e.g. ``data.root=/data
trainer.devices=4``) apply to every run but do not identify one: change them only together with
a new ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ranking_reg.integrations.wandb_tables import log_wandb
from ranking_reg.reporting.build import build_spec_table
from ranking_reg.reporting.provenance_check import provenance_warnings
from ranking_reg.reporting.render import render_markdown, write_tables
from ranking_reg.reporting.runs import find_runs, run_dir_name
from ranking_reg.reporting.table_spec import SCALES, TableSpec, load_spec
from ranking_reg.utils.errors import ConfigError, UserError, exit_with_user_error
from ranking_reg.utils.io import write_text_atomic
from ranking_reg.utils.paths import CONFIG_DIR, SPECS_DIR

DEFAULT_SPECS = SPECS_DIR


@dataclass
class Job:
    """One distinct configuration: its overrides, the seeds the tables need, its sweep dir."""

    key: tuple[str, ...]
    overrides: tuple[str, ...]
    sweep_dir: Path
    seeds: list[int] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    label: str = ""

    def run_dir(self, seed: int) -> Path:
        return self.sweep_dir / f"seed{seed}"

    def missing(self) -> list[int]:
        return [s for s in self.seeds if not (self.run_dir(s) / "metrics.json").exists()]


def spec_files(specs_dir: Path, names: Sequence[str] | None) -> list[Path]:
    """The table specs to reproduce (all of ``specs_dir``, or those named)."""
    if not specs_dir.is_dir():
        raise ConfigError(
            f"--specs {specs_dir}: no such directory. Point it at the repository's "
            "ranking_reg/reporting/specs folder."
        )
    available = {p.stem: p for p in sorted(specs_dir.glob("*.yaml"))}
    if not names:
        if not available:
            raise ConfigError(f"--specs {specs_dir}: holds no *.yaml table specs.")
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(
            f"--tables {' '.join(unknown)}: no such spec in {specs_dir}; "
            f"choose from {', '.join(available)}."
        )
    return [available[n] for n in names]


def plan(specs: Sequence[TableSpec], out: Path) -> list[Job]:
    """Distinct configurations over all tables, each with the union of the seeds needed."""
    jobs: dict[tuple[str, ...], Job] = {}
    for spec in specs:
        for cell in spec.cells():
            job = jobs.get(cell.key)
            if job is None:
                label = " / ".join(level.label for level in cell.levels)
                job = Job(cell.key, cell.overrides, out / "runs" / run_dir_name(cell.key))
                job.label = label
                jobs[cell.key] = job
            job.seeds.extend(s for s in cell.seeds if s not in job.seeds)
            if spec.name not in job.tables:
                job.tables.append(spec.name)
    return list(jobs.values())


def command(
    job: Job, seeds: Sequence[int], train_cmd: Sequence[str], extra: Sequence[str]
) -> list[str]:
    return [
        *train_cmd,
        "-m",
        *job.overrides,
        *extra,
        "seed=" + ",".join(str(s) for s in seeds),
        # quoted: run dir names hold '=' and ',' (Hydra's override_dirname style)
        f"hydra.sweep.dir='{job.sweep_dir}'",
        "hydra.sweep.subdir=seed${seed}",
    ]


def describe_host() -> str:
    """CPU cores and GPU of this machine, for the tables' hardware line."""
    text = f"{os.cpu_count()} CPU cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return text


# What a dry run prints of each configuration's composed config, so that a plan can be checked
# against the paper's protocol row by row without reading the presets.
PROTOCOL_KEYS = {
    "backbone": "backbone.name",
    "steps": "trainer.max_steps",
    "epochs": "trainer.max_epochs",
    "img": "data.img_size",
    "batch": "data.batch_size",
    "K": "data.samples_per_class",
    "sampling": "data.class_sampling",
    "val_fraction": "data.val_fraction",
    "augment": "data.augment",
    "test_ckpt": "test_ckpt",
    "lr": "optimizer.lr",
    "margin": "regularizer.margin",
}


def protocol(overrides: Sequence[str]) -> str:
    """``key=value`` of :data:`PROTOCOL_KEYS` in the train config ``overrides`` compose to."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if not o.startswith("hydra")])
    values = {
        name: OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        for name, key in PROTOCOL_KEYS.items()
    }
    return " ".join(f"{name}={value}" for name, value in values.items() if value is not None)


def run_job(
    job: Job,
    seeds: Sequence[int],
    train_cmd: Sequence[str],
    extra: Sequence[str],
    verbose: bool,
    host: str | None,
) -> tuple[int, float]:
    """Run the missing seeds of one configuration; output goes to ``<sweep dir>/reproduce.log``."""
    job.sweep_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(job, seeds, train_cmd, extra)
    log_path = job.sweep_dir / "reproduce.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if verbose:
                    print(f"    {line}", end="", flush=True)
        except KeyboardInterrupt:
            proc.terminate()  # its run dirs keep no metrics.json: the next call reruns them
            proc.wait()
            raise
        rc = proc.wait()
    if host is not None:
        for seed in seeds:
            if (job.run_dir(seed) / "metrics.json").exists():
                write_text_atomic(
                    job.run_dir(seed) / "host.json", json.dumps({"host": host}) + "\n"
                )
    return rc, time.monotonic() - start


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("      " + line for line in text[-lines:])


def reproduce(
    scale: str,
    out: str | os.PathLike[str],
    specs_dir: str | os.PathLike[str] = DEFAULT_SPECS,
    table_names: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    launcher: str | None = None,
    train_cmd: Sequence[str] | None = None,
    dry_run: bool = False,
    verbose: bool = False,
    wandb: bool = False,
) -> int:
    """Run what is missing, write the tables; returns 0 when every run of every table finished."""
    out = Path(out).resolve()
    if "'" in str(out) or "\\" in str(out):
        raise ConfigError(f"--out {out}: choose a directory path without quotes or backslashes.")
    specs = [load_spec(p, scale) for p in spec_files(Path(specs_dir), table_names)]
    jobs = plan(specs, out)
    train_cmd = list(train_cmd or [sys.executable, "-m", "ranking_reg.train"])
    run_extra = list(extra) + ([f"hydra/launcher={launcher}"] if launcher else [])
    # A run on the local machine records it; a cluster launcher runs elsewhere.
    host = describe_host() if launcher in (None, "basic", "joblib") else None

    todo = [(job, job.missing()) for job in jobs]
    todo = [(job, seeds) for job, seeds in todo if seeds]
    total_runs = sum(len(job.seeds) for job in jobs)
    print(
        f"reproduce: scale {scale}, {len(specs)} tables, {len(jobs)} configurations, "
        f"{total_runs} runs; {total_runs - sum(len(s) for _, s in todo)} finished, "
        f"{sum(len(s) for _, s in todo)} to run; output {out}",
        flush=True,
    )
    failed: list[str] = []
    for index, (job, seeds) in enumerate(todo, 1):
        head = f"[{index}/{len(todo)}] {job.label} ({', '.join(job.tables)}) seeds {seeds}"
        if dry_run:
            print(f"{head}\n    {shlex.join(command(job, seeds, train_cmd, run_extra))}")
            print(f"    protocol: {protocol(list(job.overrides) + list(extra))}")
            continue
        print(f"{head} ...", flush=True)
        rc, seconds = run_job(job, seeds, train_cmd, run_extra, verbose, host)
        still = [s for s in seeds if s in job.missing()]
        if rc == 0 and not still:
            print(f"    done in {seconds:.0f} s -> {job.sweep_dir}", flush=True)
        else:
            log_path = job.sweep_dir / "reproduce.log"
            reason = f"exit status {rc}" if rc != 0 else "no metrics.json written"
            print(
                f"    FAILED ({reason}) after {seconds:.0f} s: seeds {still or seeds} have no "
                f"metrics.json; log {log_path}\n{_tail(log_path)}",
                flush=True,
            )
            failed.append(f"{job.label} seeds {still or seeds} ({reason}; log {log_path})")
    if dry_run:
        return 0

    runs = find_runs([out / "runs"]) if (out / "runs").is_dir() else []
    built = [build_spec_table(spec, runs, extra) for spec in specs]
    paths = write_tables(built, out)
    print(render_markdown(built))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    cells = {
        f"{job.label} ({', '.join(job.tables)})": [job.run_dir(s) for s in job.seeds]
        for job in jobs
    }
    for line in provenance_warnings(cells):  # never changes the exit status
        print(f"reproduce: warning: {line}", file=sys.stderr)
    if wandb:
        print(f"logged to W&B: {log_wandb(built, name=f'tables-{scale}')}")
    missing = [m for table in built for m in table.missing]
    if failed or missing:
        print(
            f"reproduce: incomplete: {len(failed)} configurations failed this time, "
            f"{len(missing)} table cells lack runs (listed under 'Missing' in tables.md). "
            "Rerun the same command to retry only those.",
            file=sys.stderr,
        )
        for line in failed:
            print(f"  failed: {line}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ranking_reg.reproduce",
        description="Run the paper's table sweeps that have no results yet and write "
        "OUT/tables.md, OUT/tables.csv, OUT/tables.tex.",
    )
    parser.add_argument("--scale", default="smoke", choices=SCALES)
    parser.add_argument("--out", default="tables_out", help="output directory (default tables_out)")
    parser.add_argument("--specs", default=str(DEFAULT_SPECS), help="folder of table specs")
    parser.add_argument("--tables", nargs="*", help="only these specs (file stems)")
    parser.add_argument("--launcher", help="Hydra launcher for the seeds: joblib, submitit_slurm")
    parser.add_argument(
        "--train-cmd", help="training command (default: this Python -m ranking_reg.train)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--verbose", action="store_true", help="echo the training output")
    parser.add_argument("--wandb", action="store_true", help="also log the tables to W&B")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    try:
        return reproduce(
            args.scale,
            args.out,
            specs_dir=args.specs,
            table_names=args.tables,
            extra=args.overrides,
            launcher=args.launcher,
            train_cmd=shlex.split(args.train_cmd) if args.train_cmd else None,
            dry_run=args.dry_run,
            verbose=args.verbose,
            wandb=args.wandb,
        )
    except UserError as error:
        exit_with_user_error(error)
    except KeyboardInterrupt:
        print("reproduce: interrupted; run the same command again to continue.", file=sys.stderr)
        return 130
    return 2  # unreachable: exit_with_user_error raises SystemExit


if __name__ == "__main__":
    raise SystemExit(main())
