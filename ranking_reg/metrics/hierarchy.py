"""Hierarchy-aware accuracy of a classifier's predictions (docs/HIERARCHY.md).

For a coarse level ``L`` of a :class:`~ranking_reg.data.hierarchy.ClassHierarchy` with parent map
``pi_L`` (fine class -> its L-parent), predictions ``y_hat`` and labels ``y`` of ``N`` samples:

- ``top1@L = (1/N) sum_i [pi_L(y_hat_i) = pi_L(y_i)]``: the top-1 accuracy of the predictions
  read at level L (the prediction's L-parent is the true class's), e.g. ``top1@family`` on
  FGVC-Aircraft variants. It is at least the fine top-1 accuracy.
- ``mistakes_within@L = M_L / M`` with ``M = sum_i [y_hat_i != y_i]`` and
  ``M_L = sum_i [y_hat_i != y_i] [pi_L(y_hat_i) = pi_L(y_i)]``: among the misclassified
  samples, the fraction whose wrong class still has the true L-parent (NaN when M = 0).

``mistakes_within@L`` is a simple, stated form of the *mistake severity* of Bertinetto et al.,
"Making Better Mistakes: Leveraging Class Hierarchies with Deep Networks" (CVPR 2020), which
measures a mistake by the height of the lowest common ancestor (LCA) of prediction and label:
here, over the levels L from finer to coarser, it is the cumulative fraction of mistakes whose
LCA lies at or below level L (a higher value at a finer level: milder mistakes).
"""

from __future__ import annotations

import math

import torch

from ranking_reg.data.hierarchy import ClassHierarchy


def hierarchy_metrics(
    predictions: torch.Tensor, labels: torch.Tensor, hierarchy: ClassHierarchy
) -> dict[str, float]:
    """``top1@L`` and ``mistakes_within@L`` for every level L of ``hierarchy`` (module docstring).

    ``predictions`` and ``labels``: (N,) int64 class ids in ``0..hierarchy.num_classes-1``. With
    N = 0 every value is NaN.
    """
    predictions = torch.as_tensor(predictions).reshape(-1).long()
    labels = torch.as_tensor(labels).reshape(-1).long().to(predictions.device)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"hierarchy_metrics: {predictions.numel()} predictions for {labels.numel()} labels"
        )
    c = hierarchy.num_classes
    for what, ids in (("predictions", predictions), ("labels", labels)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c):
            raise ValueError(
                f"hierarchy_metrics: the {what} hold class ids outside 0..{c - 1}, the classes "
                "of the hierarchy"
            )
    wrong = predictions != labels
    n, n_wrong = predictions.numel(), int(wrong.sum())
    out: dict[str, float] = {}
    for level in hierarchy.levels:
        parent = torch.tensor(hierarchy.parents[level], dtype=torch.long, device=predictions.device)
        same = parent[predictions] == parent[labels]
        out[f"top1@{level}"] = float(same.sum()) / n if n else math.nan
        out[f"mistakes_within@{level}"] = (
            float((same & wrong).sum()) / n_wrong if n_wrong else math.nan
        )
    return out
