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
  ``train_class_counts`` is set (a long-tailed training split).

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

from ranking_reg.metrics.classification import classification_metrics, shot_accuracy
from ranking_reg.metrics.retrieval import retrieval_metrics
from ranking_reg.utils import distributed

_KEYS = ("logits", "embeddings", "pooled", "labels", "positions")


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


class Evaluator:
    """Collect per-batch outputs, gather them across processes (each sample once), compute metrics.

    ``ks``: the Recall@k of the embedding head; ``pooled_ks``: those of the pooled features;
    ``seed``: the k-means seed of both NMIs; ``many_shot`` / ``few_shot``: the bounds of the
    many/medium/few-shot split. Two plain attributes are set by the owner before
    :meth:`compute`: ``train_class_counts`` (training images per class, or None) and
    ``classify`` (False when the class head does not fit the evaluated classes).
    """

    def __init__(
        self,
        ks: Sequence[int] = (1, 2, 4, 8),
        seed: int = 0,
        pooled_ks: Sequence[int] = (1,),
        many_shot: int = 100,
        few_shot: int = 20,
    ) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.pooled_ks = tuple(int(k) for k in pooled_ks)
        if not self.ks or not self.pooled_ks or min(self.ks + self.pooled_ks) < 1:
            raise ValueError(f"ks and pooled_ks must be positive integers: {ks}, {pooled_ks}")
        self.seed = int(seed)
        self.many_shot = int(many_shot)
        self.few_shot = int(few_shot)
        self.train_class_counts: list[int] | None = None
        self.classify: bool = True
        self._batches: list[dict[str, torch.Tensor]] = []

    def reset(self) -> None:
        """Forget every batch collected so far."""
        self._batches = []

    @property
    def empty(self) -> bool:
        """True when no batch was collected since the last reset."""
        return not self._batches

    def update(
        self,
        logits: torch.Tensor,
        embeddings: torch.Tensor,
        pooled: torch.Tensor,
        labels: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        """Keep one batch (detached, on its device; logits as float32)."""
        batch = {
            "logits": logits.detach().float(),
            "embeddings": embeddings.detach(),
            "pooled": pooled.detach(),
            "labels": labels.detach(),
            "positions": positions.detach(),
        }
        sizes = {key: value.shape[0] if value.ndim else 0 for key, value in batch.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Evaluator.update: batch sizes differ between the outputs: {sizes}")
        self._batches.append(batch)

    def compute(self, stage: str, num_classes: int) -> EvaluationResult:
        """Concatenate, gather (all processes must call this), move to CPU, sort by position,
        compute the metrics and reset; raises RuntimeError if nothing was collected."""
        if not self._batches:
            raise RuntimeError(
                f"Evaluator.compute({stage!r}): no batch was collected since the last reset"
            )
        try:
            keys = _KEYS if self.classify else _KEYS[1:]
            local = {key: torch.cat([b[key] for b in self._batches]) for key in keys}
            merged = {key: distributed.gather_uneven(value).cpu() for key, value in local.items()}
            order = torch.argsort(merged["positions"], stable=True)
            out = {key: value[order] for key, value in merged.items()}
            embeddings = out["embeddings"].float()
            pooled = out["pooled"].float()
            labels = out["labels"].long()
            logits = out["logits"] if self.classify else None
            metrics = self._metrics(embeddings, pooled, logits, labels, num_classes)
            return EvaluationResult(
                stage=stage,
                metrics=metrics,
                embeddings=embeddings,
                pooled=pooled,
                logits=logits,
                labels=labels,
                positions=out["positions"].long(),
            )
        finally:
            self.reset()

    def _metrics(
        self,
        embeddings: torch.Tensor,
        pooled: torch.Tensor,
        logits: torch.Tensor | None,
        labels: torch.Tensor,
        num_classes: int,
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if logits is not None:
            metrics.update(classification_metrics(logits, labels, num_classes))
        metrics.update(retrieval_metrics(embeddings, labels, ks=self.ks, seed=self.seed))
        pooled_metrics = retrieval_metrics(pooled, labels, ks=self.pooled_ks, seed=self.seed)
        metrics.update({f"pooled_{key}": value for key, value in pooled_metrics.items()})
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
