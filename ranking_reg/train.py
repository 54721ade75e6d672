"""Train and test one configuration: ``python -m ranking_reg.train [overrides]`` (also ``-m``).

Fits a TwoHeadNet with the configured regularizer, then tests the best checkpoint and writes
``metrics.json`` (flat, ``test/...`` keys), ``checkpoints/last.ckpt`` (+ best) and the logger's
files into the Hydra output folder. Returns the best value of ``monitor`` (``val/acc``) so Hydra
sweepers (Optuna) can optimise it. ``ckpt_path=<run>/checkpoints/last.ckpt`` resumes a run.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from ranking_reg.integrations.wandb_utils import finish_wandb, register_resolvers, resolved_config
from ranking_reg.lightning.checkpoint_io import AtomicCheckpointIO
from ranking_reg.lightning.module import RankingRegModule
from ranking_reg.reporting.metrics_table import format_metrics_table
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import ConfigError, report_user_errors
from ranking_reg.utils.io import write_json_atomic
from ranking_reg.utils.paths import CONFIG_DIR

log = logging.getLogger(__name__)
CONFIG_PATH = str(CONFIG_DIR)


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a mapping group (callbacks, logger)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def build_trainer(cfg: DictConfig, extra_callbacks: list[Any] | None = None) -> L.Trainer:
    callbacks = instantiate_all(cfg.get("callbacks")) + list(extra_callbacks or [])
    loggers = instantiate_all(cfg.get("logger"))
    if not loggers:  # logger=none: Lightning refuses an lr monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )


def _checkpoint_for_test(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    return best or None


def run(cfg: DictConfig, extra_callbacks: list[Any] | None = None) -> dict[str, float]:
    """Fit, test and write ``metrics.json``; returns the metrics (``test/...``, ``val/..._best``)."""
    validate_config(cfg)
    if cfg.ckpt_path is not None and not os.path.isfile(cfg.ckpt_path):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} does not exist. Give the path of a checkpoint, e.g."
            " <run dir>/checkpoints/last.ckpt, or leave ckpt_path=null to start a new run."
        )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    resolved = resolved_config(cfg)
    model = RankingRegModule(
        resolved, datamodule.num_classes, train_class_counts=datamodule.train_class_counts
    )
    trainer = build_trainer(cfg, extra_callbacks)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    metrics: dict[str, float] = {}
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_score is not None:
        metrics[f"{cfg.monitor}_best"] = float(callback.best_model_score)
    if cfg.get("test", True):
        trainer.test(model, datamodule=datamodule, ckpt_path=_checkpoint_for_test(trainer))
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        )
    if trainer.is_global_zero:
        output_dir = cfg.paths.output_dir
        write_json_atomic(os.path.join(output_dir, "metrics.json"), metrics)
        print(format_metrics_table(metrics, title=f"metrics ({output_dir})"))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    finally:  # each multirun job must be its own W&B run (DESIGN §6)
        finish_wandb()
    return metrics.get(f"{cfg.monitor}_best")


register_resolvers()

if __name__ == "__main__":
    main()
