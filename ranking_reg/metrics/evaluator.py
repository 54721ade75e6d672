"""One evaluation (a validation or test epoch): collect the outputs, gather them, score them.

The :class:`Evaluator` takes the per-batch outputs of both heads, gathers them across
processes (every sample of the split exactly once: the evaluation sampler gives each process
its own samples), orders them by the sample's position in the evaluated dataset and computes

- ``acc``, ``macro_acc`` (:func:`~ranking_reg.metrics.classification.classification_metrics`)
  of the class head, when it fits the evaluated classes (``classify``);
- ``recall@k`` for the configured ks, ``map@r``, ``nmi``
  (:func:`~ranking_reg.metrics.retrieval.retrieval_metrics`) of the embedding head;
- ``pooled_recall@1``, ``pooled_map@r``, ``pooled_nmi`` of the backbone's pooled features,
  so a softmax-only run still reports the quality of its embedding;
- ``many_acc``, ``medium_acc``, ``few_acc``
  (:func:`~ranking_reg.metrics.classification.shot_accuracy`, Liu et al., CVPR 2019) when
  ``train_class_counts`` is set (a long-tailed training split);
- ``knn_acc@k`` for the ``knn_ks`` and, with the class head, ``fused_acc``, ``fused_alpha``,
  ``fused_alpha_on_val`` (:mod:`~ranking_reg.metrics.knn_classify`) when a *gallery* stream was
  collected: the evaluated split's embeddings are kNN-classified against it, and alpha of the
  fusion is chosen on the *val* stream if one was collected, else it is ``fuse_alpha``; and
  ``pooled_knn_acc@k``, the same vote with the pooled features (what a softmax-only network
  classifies by kNN with).

Diagnostics (docs/DIAGNOSTICS.md), at validation and test alike, all O(N·D) or read off the
retrieval pass already made (no second kNN):

- ``ece``: the expected calibration error of the class head, 15 bins
  (:mod:`~ranking_reg.metrics.calibration`, Guo et al., ICML 2017, Eq. 3), with the class head;
- ``many_recall@1``, ``medium_recall@1``, ``few_recall@1`` (and ``pooled_...``): Recall@1 of
  the queries of each frequency group (:func:`~ranking_reg.metrics.classification.shot_recall`),
  with ``train_class_counts`` when the evaluated classes are the trained ones (``classify``);
- ``intra_dist``, ``inter_dist``, ``intra_inter_ratio`` (and ``pooled_...``): the mean squared
  distance of same-class and of different-class pairs and their ratio
  (:mod:`~ranking_reg.metrics.geometry`);
- the hierarchy metrics (``top1@<level>``, ``mistakes_within@<level>``, ... of
  ``ranking_reg.metrics.hierarchy.hierarchy_metrics``) when a class hierarchy was configured
  (:meth:`Evaluator.configure_hierarchy`) and the class head fits.

The result also carries each query's ``first_hit`` and ``ap@r`` of the embedding head
(``per_query``), from which the pictures draw the worst queries.

Streams: ``update(..., stream=)`` files a batch under ``query`` (the evaluated split, default),
``gallery`` (the labelled gallery of the kNN metrics: the training split under the evaluation
transform) or ``val`` (the validation queries that choose alpha). :meth:`Evaluator.reset` names
the streams the next :meth:`~Evaluator.compute` gathers, so every process gathers the same
streams in the same order even when one of them got no batch of one stream.

The :class:`EvaluationResult` carries the metrics and the gathered arrays to whoever draws or
stores them. :func:`notify_evaluation_end` hands it to the callbacks explicitly: Lightning
calls a callback's hook before the module's hook of the same name, so a callback reading
state the module sets in its epoch-end hook would depend on that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ranking_reg.metrics.calibration import expected_calibration_error
from ranking_reg.metrics.classification import (
    classification_metrics,
    shot_accuracy,
    shot_recall,
)
from ranking_reg.metrics.geometry import embedding_geometry
from ranking_reg.metrics.knn_classify import knn_classification_metrics
from ranking_reg.metrics.retrieval import retrieval_metrics
from ranking_reg.utils import distributed

# what each stream keeps (a gallery as large as a training split: no logits)
STREAMS = {
    "query": ("logits", "embeddings", "pooled", "labels", "positions"),
    "gallery": ("embeddings", "pooled", "labels", "positions"),
    "val": ("logits", "embeddings", "labels", "positions"),
}
DEFAULT_FUSE_GRID = tuple(i / 10 for i in range(11))


@dataclass
class EvaluationResult:
    """Metrics and gathered outputs of one evaluation, all on CPU, ordered by position."""

    stage: str  # "val" or "test"
    metrics: dict[str, float]  # keys without the stage prefix: "acc", "recall@1", ...
    embeddings: torch.Tensor  # (N, D) float32
    pooled: torch.Tensor  # (N, C) float32
    logits: torch.Tensor | None  # (N, num_classes) float32; None when not classify
    labels: torch.Tensor  # (N,) int64
    positions: torch.Tensor  # (N,) int64, index of the sample in the evaluated dataset, ascending
    # the embedding head's per-query retrieval results: "first_hit" (N,) int64 and "ap@r" (N,)
    # float64 (NaN for a query without another item of its class), as retrieval_metrics fills
    # them; None for a result built without them
    per_query: dict[str, torch.Tensor] | None = None


class Evaluator:
    """Collect per-batch outputs, gather them across processes (each sample once), compute metrics.

    ``ks``: the Recall@k of the embedding head; ``pooled_ks``: those of the pooled features;
    ``seed``: the k-means seed of both NMIs; ``many_shot`` / ``few_shot``: the bounds of the
    many/medium/few-shot split; ``knn_ks``, ``fuse_alpha``, ``fuse_grid``: the kNN
    classification against a gallery stream (:meth:`configure_knn`). Two plain attributes are
    set by the owner before :meth:`compute`: ``train_class_counts`` (training images per class,
    or None) and ``classify`` (False when the class head does not fit the evaluated classes);
    :meth:`configure_hierarchy` sets the class hierarchy of the hierarchy metrics (None: off).
    """

    def __init__(
        self,
        ks: Sequence[int] = (1, 2, 4, 8),
        seed: int = 0,
        pooled_ks: Sequence[int] = (1,),
        many_shot: int = 100,
        few_shot: int = 20,
        knn_ks: Sequence[int] = (1, 10),
        fuse_alpha: float = 0.5,
        fuse_grid: Sequence[float] = DEFAULT_FUSE_GRID,
    ) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.pooled_ks = tuple(int(k) for k in pooled_ks)
        if not self.ks or not self.pooled_ks or min(self.ks + self.pooled_ks) < 1:
            raise ValueError(f"ks and pooled_ks must be positive integers: {ks}, {pooled_ks}")
        self.seed = int(seed)
        self.many_shot = int(many_shot)
        self.few_shot = int(few_shot)
        self.knn_ks: tuple[int, ...] = ()
        self.fuse_alpha = 0.5
        self.fuse_grid: tuple[float, ...] = ()
        self.configure_knn(knn_ks, fuse_alpha, fuse_grid)
        self.train_class_counts: list[int] | None = None
        self.classify: bool = True
        self.hierarchy: Any = None
        self._streams: tuple[str, ...] = ("query",)
        self._batches: dict[str, list[dict[str, torch.Tensor]]] = {"query": []}

    def configure_knn(
        self,
        ks: Sequence[int] | None = None,
        fuse_alpha: float | None = None,
        fuse_grid: Sequence[float] | None = None,
    ) -> None:
        """Set the kNN settings that are not None: the ks of ``knn_acc@k`` (the vote fused with
        the softmax is the one at the largest), the default alpha (used without validation
        queries) and the grid alpha is chosen from on them; all alphas in [0, 1]."""
        if ks is not None:
            ks = tuple(int(k) for k in ks)
            if not ks or min(ks) < 1:
                raise ValueError(f"knn ks must be positive integers, got {ks}")
            self.knn_ks = ks
        if fuse_alpha is not None:
            if not 0.0 <= float(fuse_alpha) <= 1.0:
                raise ValueError(f"fuse_alpha must be in [0, 1], got {fuse_alpha}")
            self.fuse_alpha = float(fuse_alpha)
        if fuse_grid is not None:
            grid = tuple(float(a) for a in fuse_grid)
            if not grid or not all(0.0 <= a <= 1.0 for a in grid):
                raise ValueError(f"fuse_grid must be a non-empty list in [0, 1], got {grid}")
            self.fuse_grid = grid

    def configure_hierarchy(self, hierarchy: Any) -> None:
        """Score the class head's predictions against ``hierarchy`` (a
        ``ranking_reg.data.hierarchy.ClassHierarchy``) from the next :meth:`compute` on, with
        ``ranking_reg.metrics.hierarchy.hierarchy_metrics``; None turns the metrics off."""
        self.hierarchy = hierarchy

    def reset(self, streams: Sequence[str] = ("query",)) -> None:
        """Forget every batch collected so far; the next compute gathers ``streams`` (which
        always include ``query``)."""
        unknown = set(streams) - set(STREAMS)
        if unknown:
            raise ValueError(
                f"unknown evaluation streams {sorted(unknown)}; known: {list(STREAMS)}"
            )
        self._streams = ("query", *(s for s in streams if s != "query"))
        self._batches = {stream: [] for stream in self._streams}

    @property
    def empty(self) -> bool:
        """True when no query batch was collected since the last reset."""
        return not self._batches.get("query")

    def update(
        self,
        logits: torch.Tensor,
        embeddings: torch.Tensor,
        pooled: torch.Tensor,
        labels: torch.Tensor,
        positions: torch.Tensor,
        stream: str = "query",
    ) -> None:
        """Keep one batch of ``stream`` (detached, on its device; logits as float32); a stream
        keeps only the outputs it needs (:data:`STREAMS`)."""
        if stream not in self._batches:
            raise ValueError(
                f"Evaluator.update: stream {stream!r} was not announced by reset({self._streams})"
            )
        outputs = {
            "logits": logits,
            "embeddings": embeddings,
            "pooled": pooled,
            "labels": labels,
            "positions": positions,
        }
        sizes = {key: value.shape[0] if value.ndim else 0 for key, value in outputs.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Evaluator.update: batch sizes differ between the outputs: {sizes}")
        batch = {key: outputs[key].detach() for key in STREAMS[stream]}
        if "logits" in batch:
            batch["logits"] = batch["logits"].float()
        self._batches[stream].append(batch)

    def compute(self, stage: str, num_classes: int) -> EvaluationResult:
        """Concatenate, gather (all processes must call this), move to CPU, sort by position,
        compute the metrics and reset; raises RuntimeError if nothing was collected."""
        if self.empty:
            raise RuntimeError(
                f"Evaluator.compute({stage!r}): no batch was collected since the last reset"
            )
        try:
            out = self._gather("query", self._batches["query"][0])
            extra = {
                stream: self._gather(stream, self._batches["query"][0])
                for stream in self._streams[1:]
            }
            embeddings = out["embeddings"].float()
            pooled = out["pooled"].float()
            labels = out["labels"].long()
            logits = out["logits"] if self.classify else None
            per_query: dict[str, torch.Tensor] = {}
            metrics = self._metrics(embeddings, pooled, logits, labels, num_classes, per_query)
            gallery = extra.get("gallery")
            if gallery is not None and len(gallery["labels"]):  # an empty gallery: no kNN
                metrics.update(self._knn_metrics(embeddings, pooled, labels, logits, extra))
            return EvaluationResult(
                stage=stage,
                metrics=metrics,
                embeddings=embeddings,
                pooled=pooled,
                logits=logits,
                labels=labels,
                positions=out["positions"].long(),
                per_query=per_query,
            )
        finally:
            self.reset()

    def _gather(self, stream: str, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The stream's outputs of every process, on CPU, sorted by position (all processes
        must call this; a process without a batch of the stream sends none, shaped like
        ``template``'s)."""
        keys = [k for k in STREAMS[stream] if self.classify or k != "logits"]
        batches = self._batches[stream]
        local = {
            key: torch.cat([b[key] for b in batches])
            if batches
            else template[key].new_zeros((0, *template[key].shape[1:]))
            for key in keys
        }
        merged = {key: distributed.gather_uneven(value).cpu() for key, value in local.items()}
        order = torch.argsort(merged["positions"], stable=True)
        return {key: value[order] for key, value in merged.items()}

    def _knn_metrics(
        self,
        embeddings: torch.Tensor,
        pooled: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor | None,
        extra: dict[str, dict[str, torch.Tensor]],
    ) -> dict[str, float]:
        gallery, val = extra["gallery"], extra.get("val")
        val_queries = None
        if val is not None and logits is not None and len(val["labels"]):
            val_queries = (val["embeddings"].float(), val["labels"].long(), val["logits"])
        gallery_labels = gallery["labels"].long()
        metrics = knn_classification_metrics(
            gallery["embeddings"].float(),
            gallery_labels,
            embeddings,
            labels,
            ks=self.knn_ks,
            logits=logits,
            val=val_queries,
            fuse_alpha=self.fuse_alpha,
            fuse_grid=self.fuse_grid,
        )
        pooled_metrics = knn_classification_metrics(
            gallery["pooled"].float(), gallery_labels, pooled, labels, ks=self.knn_ks
        )
        metrics.update({f"pooled_{key}": value for key, value in pooled_metrics.items()})
        return metrics

    def _metrics(
        self,
        embeddings: torch.Tensor,
        pooled: torch.Tensor,
        logits: torch.Tensor | None,
        labels: torch.Tensor,
        num_classes: int,
        per_query: dict[str, torch.Tensor],
    ) -> dict[str, float]:
        """The metrics of the query stream; fills ``per_query`` with the embedding head's
        per-query retrieval results."""
        metrics: dict[str, float] = {}
        if logits is not None:
            metrics.update(classification_metrics(logits, labels, num_classes))
            metrics["ece"] = expected_calibration_error(logits, labels)
        metrics.update(
            retrieval_metrics(embeddings, labels, ks=self.ks, seed=self.seed, per_query=per_query)
        )
        pooled_per_query: dict[str, torch.Tensor] = {}
        pooled_metrics = retrieval_metrics(
            pooled, labels, ks=self.pooled_ks, seed=self.seed, per_query=pooled_per_query
        )
        # geometry of the pooled features too: the only trained embedding of a softmax-only run
        pooled_metrics.update(embedding_geometry(pooled, labels))
        metrics.update(embedding_geometry(embeddings, labels))
        # the counts are of the training classes: only for an evaluation of those classes
        if self.classify and self.train_class_counts is not None:
            for prefix, found in (("", per_query), ("pooled_", pooled_per_query)):
                groups = shot_recall(
                    found["first_hit"],
                    labels,
                    self.train_class_counts,
                    k=1,
                    many=self.many_shot,
                    few=self.few_shot,
                )
                metrics.update({f"{prefix}{key}": value for key, value in groups.items()})
        metrics.update({f"pooled_{key}": value for key, value in pooled_metrics.items()})
        if logits is not None and self.hierarchy is not None:
            # imported here: the hierarchy metrics are optional and built separately
            from ranking_reg.metrics.hierarchy import hierarchy_metrics

            metrics.update(hierarchy_metrics(logits.argmax(dim=1), labels, self.hierarchy))
        if logits is not None and self.train_class_counts is not None:
            metrics.update(
                shot_accuracy(
                    logits,
                    labels,
                    self.train_class_counts,
                    many=self.many_shot,
                    few=self.few_shot,
                )
            )
        return metrics


def notify_evaluation_end(trainer: Any, pl_module: Any, result: EvaluationResult) -> None:
    """Call ``on_evaluation_end(trainer, pl_module, result)`` on every callback of ``trainer``
    that defines it (explicit hand-off, independent of Lightning's hook order)."""
    for callback in getattr(trainer, "callbacks", None) or []:
        hook = getattr(callback, "on_evaluation_end", None)
        if callable(hook):
            hook(trainer, pl_module, result)
