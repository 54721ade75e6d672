"""Sweeps that survive failed jobs: each failure is recorded in its job folder and the sweep goes on.

In a Hydra multirun, :func:`tolerate_job_failures` turns an exception of one job into
``<job dir>/failure.json`` (the error, its traceback for a bug, and the end of the job's log)
and a ``None`` return. Hydra's basic sweeper then runs the remaining jobs; the Optuna sweeper
records the trial as FAIL (a trial must return a number) and stops the study only when the
failed fraction of one batch of ``hydra.sweeper.n_jobs`` trials exceeds its
``max_failure_rate`` (``conf/hparams_search/lambda_optuna.yaml``). Outside a multirun the
function is :func:`~ranking_reg.utils.errors.report_user_errors`: a user error is one paragraph
and exit status 2, a bug keeps its traceback.

:class:`SweepFailureSummary` (a Hydra callback, ``conf/hydra/default.yaml``) ends a multirun
with one line per failed job, writes ``<sweep dir>/failures.json`` and exits with status 1 when
any job failed. A job killed outright (SIGKILL, out of memory) records nothing itself; it shows
up as "did not finish": a job folder with neither ``metrics.json`` nor ``failure.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ranking_reg.utils.errors import find_user_error, format_user_error, report_user_errors
from ranking_reg.utils.io import write_json_atomic

log = logging.getLogger(__name__)

FAILURE_FILE = "failure.json"
RESULT_FILE = "metrics.json"
LOG_TAIL_LINES = 40


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _log_tail(job_dir: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of the job's Hydra log files (``<task>.log``)."""
    tail: list[str] = []
    for path in sorted(job_dir.glob("*.log")):
        try:
            tail += path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
    return tail[-lines:]


def record_failure(job_dir: str | Path, error: BaseException, overrides: list[str]) -> Path:
    """Write ``<job_dir>/failure.json``: what failed, how, and the end of the job's log."""
    job_dir = Path(job_dir)
    user_error = find_user_error(error)
    record = {
        "overrides": overrides,
        "error_type": type(user_error or error).__name__,
        "user_error": user_error is not None,
        "message": format_user_error(user_error)
        if user_error
        else f"{type(error).__name__}: {error}",
        "traceback": None
        if user_error
        else "".join(traceback.format_exception(type(error), error, error.__traceback__))[-8000:],
        "log_tail": _log_tail(job_dir),
    }
    path = job_dir / FAILURE_FILE
    write_json_atomic(path, record)
    return path


def tolerate_job_failures(function: Any) -> Any:
    """Decorator for a Hydra task function: in a multirun, a failed job is recorded
    (:func:`record_failure`) and returns None so the sweep goes on; in a single run, user
    errors become one paragraph and exit status 2 (:func:`report_user_errors`)."""
    single_run = report_user_errors(function)

    @functools.wraps(function)
    def wrapper(cfg: DictConfig) -> Any:
        if not _in_multirun():
            return single_run(cfg)
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        try:
            return function(cfg)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is not None:
                log.error(format_user_error(user_error))
            else:
                log.exception("job %s failed", hydra_cfg.job.num)
            path = record_failure(
                hydra_cfg.runtime.output_dir, error, list(hydra_cfg.overrides.task)
            )
            print(f"job {hydra_cfg.job.num} failed; see {path}", file=sys.stderr)
            return None

    return wrapper


def sweep_failures(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per job folder of ``sweep_dir`` that failed (``failure.json``) or did not finish
    (no ``metrics.json``): ``{"job", "status", "message"}``, in job order."""
    found = []
    root = Path(sweep_dir)
    jobs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for job in sorted(
        jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    ):
        if (job / FAILURE_FILE).is_file():
            try:
                message = json.loads((job / FAILURE_FILE).read_text(encoding="utf-8"))["message"]
            except (OSError, ValueError, KeyError):
                message = "failure.json is unreadable"
            found.append({"job": str(job), "status": "failed", "message": message})
        elif (job / ".hydra").is_dir() and not (job / RESULT_FILE).is_file():  # killed
            found.append({"job": str(job), "status": "did not finish", "message": ""})
    return found


class SweepFailureSummary(Callback):
    """At the end of a multirun: list failed jobs, write ``failures.json``, exit status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        failures = sweep_failures(sweep_dir)
        if not failures:
            return
        write_json_atomic(sweep_dir / "failures.json", failures)
        lines = [f"{len(failures)} job(s) of the sweep in {sweep_dir} did not succeed:"]
        lines += [f"  {f['job']}: {f['status']}. {f['message']}".rstrip() for f in failures]
        lines.append(f"Each failed job's {FAILURE_FILE} holds the end of its log.")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(1)
