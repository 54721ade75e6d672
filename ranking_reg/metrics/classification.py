"""Accuracy of the class head, overall, per class and over the long tail.

- ``acc``: top-1 accuracy, the fraction of test items whose arg-max class is their label.
- per-class accuracy of class c: the fraction of the test items of class c predicted as c (the
  class's recall); ``macro_acc``, its mean over the classes with test items (class-averaged
  accuracy, the headline number of long-tailed benchmarks).
- ``many_acc`` / ``medium_acc`` / ``few_acc``: the class-averaged accuracy over the many-shot
  (> 100 training images), medium-shot (20..100) and few-shot (< 20) classes of Liu et al.,
  "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019 (the split of the
  long-tailed variant of the experiments); ``many_recall@1`` / ... the retrieval Recall@1 of
  the queries of those groups (:func:`shot_recall`).

Counts come from torchmetrics' ``multiclass_accuracy`` (micro, and per class).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy

from ranking_reg.metrics.knn import ArrayLike


def _as_predictions(logits_or_preds: ArrayLike) -> torch.Tensor:
    p = torch.as_tensor(logits_or_preds)
    if p.ndim == 2:
        return p.argmax(dim=1)
    if p.ndim != 1:
        raise ValueError(f"expected (N, C) logits or (N,) predictions, got shape {tuple(p.shape)}")
    return p.long()


def _predictions_and_labels(
    logits_or_preds: ArrayLike, labels: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor]:
    preds = _as_predictions(logits_or_preds)
    y = torch.as_tensor(labels).long()
    if len(y) == 0 or len(preds) != len(y):
        raise ValueError(f"need as many predictions as labels (>0): {len(preds)} vs {len(y)}")
    return preds, y


def per_class_accuracy(
    logits_or_preds: ArrayLike, labels: ArrayLike, num_classes: int
) -> torch.Tensor:
    """Accuracy of every class: (num_classes,) float32, entry c the fraction of the test items
    of class c predicted as c; NaN for a class without test items.

    ``logits_or_preds`` may be (N, C) scores or (N,) predicted class ids. Its mean over the
    non-NaN entries is ``macro_acc`` of :func:`classification_metrics`.
    """
    preds, y = _predictions_and_labels(logits_or_preds, labels)
    # torchmetrics scores a class without test items 0 (0/0 made safe): NaN says "no items".
    recall = multiclass_accuracy(preds, y, num_classes=num_classes, average="none")
    present = torch.bincount(y, minlength=num_classes) > 0
    return torch.where(present, recall, torch.full_like(recall, float("nan")))


def classification_metrics(
    logits: ArrayLike, labels: ArrayLike, num_classes: int
) -> dict[str, float]:
    """``acc``: top-1 accuracy; ``macro_acc``: class-averaged accuracy (mean over the classes
    present in ``labels`` of the fraction of their items predicted correctly).

    ``logits`` may be (N, C) scores or (N,) predicted class ids. Computed with torchmetrics'
    ``multiclass_accuracy`` (micro, and per class); the macro mean is taken here over the
    classes with test items, because torchmetrics' ``average="macro"`` also averages in, as 0,
    a class that is predicted but absent from ``labels``.
    """
    preds, y = _predictions_and_labels(logits, labels)
    acc = multiclass_accuracy(preds, y, num_classes=num_classes, average="micro")
    per_class = per_class_accuracy(preds, y, num_classes)
    macro = per_class[~per_class.isnan()].mean()
    return {"acc": float(acc), "macro_acc": float(macro)}


def shot_accuracy(
    logits_or_preds: ArrayLike,
    labels: ArrayLike,
    train_counts: ArrayLike,
    many: int = 100,
    few: int = 20,
) -> dict[str, float]:
    """Class-averaged test accuracy over many-shot (> ``many`` training images), medium-shot
    (``few``..``many``) and few-shot (< ``few``) classes (Liu et al., CVPR 2019).

    ``train_counts[c]`` is the number of training images of class c. Only classes with test
    items are averaged; a group without any such class is left out of the result (no NaN).
    Keys: ``many_acc``, ``medium_acc``, ``few_acc``.
    """
    preds, y = _predictions_and_labels(logits_or_preds, labels)
    counts = torch.as_tensor(np.asarray(train_counts)).long()
    per_class = per_class_accuracy(preds, y, len(counts))
    present = ~per_class.isnan()
    out = {}
    for group, members in shot_groups(counts, many, few).items():
        members = members & present
        if members.any():
            out[f"{group}_acc"] = float(per_class[members].mean())
    return out


def shot_groups(train_counts: ArrayLike, many: int = 100, few: int = 20) -> dict[str, torch.Tensor]:
    """The classes of each frequency group (Liu et al., CVPR 2019): ``many`` (> ``many``
    training images), ``medium`` (``few``..``many``), ``few`` (< ``few``), as (C,) bool masks."""
    counts = torch.as_tensor(np.asarray(train_counts)).long()
    return {
        "many": counts > many,
        "medium": (counts >= few) & (counts <= many),
        "few": counts < few,
    }


def shot_recall(
    first_hit: ArrayLike,
    labels: ArrayLike,
    train_counts: ArrayLike,
    k: int = 1,
    many: int = 100,
    few: int = 20,
) -> dict[str, float]:
    """Recall@k of the queries of many-, medium- and few-shot classes (:func:`shot_groups`).

    ``first_hit[i]``: the 0-based rank of query i's first same-class neighbour, as
    :func:`~ranking_reg.metrics.retrieval.retrieval_metrics` fills it (``per_query=``): query i
    is recalled at k iff ``first_hit[i] < k``. A group's value is the fraction of its queries
    recalled (over queries, like ``recall@k``, not averaged by class); a group without any query
    is left out of the result, as in :func:`shot_accuracy`. Keys: ``many_recall@k``,
    ``medium_recall@k``, ``few_recall@k``.
    """
    hit = torch.as_tensor(first_hit).long() < int(k)
    y = torch.as_tensor(labels).long()
    counts = torch.as_tensor(np.asarray(train_counts)).long()
    if len(hit) != len(y):
        raise ValueError(f"need one first_hit per label: {len(hit)} vs {len(y)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(counts)):
        raise ValueError(
            f"labels must be class ids in [0, {len(counts)}) to look up their train counts, got"
            f" {int(y.min())}..{int(y.max())}"
        )
    out = {}
    for group, members in shot_groups(counts, many, few).items():
        queries = members[y]
        if queries.any():
            out[f"{group}_recall@{int(k)}"] = float(hit[queries].double().mean())
    return out
