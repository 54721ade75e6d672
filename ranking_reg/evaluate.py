"""Test metrics of a checkpoint: ``python -m ranking_reg.evaluate ckpt_path=... [data...]``.

The model is rebuilt from the run config stored in the checkpoint, with pretrained weights off
(the trained weights come from the checkpoint: nothing is fetched or opened). The data is the
checkpoint's own data config; ``data.<key>=value`` overrides replace single keys of it (e.g.
``data.root=/moved/data``), and only ``data=<name>`` switches to another configured dataset.
On a dataset whose classes differ from the trained ones only the embedding is evaluated
(retrieval metrics): a class head never scores classes it was not trained on. Writes
``metrics.json`` into the Hydra output folder.

``gallery=train`` (the default) also kNN-classifies the test split against the training split
of the evaluated data (``test/knn_acc@k``; with the class head, the softmax + kNN fusion
``test/fused_acc``, see :mod:`ranking_reg.metrics.knn_classify`); ``gallery=none`` skips it.
On classes the model never saw this is classification without retraining: a model trained with
``data.classes=first_half`` evaluated with ``data.classes=second_half`` reports retrieval and
kNN accuracy on the other half (no softmax or fused accuracy there). ``metrics.knn.ks`` /
``fuse_alpha`` / ``fuse_grid`` default to the checkpoint's own settings.
"""

from __future__ import annotations

import os
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from ranking_reg.data.choices import GALLERIES
from ranking_reg.reporting.metrics_table import format_metrics_table
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import ConfigError, report_user_errors
from ranking_reg.utils.hydra_utils import build, task_overrides
from ranking_reg.utils.io import write_json_atomic
from ranking_reg.utils.paths import CONFIG_DIR

FROM_CHECKPOINT = "_checkpoint"


def data_config(cfg: DictConfig, trained: dict[str, Any], overrides: list[str]) -> DictConfig:
    """The data config to evaluate on: the trained one with the ``data.*`` overrides applied,
    or ``cfg.data`` when a dataset was chosen (``data=<name>``)."""
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    trained_size = trained["data"]["img_size"]
    if "data.img_size" in keys and cfg.data.img_size != trained_size:
        raise ConfigError(
            f"data.img_size={cfg.data.img_size}: this checkpoint was trained at {trained_size}"
            " px and its embedding head is sized for that feature map; leave data.img_size out."
        )
    if cfg.data.get("name") is not None:  # data=<name>: another configured dataset
        data = cfg.data
    else:
        data = OmegaConf.create(trained["data"])
        for key in keys:
            if key.startswith("data."):
                value = OmegaConf.select(cfg, key)
                OmegaConf.update(data, key[len("data.") :], value, merge=False)
    data.img_size = trained_size  # the network's input size, whatever the dataset
    data.seed = int(cfg.seed)
    return data


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float]:
    """Test ``cfg.ckpt_path`` and write ``metrics.json``; returns the metrics."""
    if not cfg.ckpt_path:
        raise ConfigError(
            "ckpt_path is required. Usage: python -m ranking_reg.evaluate"
            " ckpt_path=<run dir>/checkpoints/best-....ckpt [data.root=...] [data=<name>]"
        )
    gallery = cfg.get("gallery", "train")
    if gallery not in GALLERIES:
        raise ConfigError(
            f"gallery={gallery}: expects train (kNN-classify the test split against the training"
            " split of the evaluated data) or none (no kNN metrics)."
        )
    validate_config(cfg)
    import lightning as L

    from ranking_reg.lightning.checkpoint_io import read_checkpoint
    from ranking_reg.lightning.module import RankingRegModule
    from ranking_reg.lightning.trainer import build_trainer

    checkpoint = read_checkpoint(cfg.ckpt_path)
    hparams = checkpoint["hyper_parameters"]
    module = RankingRegModule.from_checkpoint(checkpoint)
    L.seed_everything(cfg.seed, workers=True)
    data_cfg = data_config(cfg, hparams["run_config"], overrides or [])
    with open_dict(data_cfg):
        data_cfg.gallery = gallery
    datamodule = build(data_cfg, "data")
    datamodule.setup("test")
    classes = [str(c) for c in datamodule.test_dataset.classes]
    module.evaluator.classify = classes == list(hparams.get("classes") or [])
    knn = OmegaConf.select(cfg, "metrics.knn") or {}
    module.evaluator.configure_knn(knn.get("ks"), knn.get("fuse_alpha"), knn.get("fuse_grid"))
    trainer = build_trainer(cfg, checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)  # our table is printed below
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if trainer.is_global_zero:
        write_json_atomic(os.path.join(cfg.paths.output_dir, "metrics.json"), metrics)
        print(format_metrics_table(metrics, title=f"metrics of {cfg.ckpt_path}"))
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
@report_user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg, task_overrides())


if __name__ == "__main__":
    main()
