"""kNN classification of queries against a labelled gallery, and its fusion with the softmax.

Definitions (queries q with labels y_q; a gallery of items g_j with labels y_j; C classes):

- **neighbours** N_k(q): the k gallery items nearest to q by Euclidean distance d(q, g_j),
  nearest first, ties broken by the lower gallery index
  (:func:`~ranking_reg.metrics.knn.search_gallery`, exact). k larger than the gallery is
  clipped to the gallery size (the metric keeps the requested k in its name).
- **vote**: score(q, c) = sum over j in N_k(q) with y_j = c of w_j, w_j = 1 / (d(q, g_j) + eps),
  eps = :data:`EPS` (1e-6), in float64: each neighbour votes for its label, the nearer the
  heavier; with k = 1 the prediction is the nearest item's label.
- **prediction**: argmax_c score(q, c), ties to the lower class id.
- ``knn_acc@k``: the fraction of queries whose prediction at k equals their label.
- **normalised vote** v(q, c) = score(q, c) / sum_c' score(q, c') (a distribution over the C
  classes; the weights are positive, so the sum is too).
- **fusion** at alpha in [0, 1]: p(q) = (1 - alpha) * softmax(logits_q) + alpha * v(q), with v
  taken at the largest configured k; the fused prediction is argmax_c p(q, c), ties to the lower
  class id; ``fused_acc`` its accuracy. alpha = 0 is the softmax head alone, alpha = 1 the kNN
  vote alone.
- **choosing alpha** (:func:`choose_alpha`): the alpha of a grid with the highest fused accuracy
  on *validation* queries (searched against the same gallery, which never holds them), ties to
  the smaller alpha; the test split never takes part in the choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ranking_reg.metrics.knn import ArrayLike, _as_embeddings, search_gallery

EPS = 1e-6


def _labels(labels: ArrayLike, n: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    if len(y) != n:
        raise ValueError(f"{name} must hold {n} labels, got {len(y)}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{name} must be class ids >= 0")
    return y


def knn_votes(
    distances: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, eps: float = EPS
) -> torch.Tensor:
    """score (Q, num_classes) float64 of the module's vote, from the (Q, k) distances and labels
    of each query's neighbours (nearest first); each neighbour adds 1 / (d + eps) to its label."""
    weights = 1.0 / (distances.double() + eps)
    scores = torch.zeros(len(distances), num_classes, dtype=torch.float64)
    return scores.scatter_add_(1, neighbour_labels.long(), weights)


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """argmax of each row, ties to the lower column (``torch.argmax`` returns the first)."""
    return scores.argmax(dim=1)


def normalised(scores: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum: the normalised vote v(q, .)."""
    return scores / scores.sum(dim=1, keepdim=True)


def fused_scores(logits: torch.Tensor, vote: torch.Tensor, alpha: float) -> torch.Tensor:
    """p = (1 - alpha) * softmax(logits) + alpha * vote, in float64."""
    probabilities = torch.softmax(logits.double(), dim=1)
    return (1.0 - alpha) * probabilities + alpha * vote.double()


def fused_accuracy(
    logits: torch.Tensor, vote: torch.Tensor, labels: torch.Tensor, alpha: float
) -> float:
    """Accuracy of argmax of :func:`fused_scores` (ties to the lower class id)."""
    hits = predictions(fused_scores(logits, vote, alpha)) == labels
    return float(hits.double().mean())


def choose_alpha(
    logits: torch.Tensor, vote: torch.Tensor, labels: torch.Tensor, grid: Sequence[float]
) -> float:
    """The alpha of ``grid`` with the highest :func:`fused_accuracy`, ties to the smaller alpha."""
    best_alpha, best_acc = None, -1.0
    for alpha in sorted(float(a) for a in grid):
        acc = fused_accuracy(logits, vote, labels, alpha)
        if acc > best_acc:
            best_alpha, best_acc = alpha, acc
    if best_alpha is None:
        raise ValueError("choose_alpha: the grid is empty")
    return best_alpha


class GalleryVotes:
    """The votes of queries against one labelled gallery, at several k (one search each call).

    ``num_classes``: the width of the votes (the class head's when fusing with its logits;
    default: one more than the largest label seen).
    """

    def __init__(
        self, gallery: ArrayLike, gallery_labels: ArrayLike, num_classes: int | None = None
    ) -> None:
        self.gallery = _as_embeddings(gallery)
        self.labels = _labels(gallery_labels, len(self.gallery), "gallery_labels")
        if len(self.gallery) == 0:
            raise ValueError("the gallery is empty")
        self.num_classes = num_classes

    def votes(
        self, queries: ArrayLike, query_labels: ArrayLike, ks: Sequence[int]
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """``{k: score (Q, C)}`` for every k in ``ks`` (k clipped to the gallery size), from one
        search of depth max(ks): the k nearest are the first k of the deeper list."""
        q = _as_embeddings(queries)
        y = _labels(query_labels, len(q), "query_labels")
        width = self.num_classes
        if width is None:
            width = int(max(self.labels.max(), y.max() if len(y) else 0)) + 1
        if int(self.labels.max()) >= width:
            raise ValueError(f"gallery labels exceed the {width} classes of the votes")
        depth = min(max(ks), len(self.gallery))
        distances, idx = search_gallery(self.gallery, q, depth)
        neighbour_labels = self.labels[idx]
        out = {}
        for k in ks:
            kk = min(k, depth)
            out[k] = knn_votes(distances[:, :kk], neighbour_labels[:, :kk], width)
        return out, y


def knn_classification_metrics(
    gallery: ArrayLike,
    gallery_labels: ArrayLike,
    queries: ArrayLike,
    query_labels: ArrayLike,
    ks: Sequence[int] = (1, 10),
    logits: torch.Tensor | None = None,
    val: tuple[ArrayLike, ArrayLike, torch.Tensor] | None = None,
    fuse_alpha: float = 0.5,
    fuse_grid: Sequence[float] = tuple(i / 10 for i in range(11)),
) -> dict[str, float]:
    """``knn_acc@k`` for every k in ``ks`` and, given the queries' ``logits``, the fusion.

    Fusion keys (only with ``logits``): ``fused_acc`` at the chosen alpha, ``fused_alpha`` and
    ``fused_alpha_on_val`` (1: alpha chosen on the validation queries ``val`` = (embeddings,
    labels, logits) by :func:`choose_alpha` over ``fuse_grid``; 0: no validation queries, so the
    fixed default ``fuse_alpha``). The vote fused is the one at max(ks).
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    width = None if logits is None else int(logits.shape[1])
    searcher = GalleryVotes(gallery, gallery_labels, width)
    scores, y = searcher.votes(queries, query_labels, ks)
    metrics = {
        f"knn_acc@{k}": float((predictions(v) == y).double().mean()) for k, v in scores.items()
    }
    if logits is None:
        return metrics
    k_max = max(ks)
    alpha, on_val = float(fuse_alpha), 0.0
    if val is not None and len(val[1]):
        val_scores, val_y = searcher.votes(val[0], val[1], (k_max,))
        alpha = choose_alpha(val[2], normalised(val_scores[k_max]), val_y, fuse_grid)
        on_val = 1.0
    metrics["fused_acc"] = fused_accuracy(logits, normalised(scores[k_max]), y, alpha)
    metrics["fused_alpha"] = alpha
    metrics["fused_alpha_on_val"] = on_val
    return metrics
