"""Test metrics of a checkpoint: ``python -m ranking_reg.evaluate ckpt_path=... [data=...]``.

The model is rebuilt from the run config stored in the checkpoint. The data is the checkpoint's
own dataset unless ``data=...`` (or any ``data.*`` key) is given on the command line, so a model
can be evaluated on another configured dataset: retrieval metrics always, classification metrics
when the class count matches. Writes ``metrics.json`` into the Hydra output folder.
"""

from __future__ import annotations

import os

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ranking_reg.lightning.module import RankingRegModule
from ranking_reg.reporting.metrics_table import format_metrics_table
from ranking_reg.train import CONFIG_PATH, instantiate_all
from ranking_reg.utils.errors import ConfigError, report_user_errors
from ranking_reg.utils.io import write_json_atomic


def _data_overridden() -> bool:
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        return False
    return any(o.lstrip("+~").split("=")[0].split(".")[0] == "data" for o in overrides)


def evaluate(cfg: DictConfig, data_from_checkpoint: bool = True) -> dict[str, float]:
    """Test ``cfg.ckpt_path`` and write ``metrics.json``; returns the metrics."""
    if not cfg.ckpt_path or not os.path.isfile(cfg.ckpt_path):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not a checkpoint file. Usage: python -m"
            " ranking_reg.evaluate ckpt_path=<run dir>/checkpoints/best-....ckpt [data=...]"
        )
    try:
        checkpoint = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=False)
        hparams = checkpoint["hyper_parameters"]
    except Exception as error:  # any unreadable file is the user's to fix
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} could not be read as a ranking_reg checkpoint"
            f" ({type(error).__name__}); give a .ckpt written by python -m ranking_reg.train."
        ) from None
    trained = OmegaConf.create(hparams["cfg"])
    data_cfg = trained.data if data_from_checkpoint else cfg.data
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(data_cfg)
    datamodule.setup("test")
    model = RankingRegModule(**hparams)  # the checkpoint is already in memory: no second read
    model.load_state_dict(checkpoint["state_dict"])
    if datamodule.num_classes != model.num_classes:
        # another dataset: only the embedding can be evaluated
        model.num_classes = datamodule.num_classes
        model.net.classifier = torch.nn.Linear(model.net.classifier.in_features, model.num_classes)
        model.skip_classification = True
    trainer = instantiate(
        cfg.trainer, logger=instantiate_all(cfg.get("logger")) or False, callbacks=[]
    )
    trainer.test(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if getattr(model, "skip_classification", False):
        metrics = {
            k: v for k, v in metrics.items() if not k.split("/")[-1].endswith(("acc", "acc_best"))
        }
    if trainer.is_global_zero:
        write_json_atomic(os.path.join(cfg.paths.output_dir, "metrics.json"), metrics)
        print(format_metrics_table(metrics, title=f"metrics of {cfg.ckpt_path}"))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@report_user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg, data_from_checkpoint=not _data_overridden())


if __name__ == "__main__":
    main()
