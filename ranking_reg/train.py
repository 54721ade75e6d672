"""Train and test one configuration: ``python -m ranking_reg.train [overrides]`` (also ``-m``).

Composes the objects of the run (data module, LightningModule, Trainer) from the config, fits,
tests the weights ``test_ckpt`` names (the best checkpoint by ``monitor``, or the final weights
when there is no validation split) and writes ``metrics.json`` (flat, ``test/...`` keys),
``checkpoints/last.ckpt`` (+ best) and the logger's files into the Hydra output folder. Returns
the best value of ``monitor`` (``val/acc``) so Hydra sweepers (Optuna) can optimise it.

``ckpt_path=<run>/checkpoints/last.ckpt`` resumes a run; ``ckpt_path=auto`` resumes from the run
folder's own ``last.ckpt`` when there is one (the folder is named after the command, so the same
command continues a killed run) and starts fresh otherwise. A checkpoint is read with
``weights_only=True`` and must fit the model this config builds. The run folder is locked while
the run lives; a non-finite loss stops the run (exit status 2, last.ckpt kept); in a multirun a
failed job is recorded in its folder and the sweep goes on (:mod:`ranking_reg.utils.sweep_failures`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from ranking_reg.integrations.wandb_utils import finish_wandb, register_resolvers
from ranking_reg.reporting.metrics_table import format_metrics_table
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import ConfigError
from ranking_reg.utils.hydra_utils import build, resolved_config
from ranking_reg.utils.io import write_json_atomic
from ranking_reg.utils.paths import CONFIG_DIR
from ranking_reg.utils.run_folder import AUTO, RunFolderLock, last_checkpoint
from ranking_reg.utils.sweep_failures import tolerate_job_failures

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ranking_reg.lightning.module import RankingRegModule

# torch and Lightning are imported after the config is checked: a config error costs no seconds


def build_module(cfg: DictConfig, datamodule: Any) -> RankingRegModule:
    """The LightningModule of ``cfg.model`` for the classes of ``datamodule`` (set up)."""
    cfg.model.net.num_classes = datamodule.num_classes
    module = build(cfg.model, "model")
    module.remember_run_config(resolved_config(cfg))
    module.hparams["classes"] = [str(c) for c in datamodule.train_dataset.classes]
    return module


def has_validation(datamodule: Any) -> bool:
    """Whether the data has a validation split (``data.val_fraction=0`` trains on all of train)."""
    return bool(getattr(datamodule, "has_validation", True))


def selected_on_test(datamodule: Any) -> bool:
    """Whether the test split chose the checkpoint (selection=best_test)."""
    return getattr(datamodule, "val_source", "train") == "test"


def weights_to_test(test_ckpt: str, datamodule: Any) -> str:
    """``best`` or ``last`` for ``test_ckpt=auto|best|last`` (auto: best when validated)."""
    validation = has_validation(datamodule)
    if test_ckpt == "auto":
        return "best" if validation else "last"
    if test_ckpt == "best" and not validation:
        raise ConfigError(
            "test_ckpt=best needs a validation split to pick the best checkpoint, but"
            " data.val_fraction=0 trains on the whole training split; use test_ckpt=last (or"
            " auto) to test the final weights, or give data.val_fraction > 0."
        )
    return test_ckpt


def checkpoint_to_resume(ckpt_path: str | None, output_dir: str) -> str | None:
    """The checkpoint ``fit`` resumes from: ``ckpt_path`` itself, or for ``auto`` the run
    folder's ``last.ckpt`` when there is one (None: a new run)."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == AUTO:
        last = last_checkpoint(output_dir)
        if last is None:
            log.info(
                "ckpt_path=auto: no checkpoints/last.ckpt in %s, starting a new run", output_dir
            )
            return None
        log.info("ckpt_path=auto: continuing the run from %s", last)
        return str(last)
    if not os.path.isfile(ckpt_path):
        raise ConfigError(
            f"ckpt_path={ckpt_path} does not exist. Give the path of a checkpoint, e.g."
            " <run dir>/checkpoints/last.ckpt, ckpt_path=auto to continue this run folder's own"
            " run, or leave ckpt_path=null to start a new run."
        )
    return ckpt_path


def run(cfg: DictConfig, extra_callbacks: list[Any] | None = None) -> dict[str, float]:
    """Fit, test and write ``metrics.json``; returns the metrics (``test/...``, ``val/..._best``).

    The run folder (``paths.output_dir``) is locked for the whole run: a second run started in
    it is refused (:class:`~ranking_reg.utils.run_folder.RunFolderLock`)."""
    validate_config(cfg)
    with RunFolderLock(cfg.paths.output_dir):
        return _fit_and_test(cfg, extra_callbacks)


def _fit_and_test(cfg: DictConfig, extra_callbacks: list[Any] | None) -> dict[str, float]:
    import lightning as L

    from ranking_reg.lightning.checkpoint_io import check_resumable, read_checkpoint
    from ranking_reg.lightning.guards import NonFiniteLossGuard
    from ranking_reg.lightning.trainer import best_score, build_trainer, checkpoint_for_test

    resume = checkpoint_to_resume(cfg.ckpt_path, cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    test_ckpt = weights_to_test(cfg.get("test_ckpt", "auto"), datamodule)
    model = build_module(cfg, datamodule)
    if resume is not None:  # one paragraph for a foreign, truncated or mismatched file
        # mapped, not read: fit reads the weights again when it resumes
        check_resumable(read_checkpoint(resume, mmap=True), model.state_dict(), resume)
    callbacks = [NonFiniteLossGuard(), *(extra_callbacks or [])]
    trainer = build_trainer(cfg, callbacks, monitoring=has_validation(datamodule))
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)

    metrics: dict[str, float] = {}
    best = best_score(trainer, cfg.monitor)
    if best is not None:
        metrics[f"{cfg.monitor}_best"] = best
    if cfg.get("test", True):
        # best: the checkpoint kept by `monitor`; last: the final weights (in memory)
        ckpt = checkpoint_for_test(trainer, cfg.monitor) if test_ckpt == "best" else None
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        )
    title = f"metrics ({cfg.paths.output_dir})"
    if selected_on_test(datamodule) and metrics:
        metrics["test/selected_on_test"] = 1.0
        title += " -- checkpoint selected on the TEST split (selection=best_test): optimistic"
    if trainer.is_global_zero:
        write_json_atomic(os.path.join(cfg.paths.output_dir, "metrics.json"), metrics)
        print(format_metrics_table(metrics, title=title))
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@tolerate_job_failures
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    finally:  # each multirun job must be its own W&B run
        finish_wandb()
    return metrics.get(f"{cfg.monitor}_best")


register_resolvers()

if __name__ == "__main__":
    main()
