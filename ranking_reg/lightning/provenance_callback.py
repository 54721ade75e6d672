"""ProvenanceWriter: ``<run dir>/provenance.json``, what a run ran on and how it ended.

Written whole (:func:`~ranking_reg.utils.io.write_json_atomic`) by global rank 0 only:

- at fit start, ``status: running`` with the code (``git_commit``, ``git_dirty``), the
  ``config_hash``, the ``data_fingerprint`` (combined) and ``data_splits`` (per split: sha256,
  sample count), package ``versions``, ``hardware`` and ``started_at``;
- at the end, ``status: finished``, ``finished_at`` and ``seconds_per_train_step``. The end is
  the end of the test when the run config says one follows the fit (``test: true``, as train.py
  runs it; the fit's end is then ``fit_finished_at``), else the end of the fit;
- on an exception in fit or test (Ctrl-C included), ``status: failed``, ``finished_at`` and
  ``error``.

A run continued in its folder (``ckpt_path=auto``, a requeued job) starts a new record and keeps
the earlier ones' code, config and data hashes, times and status in ``previous_attempts``.

``seconds_per_train_step``: the mean wall time between the ends of two consecutive optimizer
steps of one training epoch (data loading, forward, backward, optimizer, the callbacks' batch
hooks). Left out: the first ``warmup_steps`` optimizer steps of the process (lazy
initialisation, allocator and cuDNN warm-up), the first step of every epoch (the loader
starting) and any step whose interval holds a validation loop (and its checkpoint).
``timed_train_steps`` says how many steps the mean covers; with none (e.g. a run of at most
``warmup_steps`` steps, or of one step per epoch) ``seconds_per_train_step`` is None.

What ``config_hash`` leaves out and how the data is fingerprinted:
:mod:`ranking_reg.utils.provenance` (``EXCLUDED_CONFIG_KEYS``, ``split_fingerprint``).
Whatever cannot be found (no git, an unreadable /proc, a module without its run config) is None,
with the reason under ``unavailable``; nothing here fails a run (see
:mod:`ranking_reg.utils.provenance`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import lightning.pytorch as pl

from ranking_reg.utils import provenance
from ranking_reg.utils.io import write_json_atomic

FILE_NAME = "provenance.json"
RUN_CONFIG_KEY = "run_config"  # where train.py stores the resolved run config (module hparams)

log = logging.getLogger(__name__)


class ProvenanceWriter(pl.Callback):
    """Writes ``<output_dir>/provenance.json`` at fit start, at the end and on failure."""

    def __init__(self, output_dir: str, warmup_steps: int = 2) -> None:
        super().__init__()
        if int(warmup_steps) < 0:
            raise ValueError(f"callbacks.provenance.warmup_steps={warmup_steps} must be >= 0")
        self.output_dir = str(output_dir)
        self.path = os.path.join(self.output_dir, FILE_NAME)
        self.warmup_steps = int(warmup_steps)
        self.record: dict[str, Any] = {}
        self._expects_test = False
        self._mark: float | None = None  # the end of the last step of this epoch
        self._last_step = 0
        self._steps = 0  # optimizer steps seen by this process
        self._timed_steps = 0
        self._timed_seconds = 0.0

    # -- the record -------------------------------------------------------------------------------
    def _collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        unavailable: dict[str, str] = {}
        record: dict[str, Any] = {"status": "running", "started_at": provenance.utc_now()}

        git, reason = provenance.safely(provenance.git_info)
        git = git or {"unavailable": reason}
        record["git_commit"] = git.get("git_commit")
        record["git_dirty"] = git.get("git_dirty")
        if git.get("unavailable"):
            unavailable["git"] = git["unavailable"]

        run_config = getattr(pl_module, "hparams", {}).get(RUN_CONFIG_KEY)
        if run_config is None:
            record["config_hash"] = None
            unavailable["config_hash"] = "the module holds no run config (hparams.run_config)"
        else:
            record["config_hash"], reason = provenance.safely(provenance.config_hash, run_config)
            if reason:
                unavailable["config_hash"] = reason
            self._expects_test = bool(run_config.get("test", False))

        data, reason = provenance.safely(
            provenance.data_fingerprints, getattr(trainer, "datamodule", None)
        )
        record["data_fingerprint"] = None if data is None else data["data_fingerprint"]
        record["data_splits"] = None if data is None else data["data_splits"]
        if reason:
            unavailable["data_fingerprint"] = reason

        record["versions"], reason = provenance.safely(provenance.package_versions)
        if reason:
            unavailable["versions"] = reason
        record["hardware"], reason = provenance.safely(provenance.hardware)
        if reason:
            unavailable["hardware"] = reason
        record.update(
            finished_at=None,
            seconds_per_train_step=None,
            timed_train_steps=0,
            warmup_steps=self.warmup_steps,
        )
        record["unavailable"] = unavailable
        return record

    def _safe_collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        try:
            return self._collect(trainer, pl_module)
        except Exception as error:  # each part is guarded; this is for the unforeseen
            log.warning("provenance: %s", error)
            reason = f"{type(error).__name__}: {error}"
            return {"status": "running", "started_at": provenance.utc_now(), "error": reason}

    def _write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not self.record:
            return
        try:
            write_json_atomic(self.path, self.record)
        except OSError as error:  # a full disk must not turn a finished run into a failed one
            log.warning("could not write %s: %s", self.path, error)

    def _end(self, trainer: pl.Trainer, status: str, error: BaseException | None = None) -> None:
        if not self.record:
            return
        self.record["status"] = status
        self.record["finished_at"] = provenance.utc_now()
        self.record["timed_train_steps"] = self._timed_steps
        self.record["seconds_per_train_step"] = (
            self._timed_seconds / self._timed_steps if self._timed_steps else None
        )
        if error is not None:
            self.record["error"] = f"{type(error).__name__}: {error}"[:1000]
        self._write(trainer)

    # -- hooks ------------------------------------------------------------------------------------
    def _earlier_attempts(self) -> list[dict[str, Any]]:
        """The attempts recorded in this folder before (a run continued with ckpt_path=auto or a
        requeued job): each one's code, data, times and status, oldest first."""
        try:
            with open(self.path, encoding="utf-8") as stream:
                earlier = json.load(stream)
        except (OSError, ValueError):
            return []
        if not isinstance(earlier, dict):
            return []
        kept = ("git_commit", "git_dirty", "config_hash", "data_fingerprint", "started_at")
        attempt = {key: earlier.get(key) for key in kept}
        attempt.update(finished_at=earlier.get("finished_at"), status=earlier.get("status"))
        return [*earlier.get("previous_attempts", []), attempt]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            previous = self._earlier_attempts()
            self.record = self._safe_collect(trainer, pl_module)
            if previous:
                self.record["previous_attempts"] = previous
            self._write(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # restored by now when resuming (not at fit start)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = None  # the epoch's first step includes the loader's start: not timed

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = None  # the interval holding a validation loop is not a step's time

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # accumulating gradients: no optimizer step yet
            return
        now = time.perf_counter()
        new_steps = step - self._last_step
        self._last_step = step
        self._steps += new_steps
        if self._mark is not None and self._steps > self.warmup_steps:
            self._timed_seconds += now - self._mark
            self._timed_steps += new_steps
        self._mark = now

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.record:  # not global rank 0
            return
        if self._expects_test:
            self.record["fit_finished_at"] = provenance.utc_now()
            self._write(trainer)
        else:
            self._end(trainer, "finished")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.record.get("status") == "running":
            self._end(trainer, "finished")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not self.record and trainer.is_global_zero:  # failed before fit start
            self.record = self._safe_collect(trainer, pl_module)
        self._end(trainer, "failed", exception)
