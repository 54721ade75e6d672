"""PlotCallback: draw the evaluation pictures (``ranking_reg.reporting.plots``) after each val/test epoch.

The LightningModule leaves ``pl_module.eval_outputs`` (embeddings, labels, logits, dataset
indices, already gathered, on CPU) in its ``on_{validation,test}_epoch_end``. Lightning 2.x calls
a callback's hook *before* the module's hook of the same name (``_call_callback_hooks`` then
``_call_lightning_module_hook`` in ``loops/evaluation_loop.py``), so this callback draws in
``on_validation_end`` / ``on_test_end``, which run after every epoch-end hook of the loop.

Each picture goes to ``<plots_dir>/<stage>_<name>_epoch<NNN>.png`` plus a ``..._latest.png``
copy (written whole via a temp file and ``os.replace``), whatever the logger, and to every
W&B or TensorBoard logger as ``<stage>/<name>`` at the trainer's global step. Only global
rank 0 draws; the sanity-check pass is skipped.
"""

from __future__ import annotations

import io
import os
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from ranking_reg.reporting import plots
from ranking_reg.utils.errors import ConfigError
from ranking_reg.utils.io import atomic_writer

PLOT_NAMES = plots.PLOT_NAMES


def render_plots(
    outputs: dict[str, Any],
    dataset: Any = None,
    train_counts: list[int] | None = None,
    n_queries: int = 16,
    n_neighbors: int = 5,
    max_confusion_classes: int = 50,
    projection: str = "pca",
    max_points: int = 2000,
    thumb_size: int = 64,
    seed: int = 0,
) -> dict[str, Image.Image]:
    """All pictures of one evaluation, keyed by ``PLOT_NAMES``.

    ``outputs`` is the module's ``eval_outputs``; ``dataset`` (optional) supplies ``classes``
    and ``load_image(i)`` for the retrieval grid, which is left out without it. Without
    ``train_counts`` the per-class chart orders classes by id (all counts equal).
    """
    stage = outputs.get("stage", "eval")
    emb = _numpy(outputs["embeddings"]).astype(np.float32)
    labels = _numpy(outputs["labels"]).astype(np.int64)
    logits = _numpy(outputs["logits"])
    indices = _numpy(outputs.get("indices", np.arange(len(labels)))).astype(np.int64)
    n_classes = int(logits.shape[1])
    preds = logits.argmax(1)
    names = list(getattr(dataset, "classes", [])) or None
    if names is not None and len(names) != n_classes:
        names = None
    counts = list(train_counts) if train_counts is not None else []
    if len(counts) != n_classes:
        counts = [1] * n_classes  # unknown frequencies: classes in id order

    images: dict[str, Image.Image] = {}
    if dataset is not None and hasattr(dataset, "load_image") and len(labels) > 1:
        queries = plots.select_queries(labels, n_queries, seed=seed)
        neighbors = plots.nearest_neighbors(emb, queries, n_neighbors)
        correct = labels[neighbors] == labels[queries][:, None]

        def caption(i: int) -> str:
            return names[labels[i]] if names else str(labels[i])

        images["retrieval_grid"] = plots.retrieval_grid(
            [dataset.load_image(int(indices[q])) for q in queries],
            [[dataset.load_image(int(indices[j])) for j in row] for row in neighbors],
            correct,
            thumb_size=thumb_size,
            captions=[
                [caption(q)] + [caption(j) for j in row]
                for q, row in zip(queries, neighbors, strict=True)
            ],
        )
    accuracy = plots.per_class_accuracy(labels, preds, n_classes)
    images["per_class_accuracy"] = plots.per_class_accuracy_chart(
        accuracy, counts, names, title=f"{stage} per-class accuracy"
    )
    cm = plots.confusion_matrix(labels, preds, n_classes)
    shown = plots.select_confused_classes(cm, max_confusion_classes)
    images["confusion_matrix"] = plots.confusion_matrix_plot(
        cm, shown, names, title=f"{stage} confusion"
    )
    coords, idx = plots.project_2d(emb, projection, max_points=max_points, seed=seed)
    images["embedding_projection"] = plots.embedding_projection_plot(
        coords, labels[idx], n_classes, names, title=f"{stage} embeddings, {projection.upper()}"
    )
    return images


def save_png(image: Image.Image, *paths: str) -> None:
    """Encode ``image`` once and write it to each of ``paths`` whole or not at all."""
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    for path in paths:
        with atomic_writer(path, "wb") as handle:
            handle.write(encoded.getvalue())


class PlotCallback(pl.Callback):
    """Draws ``PLOT_NAMES`` after validation (every ``every_n_epochs`` epochs) and after test."""

    def __init__(
        self,
        plots_dir: str,
        every_n_epochs: int = 1,
        n_queries: int = 16,
        n_neighbors: int = 5,
        max_confusion_classes: int = 50,
        projection: str = "pca",
        max_points: int = 2000,
        thumb_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if projection not in plots.PROJECTIONS:
            raise ConfigError(
                f"callbacks.plots.projection={projection!r} is not a projection; use one of"
                f" {plots.PROJECTIONS}."
            )
        for key, value in {
            "every_n_epochs": every_n_epochs,
            "n_queries": n_queries,
            "n_neighbors": n_neighbors,
            "max_confusion_classes": max_confusion_classes,
            "max_points": max_points,
            "thumb_size": thumb_size,
        }.items():
            if int(value) < 1:
                raise ConfigError(f"callbacks.plots.{key}={value} must be a positive integer.")
        self.plots_dir = str(plots_dir)
        self.every_n_epochs = int(every_n_epochs)
        self.options = {
            "n_queries": int(n_queries),
            "n_neighbors": int(n_neighbors),
            "max_confusion_classes": int(max_confusion_classes),
            "projection": projection,
            "max_points": int(max_points),
            "thumb_size": int(thumb_size),
            "seed": int(seed),
        }
        self.written: list[str] = []  # paths written, newest last (for tests and summaries)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._draw(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        outputs = getattr(pl_module, "eval_outputs", None)
        if not outputs or outputs.get("stage") != stage:
            rank_zero_warn(
                f"PlotCallback: the module left no {stage!r} eval_outputs; no pictures drawn."
            )
            return
        datamodule = getattr(trainer, "datamodule", None)
        dataset = None
        counts = None
        if datamodule is not None:
            if hasattr(datamodule, "eval_dataset"):
                dataset = datamodule.eval_dataset(stage)
            counts = getattr(datamodule, "train_class_counts", None)
        try:
            images = render_plots(outputs, dataset, counts, **self.options)
        except Exception as error:  # a picture is not worth a long training run
            rank_zero_warn(f"PlotCallback: drawing the {stage} pictures failed: {error!r}")
            return
        for name, image in images.items():
            paths = [
                os.path.join(self.plots_dir, f"{stage}_{name}_{suffix}.png")
                for suffix in (f"epoch{trainer.current_epoch:03d}", "latest")
            ]
            save_png(image, *paths)
            self.written.extend(paths)
            log_image(trainer, f"{stage}/{name}", image)


def log_image(trainer: pl.Trainer, key: str, image: Image.Image) -> None:
    """Send ``image`` to every W&B and TensorBoard logger of ``trainer`` at its global step."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            pixels = np.asarray(image.convert("RGB"))
            logger.experiment.add_image(key, pixels, trainer.global_step, dataformats="HWC")


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
        return value.numpy()
    return np.asarray(value)
