"""``predict logger=wandb``: the predictions as a ``wandb.Table`` with image thumbnails.

One row per input (the first ``wandb_table.max_rows``), in input order, with the columns of
:data:`COLUMNS`: the path, a thumbnail (``wandb.Image`` of the RGB image, longer side at most
``wandb_table.thumb_size`` pixels), the top-1 label, name and probability, the top classes as
``name (prob)`` text, the neighbours' paths, labels and distances (lists, nearest first), and the
error of an unreadable input (its image and class cells empty). Logged under the key
``predictions`` into a run made from ``conf/logger/wandb.yaml`` (offline unless an API key is
configured, as for training), named ``predict-<the checkpoint's run name>`` with job type
``predict``; the run is finished before returning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ranking_reg.integrations.wandb_utils import finish_wandb, run_name, run_tags
from ranking_reg.utils.hydra_utils import build

COLUMNS = (
    "path",
    "image",
    "label",
    "name",
    "prob",
    "top_classes",
    "neighbor_paths",
    "neighbor_labels",
    "neighbor_distances",
    "error",
)


def thumbnail(path: str, size: int) -> Any:
    """The image at ``path`` shrunk to fit ``size`` x ``size``, or None when unreadable."""
    from ranking_reg.inference.inputs import load_image
    from ranking_reg.utils.errors import DataError

    try:
        image = load_image(path)
    except DataError:
        return None
    image.thumbnail((size, size))
    return image


def table_rows(rows: Sequence[dict[str, Any]], thumb_size: int) -> list[list[Any]]:
    """The table's rows (:data:`COLUMNS`) of prediction records."""
    import wandb

    data = []
    for row in rows:
        if "error" in row:
            data.append([row["path"], None, None, None, None, None, [], [], [], row["error"]])
            continue
        top = row["classes"][0]
        image = thumbnail(row["path"], thumb_size)
        neighbors = row.get("neighbors", [])
        data.append(
            [
                row["path"],
                wandb.Image(image) if image is not None else None,
                top["label"],
                top["name"],
                top["prob"],
                ", ".join(f"{c['name']} ({c['prob']:.3f})" for c in row["classes"]),
                [n["path"] for n in neighbors],
                [n["label"] for n in neighbors],
                [n["distance"] for n in neighbors],
                None,
            ]
        )
    return data


def log_predictions(
    cfg: DictConfig, rows: Sequence[dict[str, Any]], run_config: dict[str, Any]
) -> str:
    """Log the predictions table into a new W&B run (module docstring); returns its folder."""
    import wandb

    trained = OmegaConf.create(run_config)
    logger = build(
        cfg.logger.wandb,
        "logger",
        name=f"predict-{run_name(trained)}",
        tags=run_tags(trained),
        job_type="predict",
    )
    try:
        run = logger.experiment
        limit = int(cfg.wandb_table.max_rows)
        data = table_rows(rows[:limit], int(cfg.wandb_table.thumb_size))
        run.log({"predictions": wandb.Table(columns=list(COLUMNS), data=data)})
        return str(run.dir)
    finally:
        finish_wandb()
