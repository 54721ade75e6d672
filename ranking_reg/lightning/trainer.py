"""The Lightning Trainer of a run, built from the ``trainer``, ``callbacks`` and ``logger`` groups."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from ranking_reg.lightning.checkpoint_io import AtomicCheckpointIO
from ranking_reg.utils.hydra_utils import build


def instantiate_all(group: DictConfig | None, key: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a mapping group (callbacks, logger)."""
    if not group:
        return []
    return [
        build(entry, f"{key}.{name}")
        for name, entry in group.items()
        if entry and "_target_" in entry
    ]


def build_trainer(
    cfg: DictConfig,
    extra_callbacks: list[Any] | None = None,
    checkpointing: bool = True,
    monitoring: bool = True,
) -> L.Trainer:
    """The configured Trainer; checkpoints are written atomically.

    ``checkpointing=False`` drops every ModelCheckpoint (evaluate); ``monitoring=False`` drops
    the ones that monitor a metric (no validation split: nothing to monitor), keeping last.ckpt.
    """
    callbacks = instantiate_all(cfg.get("callbacks"), "callbacks") + list(extra_callbacks or [])
    loggers = instantiate_all(cfg.get("logger"), "logger")
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        from ranking_reg.integrations.wandb_logger import WandbRunIdCallback

        callbacks.append(WandbRunIdCallback())  # the W&B run id in every checkpoint
    if not loggers:  # logger=none: Lightning refuses an lr monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not checkpointing:
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
    if not monitoring:
        callbacks = [
            c for c in callbacks if not (isinstance(c, ModelCheckpoint) and c.monitor is not None)
        ]
    # without validation nothing is validated (no sanity check either): Lightning would warn
    no_validation = {} if monitoring else {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    return build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **no_validation,
    )


def checkpoint_for_test(trainer: L.Trainer, monitor: str) -> str | None:
    """The best checkpoint by ``monitor`` (the ModelCheckpoint that monitors it, wherever it
    stands in the callback list); None when no such checkpoint was written."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor == monitor:
            return callback.best_model_path or None
    return None


def best_score(trainer: L.Trainer, monitor: str) -> float | None:
    """The best value of ``monitor`` kept by its ModelCheckpoint, if any."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor == monitor:
            score = callback.best_model_score
            return None if score is None else float(score)
    return None
