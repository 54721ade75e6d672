"""PlotCallback: draw the evaluation pictures (``ranking_reg.reporting.plots``) after each val/test epoch.

The LightningModule scores every evaluation with a :class:`~ranking_reg.metrics.Evaluator` and
hands the :class:`~ranking_reg.metrics.EvaluationResult` (embeddings, labels, logits, dataset
positions, gathered, on CPU) to the callbacks with
:func:`~ranking_reg.metrics.notify_evaluation_end`, which calls their ``on_evaluation_end``. An
explicit hand-off: nothing depends on the order in which Lightning runs the module's and the
callbacks' epoch-end hooks (it runs a callback's hook *before* the module's of the same name).

Each picture goes to ``<plots_dir>/<stage>_<name>_epoch<NNN>.png`` plus a ``..._latest.png``
copy (written whole via a temp file and ``os.replace``), whatever the logger, and to every
W&B or TensorBoard logger as ``<stage>/<name>`` at the trainer's global step. Only global
rank 0 draws; the sanity-check pass is skipped. Without a class head fitting the evaluated
classes (``result.logits`` is None) only the embedding pictures are drawn (the retrieval grids,
the pair distances and the projection); the worst-query grid needs the result's per-query AP@R
(``result.per_query``, filled by the evaluator's retrieval pass).
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from ranking_reg.metrics import EvaluationResult, nearest_neighbors, per_class_accuracy
from ranking_reg.metrics.calibration import reliability_bins
from ranking_reg.metrics.geometry import DEFAULT_MAX_PAIRS, pair_distance_sample
from ranking_reg.reporting import diagnostic_plots, plots
from ranking_reg.utils.errors import ConfigError
from ranking_reg.utils.io import atomic_writer

PLOT_NAMES = plots.PLOT_NAMES


@dataclass(frozen=True)
class PlotOptions:
    """What the pictures show (the ``callbacks.plots.*`` keys): one definition of the defaults
    for :func:`render_plots` and :class:`PlotCallback`."""

    n_queries: int = 16  # retrieval grid rows
    n_neighbors: int = 5  # neighbours per query
    max_confusion_classes: int = 50  # beyond this, the most confused classes
    projection: str = "pca"  # pca | tsne
    max_points: int = 2000  # points in the projection (a seeded subset)
    thumb_size: int = 64  # retrieval grid tile size in pixels
    seed: int = 0  # fixes the queries, the projected subset and the sampled pairs across epochs
    n_worst_queries: int = 8  # rows of the worst-query grid (lowest AP@R); 0: no such grid

    def __post_init__(self) -> None:
        if self.projection not in plots.PROJECTIONS:
            raise ConfigError(
                f"callbacks.plots.projection={self.projection!r} is not a projection; use one of"
                f" {plots.PROJECTIONS}."
            )
        for key in (
            "n_queries",
            "n_neighbors",
            "max_confusion_classes",
            "max_points",
            "thumb_size",
        ):
            _check_positive(key, getattr(self, key))
        if int(self.n_worst_queries) < 0:
            raise ConfigError(
                f"callbacks.plots.n_worst_queries={self.n_worst_queries} must be an integer >= 0"
                " (0 draws no worst-query grid)."
            )


def _check_positive(key: str, value: Any) -> None:
    if int(value) < 1:
        raise ConfigError(f"callbacks.plots.{key}={value} must be a positive integer.")


def render_plots(
    result: EvaluationResult,
    dataset: Any = None,
    train_counts: list[int] | None = None,
    **options: Any,
) -> dict[str, Image.Image]:
    """All pictures of one evaluation, keyed by ``PLOT_NAMES``; ``options`` are
    :class:`PlotOptions` fields.

    ``result`` is the evaluator's (or any object with its ``stage``, ``embeddings``,
    ``labels``, ``logits`` and ``positions``); ``dataset`` (optional) supplies ``classes``
    and ``load_image(i)`` for the retrieval grid, which is left out without it. Without
    ``train_counts`` the per-class chart orders classes by id (all counts equal). When
    ``result.logits`` is None (no class head for these classes) the per-class accuracy and
    the confusion matrix are left out.
    """
    opts = PlotOptions(**options)
    stage = getattr(result, "stage", "eval")
    emb = _numpy(result.embeddings).astype(np.float32)
    labels = _numpy(result.labels).astype(np.int64)
    logits = None if result.logits is None else _numpy(result.logits)
    positions = getattr(result, "positions", None)
    indices = np.arange(len(labels)) if positions is None else _numpy(positions).astype(np.int64)
    names = list(getattr(dataset, "classes", [])) or None
    if logits is not None:
        n_classes = int(logits.shape[1])
    else:  # the dataset's classes, or as many as the labels need
        n_classes = max(len(names or []), int(labels.max(initial=-1)) + 1)
    if names is not None and len(names) != n_classes:
        names = None

    images: dict[str, Image.Image] = {}
    if dataset is not None and hasattr(dataset, "load_image") and len(labels) > 1:
        queries = plots.select_queries(labels, opts.n_queries, seed=opts.seed)
        ap = _per_query_ap(result, len(labels))
        worst = (
            diagnostic_plots.select_worst_queries(ap, opts.n_worst_queries)
            if ap is not None and opts.n_worst_queries
            else np.zeros(0, dtype=np.int64)
        )
        k = min(opts.n_neighbors, len(labels) - 1)
        # one neighbour search for both grids' queries (a few rows, not a second kNN pass)
        found = nearest_neighbors(emb, k, queries=np.concatenate([queries, worst])).numpy()

        def caption(i: int) -> str:
            return names[labels[i]] if names else str(labels[i])

        def grid(rows: np.ndarray, neighbors: np.ndarray, first: list[str]) -> Image.Image:
            return plots.retrieval_grid(
                [dataset.load_image(int(indices[q])) for q in rows],
                [[dataset.load_image(int(indices[j])) for j in row] for row in neighbors],
                labels[neighbors] == labels[rows][:, None],
                thumb_size=opts.thumb_size,
                captions=[
                    [head] + [caption(j) for j in row]
                    for head, row in zip(first, neighbors, strict=True)
                ],
            )

        images["retrieval_grid"] = grid(
            queries, found[: len(queries)], [caption(q) for q in queries]
        )
        if len(worst):
            assert ap is not None
            images["worst_queries"] = grid(
                worst,
                found[len(queries) :],
                [f"AP{ap[q]:.2f} {caption(q)}" for q in worst],
            )
    if logits is not None:
        preds = logits.argmax(1)
        counts = list(train_counts) if train_counts is not None else []
        if len(counts) != n_classes:
            counts = [1] * n_classes  # unknown frequencies: classes in id order
        accuracy = per_class_accuracy(preds, labels, n_classes).double().numpy()
        images["per_class_accuracy"] = plots.per_class_accuracy_chart(
            accuracy, counts, names, title=f"{stage} per-class accuracy"
        )
        cm = plots.confusion_matrix(labels, preds, n_classes)
        shown = plots.select_confused_classes(cm, opts.max_confusion_classes)
        images["confusion_matrix"] = plots.confusion_matrix_plot(
            cm, shown, names, title=f"{stage} confusion"
        )
        bins = reliability_bins(logits, labels)
        images["reliability_diagram"] = diagnostic_plots.reliability_diagram(
            bins.edges.numpy(),
            bins.counts.numpy(),
            bins.accuracy.numpy(),
            bins.confidence.numpy(),
            bins.ece,
            title=f"{stage} reliability",
        )
    if len(labels) > 1:
        positive, negative, sampled = pair_distance_sample(
            emb, labels, max_pairs=DEFAULT_MAX_PAIRS, seed=opts.seed
        )
        images["pair_distances"] = diagnostic_plots.pair_distance_histogram(
            positive,
            negative,
            sampled,
            max_pairs=DEFAULT_MAX_PAIRS,
            title=f"{stage} embedding pair distances",
        )
    coords, idx = plots.project_2d(emb, opts.projection, max_points=opts.max_points, seed=opts.seed)
    images["embedding_projection"] = plots.embedding_projection_plot(
        coords,
        labels[idx],
        n_classes,
        names,
        title=f"{stage} embeddings, {opts.projection.upper()}",
    )
    return images


def _per_query_ap(result: Any, n: int) -> np.ndarray | None:
    """The result's per-query AP@R (float64, NaN for R = 0), or None when it has none."""
    per_query = getattr(result, "per_query", None)
    if not per_query or per_query.get("ap@r") is None:
        return None
    value = per_query["ap@r"]
    ap = value.detach().cpu().double().numpy() if hasattr(value, "detach") else np.asarray(value)
    ap = ap.astype(np.float64)
    return ap if len(ap) == n else None


def save_png(image: Image.Image, *paths: str) -> None:
    """Encode ``image`` once and write it to each of ``paths`` whole or not at all."""
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    for path in paths:
        with atomic_writer(path, "wb") as handle:
            handle.write(encoded.getvalue())


class PlotCallback(pl.Callback):
    """Draws ``PLOT_NAMES`` after validation (every ``every_n_epochs`` epochs) and after test."""

    def __init__(self, plots_dir: str, every_n_epochs: int = 1, **options: Any) -> None:
        """``options``: the :class:`PlotOptions` fields."""
        super().__init__()
        _check_positive("every_n_epochs", every_n_epochs)
        self.plots_dir = str(plots_dir)
        self.every_n_epochs = int(every_n_epochs)
        self.options = PlotOptions(**options)
        self.written: list[str] = []  # paths written, newest last (for tests and summaries)

    def on_evaluation_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: EvaluationResult
    ) -> None:
        """Draw ``result``'s pictures (called by :func:`~ranking_reg.metrics.notify_evaluation_end`):
        on global rank 0 only, never for the sanity check, and during fit every
        ``every_n_epochs`` validation epochs."""
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        if result.stage == "val" and fitting and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._draw(trainer, result)

    def _draw(self, trainer: pl.Trainer, result: EvaluationResult) -> None:
        stage = result.stage
        datamodule = getattr(trainer, "datamodule", None)
        dataset = None
        counts = None
        if datamodule is not None:
            if hasattr(datamodule, "eval_dataset"):
                dataset = datamodule.eval_dataset(stage)
            counts = getattr(datamodule, "train_class_counts", None)
        try:
            images = render_plots(result, dataset, counts, **asdict(self.options))
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
