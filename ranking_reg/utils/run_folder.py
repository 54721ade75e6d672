"""The run folder: its name (stable for ``ckpt_path=auto``), its lock, and what resumes in it.

``ckpt_path=auto`` means "continue this run if it was started before": the run folder must then
be the same each time the same command runs, so :func:`run_folder_name` (the ``rr_run_folder``
resolver of ``conf/hydra/default.yaml``) names it ``auto-<hash>`` after the command's arguments
instead of the start time. A multirun's folder is ``<sweep dir>/<job number>``; with
``ckpt_path=auto`` the sweep dir is named the same way, so re-running a sweep (or a SLURM job
requeued after a timeout or a preemption) finds each job's own folder.

:class:`RunFolderLock` keeps a second process from training into a folder that a live run
holds: an exclusive ``flock`` on ``<run dir>/.lock``, released by the kernel when the process
ends, even by SIGKILL, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
from pathlib import Path
from typing import IO

from omegaconf import OmegaConf

from ranking_reg.utils.errors import ConfigError

AUTO = "auto"
LOCK_NAME = ".lock"
LAST_CHECKPOINT = "last.ckpt"


def _asks_auto(overrides: list[str]) -> bool:
    return any(o.split("=", 1) == ["ckpt_path", AUTO] for o in overrides)


def auto_folder_name(arguments: list[str]) -> str:
    """``auto-<12 hex>``: a sha256 of the sorted command-line arguments (the order in which
    they were typed does not matter)."""
    digest = hashlib.sha256("\n".join(sorted(arguments)).encode("utf-8")).hexdigest()
    return f"{AUTO}-{digest[:12]}"


def run_folder_name(stamp: str) -> str:
    """The last part of the run (or sweep) folder: ``stamp`` (the start time), or
    :func:`auto_folder_name` of the command's arguments when they say ``ckpt_path=auto``.

    The arguments are the process's own (``sys.argv``), not ``hydra.overrides.task``: in a
    multirun each job's config holds the job's overrides, and the sweep folder must be named
    after the sweep's command. Jobs started in other processes (joblib, SLURM) get the value the
    launching process resolved: the resolver is cached and Hydra copies the cache into each
    job's config.
    """
    arguments = [str(a) for a in sys.argv[1:]]
    return auto_folder_name(arguments) if _asks_auto(arguments) else stamp


def register_run_folder_resolver() -> None:
    """Register ``${rr_run_folder:<stamp>}`` (idempotent): every entry point's Hydra config
    names its folder through it.

    Cached (see :func:`run_folder_name`), so a run resolves its folder name once.
    """
    OmegaConf.register_new_resolver("rr_run_folder", run_folder_name, replace=True, use_cache=True)


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """``<output_dir>/checkpoints/last.ckpt`` when it exists (the run to continue), else None."""
    path = Path(output_dir) / "checkpoints" / LAST_CHECKPOINT
    return path if path.is_file() else None


def is_main_process() -> bool:
    """Whether this process starts the run (rank 0 of every launcher), read from the environment
    before any Trainer exists: Lightning's DDP launcher starts the other ranks with LOCAL_RANK,
    torchrun sets RANK and SLURM sets SLURM_PROCID for each task of a job."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        if os.environ.get(name, "0") not in ("", "0"):
            return False
    return True


class RunFolderLock:
    """An exclusive lock on a run folder for the life of the run (a context manager).

    Only the main process (:func:`is_main_process`) locks: the other ranks of the same run share
    the folder by design. Entering raises :class:`ConfigError` when another live process holds
    the folder.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._stream: IO[str] | None = None

    def __enter__(self) -> RunFolderLock:
        if not is_main_process():
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        stream = open(self.folder / LOCK_NAME, "a+", encoding="utf-8")
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            stream.seek(0)
            holder = stream.read().strip() or "another process"
            stream.close()
            raise ConfigError(
                f"the run folder {self.folder} is in use by a running job ({holder}); two runs"
                " in one folder would interleave their checkpoints. Wait for it to end, or give"
                " this run its own folder (hydra.run.dir=..., or leave ckpt_path=auto out)."
            ) from None
        stream.seek(0)
        stream.truncate()
        stream.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        stream.flush()
        self._stream = stream
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            fcntl.flock(self._stream, fcntl.LOCK_UN)
            self._stream.close()
            self._stream = None
