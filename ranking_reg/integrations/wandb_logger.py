"""The W&B logger of ``logger=wandb``: W&B never costs a run, and a resumed run stays one W&B run.

:class:`ResilientWandbLogger` is Lightning's ``WandbLogger`` plus three things it lacks:

- **bounded start, offline fallback.** ``wandb.init`` waits ``init_timeout`` seconds (wandb's
  own default: 90) for the server; when it fails (unreachable or silent server, refused key: any
  ``wandb.Error``) the half-made run is torn down and the run starts again *offline* with the
  same id, name, config and folder, after one warning line with the ``wandb sync`` command that
  uploads it later. Lightning's logger lets the error end the run before training. (A server
  that never answers also delays wandb's own error reports: ~2 s when going offline, ~10 s at
  process exit; ``WANDB_ERROR_REPORTING=false`` turns them off.)
- **bounded finish.** ``finish_timeout`` seconds for the last uploads (wandb's default: wait
  forever); ``finish_wandb()`` then warns with the ``wandb sync`` command. While the server is
  away mid-run, metrics still go to the run's local transaction log (``run-<id>.wandb``).
- **one W&B run per run folder.** The run id is kept in ``<save_dir>/wandb_run_id.txt`` (written
  when the run starts) and in every checkpoint (``checkpoint["wandb_run_id"]``, by
  :class:`WandbRunIdCallback`). A run started again in the same folder, or resumed from a
  checkpoint of ours (``resume_checkpoint``), passes that id with ``resume="allow"``.

Lightning's ``WandbLogger`` already passes ``resume="allow"``; this module only chooses the id.
wandb is imported when the run starts, never by importing this module.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.wandb import WandbLogger

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id.txt"
CHECKPOINT_KEY = "wandb_run_id"
DEFAULT_INIT_TIMEOUT = 30.0
DEFAULT_FINISH_TIMEOUT = 300.0
_ID_ALPHABET = string.ascii_lowercase + string.digits  # wandb's own run ids: 8 of these


def new_run_id() -> str:
    """A fresh W&B run id (8 lowercase letters and digits, like ``wandb.util.generate_id``)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def read_run_id(folder: str | Path | None) -> str | None:
    """The W&B run id stored in ``folder/wandb_run_id.txt``, or None."""
    if folder is None:
        return None
    path = Path(folder) / RUN_ID_FILE
    try:
        run_id = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return run_id or None


def write_run_id(folder: str | Path, run_id: str) -> None:
    """Store ``run_id`` in ``folder/wandb_run_id.txt`` (a run started again there reuses it)."""
    path = Path(folder) / RUN_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n", encoding="utf-8")


def checkpoint_run_id(checkpoint: str | Path | None) -> str | None:
    """The W&B run id saved in a checkpoint of ours (``checkpoint["wandb_run_id"]``), or None.

    A checkpoint saved without it (another logger, an older run) falls back to the
    ``wandb_run_id.txt`` of its run folder (``<run dir>/checkpoints/<name>.ckpt``).
    """
    if checkpoint is None or not Path(checkpoint).is_file():
        return None
    import torch

    try:
        # mmap: the weights are not read; weights_only: nothing in the file gets to run code
        state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # the resume itself reports an unreadable file
        log.debug("no W&B run id from %s: %s", checkpoint, error)
        state = {}
    run_id = state.get(CHECKPOINT_KEY) if isinstance(state, Mapping) else None
    return str(run_id) if run_id else read_run_id(Path(checkpoint).resolve().parent.parent)


def _reason(error: BaseException) -> str:
    """The error on one line, without wandb's hint to raise init_timeout (ours is in the yaml)."""
    lines = []
    for line in str(error).strip().splitlines():
        if line.startswith("Consider increasing"):
            break
        lines.append(line.strip())
    return f"{type(error).__name__}: {' '.join(lines)}".rstrip(": ")


class ResilientWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` with an offline fallback, bounded waits and a stable run id.

    Args:
        init_timeout: seconds ``wandb.init`` waits for the server before the run goes offline.
        finish_timeout: seconds ``run.finish()`` waits for the last uploads (0: no limit).
        resume_checkpoint: the checkpoint a resumed run starts from; its W&B run id is reused.
        **kwargs: ``WandbLogger``'s arguments (``save_dir``, ``offline``, ``id``, ``name``, ...)
            and ``wandb.init``'s; an explicit ``id``/``version`` wins over a stored one.
    """

    def __init__(
        self,
        *args: Any,
        init_timeout: float = DEFAULT_INIT_TIMEOUT,
        finish_timeout: float = DEFAULT_FINISH_TIMEOUT,
        resume_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Lightning passes anonymous=None, which wandb 0.31 warns about on every run
            self._wandb_init.pop("anonymous", None)
        settings = dict(self._wandb_init.get("settings") or {})
        settings.update(
            init_timeout=float(init_timeout),
            finish_timeout=float(finish_timeout),
            # finish_wandb() catches the TimeoutError to print the `wandb sync` command
            finish_timeout_raises=True,
        )
        self._wandb_init["settings"] = settings
        if not self._id:
            self._id = (
                checkpoint_run_id(resume_checkpoint) or read_run_id(self._save_dir) or new_run_id()
            )
            self._wandb_init["id"] = self._id
        self.fell_back_offline = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The W&B run, started on first use: online, or offline when the server fails."""
        if self._experiment is None:
            import wandb

            if self._offline or wandb.run is not None:
                run = super().experiment
            else:
                try:
                    run = super().experiment
                # Lightning's WandbLogger lets these end the run; we go offline instead
                except (wandb.errors.Error, TimeoutError, ConnectionError) as error:
                    run = self._start_offline(error)
            if self._save_dir is not None and getattr(run, "id", None):
                write_run_id(self._save_dir, run.id)
        return self._experiment

    def _start_offline(self, error: BaseException) -> Any:
        """Tear the failed online run down and start it again offline (same id, name, config)."""
        import wandb

        # The failed init leaves its stream registered in wandb-core under the run id ("run ID
        # ... is in use" on a second init, and its ServerInformFinish makes that init hang):
        # teardown shuts the service down, the next init starts a fresh one (~0.5 s). No other
        # run is live here (the logger reuses a live wandb.run instead of calling init).
        wandb.teardown()
        self._wandb_init["mode"] = "offline"
        run = super().experiment
        self.fell_back_offline = True
        sync_dir = run.settings.sync_dir
        log.warning(
            "W&B could not start the run online (init_timeout=%gs; %s); logging offline to %s."
            " Upload it later with: wandb sync %s",
            self._wandb_init["settings"]["init_timeout"],
            _reason(error),
            sync_dir,
            sync_dir,
        )
        return run


class WandbRunIdCallback(Callback):
    """Saves the W&B run id of the trainer's ``WandbLogger`` in every checkpoint
    (``checkpoint["wandb_run_id"]``), so that a run resumed from it, in any folder, continues
    the same W&B run (``ResilientWandbLogger(resume_checkpoint=...)``)."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[CHECKPOINT_KEY] = str(logger.version)
                return
