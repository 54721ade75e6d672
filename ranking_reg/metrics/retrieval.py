"""Evaluation metrics: retrieval quality of the embedding head and accuracy of the class head.

Retrieval (every test image is a query against all the other test images):

- ``recall@k`` (Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding",
  CVPR 2016): the fraction of queries for which at least one of the k nearest *other* items
  shares the query's label.
- ``map@r`` (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020): with R the number
  of other items of the query's class, AP@R = (1/R) sum_{i=1..R} P(i) rel(i), averaged over the
  queries; the same numbers as pytorch-metric-learning's ``AccuracyCalculator``
  (``mean_average_precision_at_r`` with ``k="max_bin_count"``).
- ``nmi``: normalized mutual information (scikit-learn, arithmetic mean) between the labels and
  a k-means clustering of the embeddings with as many clusters as classes.

Classification: top-1 accuracy and class-averaged ("macro") accuracy through torchmetrics, and
the many/medium/few-shot split of Liu et al. ("Large-Scale Long-Tailed Recognition in an Open
World", CVPR 2019) for the long-tailed variant.

Everything here is exact (brute-force kNN, no approximate index) and deterministic for a seed.
At NABirds' test size (24,633 x 256, 555 classes) on one CPU thread the kNN is ~4 s (3 s of it
the float32 matmuls) and the k-means ~2.3 s: 2.6x faster than pytorch-metric-learning's
``AccuracyCalculator`` with faiss-cpu (``experiments/benchmarks/bench_eval.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torchmetrics.functional.classification import multiclass_accuracy

ArrayLike = torch.Tensor | np.ndarray | Sequence

# Elements of one (queries x items) distance block: 2**25 float32 = 128 MiB, so a chunk of
# ~1,360 queries against NABirds' 24,633 test images.
_BLOCK_ELEMENTS = 1 << 25


def _as_embeddings(embeddings: ArrayLike) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings)
    x = x.detach().to("cpu", torch.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x.contiguous()


def _encode_labels(labels: ArrayLike, n: int) -> torch.Tensor:
    """Labels of any values (sparse ints, strings) -> contiguous class ids 0..C-1 (int64)."""
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must be a 1-D array of length {n}, got shape {y.shape}")
    _, codes = np.unique(y, return_inverse=True)
    return torch.from_numpy(codes.reshape(-1).astype(np.int64))


def _order_by_distance_then_index(vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Sort each row's candidates by (distance, index): a stable sort by distance of
    candidates already ordered by index."""
    by_index = idx.argsort(dim=1)
    vals, idx = vals.gather(1, by_index), idx.gather(1, by_index)
    return idx.gather(1, vals.argsort(dim=1, stable=True))


def nearest_neighbors(embeddings: ArrayLike, k: int, chunk_size: int | None = None) -> torch.Tensor:
    """Indices (N, k) of the k nearest *other* items of every item, nearest first.

    Exact Euclidean kNN of the set against itself. Items are ranked, per query q, by
    ||x||^2 - 2 q.x in float32: the squared distance less ||q||^2, which is constant along
    the query's row, so the order is that of the squared distances and the rounding of adding
    ||q||^2 is saved. One matmul per chunk of queries, so memory stays at ``chunk_size`` x N
    floats (never N x N). The query itself is excluded by index, so an exact duplicate of the
    query is a legitimate (distance-0) neighbour.

    Ties are broken by the lower item index, i.e. the neighbour list is the prefix of a stable
    sort of the row by distance. ``torch.topk`` does not promise which of several equal values
    it returns, so rows whose k-th and (k+1)-th smallest distances are equal are re-selected
    exactly from the full row; the order inside the k is then fixed by a stable sort.
    """
    x = _as_embeddings(embeddings)
    return torch.cat([idx for _, idx in _neighbour_chunks(x, k, chunk_size)])


def _group_sizes(n: int, take: int) -> tuple[int, ...]:
    """Group sizes of the selection levels of :func:`_smallest` (empty: one plain topk).

    A level with groups of g turns a topk over n values into one over n/g group minima plus
    one over take*g candidates; with L levels the sizes balance at g = (n/take)^(1/(L+1)).
    Two levels at NABirds' size (n/take ~ 360: topk over ~500 values at each of 3 stages
    instead of 24,633); fewer when the row is short, where the detour does not pay.
    """
    ratio = n / take
    levels = 2 if ratio >= 64 else 1 if ratio >= 16 else 0
    return (int(ratio ** (1 / (levels + 1))),) * levels


def _smallest(
    d: torch.Tensor, take: int, groups: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``take`` smallest values of every row of d (rows, width) and their columns, sorted
    ascending; which of several equal values at the boundary is returned is unspecified (as
    with ``torch.topk``). ``width`` must be a multiple of the product of ``groups``.

    ``torch.topk`` over a whole 24,633-wide row costs ~10 ns a value, so the columns are split
    into m = width/g groups of g (column j in group j mod m, so the group minima are one
    vectorised ``amin`` over g contiguous m-wide slices), the ``take`` groups with the smallest
    minima are found (recursively, with the remaining ``groups``) and the topk runs on their
    take*g values only. Exact: the kept groups hold ``take`` values <= t (their minima), t the
    largest of those minima, and every other value is >= its group's minimum >= t; so the take
    smallest kept values are the take smallest of the row, up to which of equal values at the
    boundary is returned (the caller's tie check handles that).
    """
    if not groups:
        return torch.topk(d, take, dim=1, largest=False, sorted=True)
    rows, width = d.shape
    m = width // groups[0]
    _, kept = _smallest(d.view(rows, groups[0], m).amin(dim=1), take, groups[1:])
    cols = (kept.unsqueeze(2) + torch.arange(0, width, m)).view(rows, -1)
    vals, pos = torch.topk(d.gather(1, cols), take, dim=1, largest=False, sorted=True)
    return vals, cols.gather(1, pos)


def _neighbour_chunks(
    x: torch.Tensor, k: int, chunk_size: int | None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(query slice, their (rows, k) neighbour indices) for consecutive chunks of queries."""
    n = len(x)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    take = k + 1  # one more than needed, to see whether a tie straddles the k-th place
    groups = _group_sizes(n, take)
    whole = math.prod(groups)
    width = -(-n // whole) * whole  # columns padded to whole groups; the padding is +inf
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // width)
    sq = (x * x).sum(dim=1)
    items = torch.cat([x, x.new_zeros(width - n, x.shape[1])])
    sq_items = torch.cat([sq, sq.new_zeros(width - n)]).unsqueeze(0)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows = torch.arange(stop - start)
        d = torch.addmm(sq_items, x[start:stop], items.T, alpha=-2.0)
        d[:, n:] = math.inf
        d[rows, rows + start] = math.inf  # the query itself
        vals, idx = _smallest(d, take, groups)
        if not torch.isfinite(vals[:, k - 1]).all():
            raise ValueError("squared distances overflow float32: scale the embeddings down")
        tied = (vals[:, k - 1] == vals[:, k]).nonzero().flatten()
        vals, idx = vals[:, :k], idx[:, :k]
        # Rows to put in (distance, index) order: equal distances inside the k (topk's order
        # among them is unspecified) and the re-selected tied rows (in index order).
        unsorted = (vals[:, 1:] == vals[:, :-1]).any(dim=1)
        if len(tied):
            dt = d[tied]
            kth = vals[tied, k - 1 : k]
            below = dt < kth
            equal = dt == kth
            need = k - below.sum(dim=1, keepdim=True)
            chosen = below | (equal & (equal.cumsum(dim=1) <= need))
            idx_t = chosen.nonzero()[:, 1].view(len(tied), k)  # row-major: ascending index
            idx[tied] = idx_t
            vals[tied] = dt.gather(1, idx_t)
            unsorted[tied] = True
        fix = unsorted.nonzero().flatten()
        if len(fix):
            idx[fix] = _order_by_distance_then_index(vals[fix], idx[fix])
        yield slice(start, stop), idx


# Greedy k-means++ runs on a seeded subsample of at most this many points per cluster: its
# n_clusters sequential steps each read every candidate point (memory-bound, ~1.5 s at NABirds'
# 24,633 x 256 and 555 clusters); 20 a cluster halves that, and Lloyd then runs on all points.
_INIT_POINTS_PER_CLUSTER = 20
# Query rows per block of the k-means assignment: a (rows x clusters) block stays in L2 cache.
_ASSIGN_ROWS = 2048


def kmeans(
    embeddings: ArrayLike,
    n_clusters: int,
    n_init: int = 1,
    max_iter: int = 20,
    tol: float = 1e-4,
    seed: int = 0,
) -> tuple[torch.Tensor, float]:
    """Lloyd's k-means with greedy k-means++ seeding, in torch; returns (assignments, inertia).

    - Seeding: greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's
      ``init="k-means++"``: 2 + ln(k) candidate centres per step, keeping the one that lowers
      the potential most) over a seeded random subsample of min(N, 20 * ``n_clusters``)
      points, every centre a data point. On all N points it would be the slowest part (its
      ``n_clusters`` steps are sequential passes over the data); 20 points a cluster keeps
      the seeding's spread at a fraction of the cost.
    - Lloyd iterations on all N points, at most ``max_iter`` (default 20: the budget of faiss'
      k-means, which pytorch-metric-learning uses), stopping early when the assignments stop
      changing or the squared centre shift is at most ``tol`` times the mean feature variance
      (scikit-learn's criterion). The returned assignment is against the final centres.
    - Assignment: argmin_c ||c||^2 - 2 x.c in float32 (||x||^2 is constant along the row), a
      point equidistant from several centres going to the lowest-numbered one (``argmin``
      returns the first minimum). Centre update by ``index_add_`` (deterministic on CPU); an
      empty cluster keeps its previous centre.
    - The best of ``n_init`` seeded runs by inertia (float64 sum of squared distances).

    Deterministic for a ``seed``: the same input gives the same assignment.
    """
    x = _as_embeddings(embeddings)
    n = len(x)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, N] = [1, {n}], got {n_clusters}")
    gen = torch.Generator().manual_seed(seed)
    sq = (x * x).sum(dim=1)
    threshold = tol * x.var(dim=0).mean().item()
    init_points = min(n, _INIT_POINTS_PER_CLUSTER * n_clusters)
    best: tuple[torch.Tensor, float] | None = None
    for _ in range(n_init):
        sub = torch.randperm(n, generator=gen)[:init_points] if init_points < n else slice(None)
        centers = _kmeans_plus_plus(x[sub], sq[sub], n_clusters, gen)
        assign, inertia = _lloyd(x, sq, centers, max_iter, threshold)
        if best is None or inertia < best[1]:
            best = (assign, inertia)
    assert best is not None
    return best


def _sq_dist_to(x: torch.Tensor, sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, M) from the points to centres c (M, D), clamped at 0."""
    d = torch.addmm(sq.unsqueeze(1), x, c.T, alpha=-2.0)
    d += (c * c).sum(dim=1).unsqueeze(0)
    return d.clamp_(min=0.0)


def _kmeans_plus_plus(
    x: torch.Tensor, sq: torch.Tensor, k: int, gen: torch.Generator
) -> torch.Tensor:
    n = len(x)
    trials = 2 + int(math.log(k))
    centers = torch.empty((k, x.shape[1]), dtype=x.dtype)
    first = int(torch.randint(n, (1,), generator=gen))
    centers[0] = x[first]
    closest = _sq_dist_to(x, sq, x[first : first + 1]).squeeze(1)
    for c in range(1, k):
        cum = closest.cumsum(0, dtype=torch.float64)
        total = cum[-1].item()
        if total <= 0.0:  # every point already sits on a centre (duplicates): any point will do
            cand = torch.randint(n, (trials,), generator=gen)
        else:
            r = torch.rand(trials, generator=gen, dtype=torch.float64) * total
            cand = torch.searchsorted(cum, r).clamp_(max=n - 1)
        d_cand = torch.minimum(_sq_dist_to(x, sq, x[cand]), closest.unsqueeze(1))  # (N, trials)
        best = int(d_cand.sum(dim=0, dtype=torch.float64).argmin())
        centers[c] = x[cand[best]]
        closest = d_cand[:, best].contiguous()
    return centers


def _assign(
    x: torch.Tensor, sq: torch.Tensor, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every point (ties: the lowest-numbered) and the squared distance."""
    norms = (centers * centers).sum(dim=1)
    assign = torch.empty(len(x), dtype=torch.int64)
    dist = torch.empty(len(x), dtype=x.dtype)
    for start in range(0, len(x), _ASSIGN_ROWS):
        rows = slice(start, start + _ASSIGN_ROWS)
        # argmin_c ||x - c||^2 = argmin_c ||c||^2 - 2 x.c: ||x||^2 is constant along the row.
        torch.min(
            torch.addmm(norms, x[rows], centers.T, alpha=-2.0),
            dim=1,
            out=(dist[rows], assign[rows]),
        )
    return assign, dist.add_(sq).clamp_(min=0.0)


def _lloyd(
    x: torch.Tensor, sq: torch.Tensor, centers: torch.Tensor, max_iter: int, threshold: float
) -> tuple[torch.Tensor, float]:
    k = len(centers)
    assign = None
    for _ in range(max_iter):
        new_assign, _ = _assign(x, sq, centers)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        new_centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
        shift = float((new_centers - centers).pow(2).sum())
        centers = new_centers
        if shift <= threshold:
            break
    # Final assignment against the final centres (what the returned inertia refers to).
    assign, dist = _assign(x, sq, centers)
    return assign, float(dist.double().sum())


def retrieval_metrics(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = (1, 2, 4, 8),
    nmi: bool = True,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 20,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Recall@k for every k in ``ks``, MAP@R and (if ``nmi``) NMI of the embeddings.

    Every item is a query against all the *other* items (Euclidean distance, exact kNN from
    :func:`nearest_neighbors`; ties go to the lower index). One kNN pass of depth
    max(max(ks), largest R) feeds both Recall@k and MAP@R, chunk by chunk of queries.

    - ``recall@k``: fraction of all N queries with a same-label item among their k nearest.
      A query whose class has no other item can never be recalled and counts as a miss (it
      stays in the denominator, as in Song et al.'s protocol). If k > N-1, k is clipped to
      N-1 (the key keeps the requested k).
    - ``map@r``: mean over queries of (1/R) sum_{i<=R} P(i) rel(i), R = number of other items
      of the query's class; queries with R = 0 are left out of the mean, as in
      pytorch-metric-learning (NaN if every query is such a singleton).
    - ``nmi``: :func:`kmeans` with as many clusters as classes (greedy k-means++ seeding on a
      subsample of 20 points a cluster, ``n_init`` seeded restarts of at most ``max_iter``
      Lloyd iterations, default 20, seed ``seed``), scored by scikit-learn's
      ``normalized_mutual_info_score``. pytorch-metric-learning (faiss) runs one randomly
      seeded k-means of exactly 20 iterations, so its NMI is close to, not equal to, this
      (0.822 vs 0.811 on the NABirds-sized benchmark set; 0.828 with Lloyd run to
      convergence, ``max_iter=100``).

    Embeddings: (N, D) float tensor or array, N >= 2. Labels: N values of any kind.
    """
    x = _as_embeddings(embeddings)
    n = len(x)
    if n < 2:
        raise ValueError(f"retrieval metrics need at least 2 embeddings, got {n}")
    y = _encode_labels(labels, n)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    counts = torch.bincount(y)
    others = counts[y] - 1  # R for every query
    depth = min(max(max(ks), int(others.max())), n - 1)  # >= 1 as n >= 2
    first_hit = torch.empty(n, dtype=torch.int64)  # rank (0-based) of the first same-label item
    ap_sum = torch.zeros((), dtype=torch.float64)
    ranks = torch.arange(1, depth + 1, dtype=torch.float64)
    for rows, nn_idx in _neighbour_chunks(x, depth, chunk_size):
        q_labels, r = y[rows], others[rows]
        hits = y[nn_idx] == q_labels.unsqueeze(1)  # (chunk, depth)
        first_hit[rows] = torch.where(hits.any(dim=1), hits.to(torch.int8).argmax(dim=1), depth)
        rel = hits & (ranks.unsqueeze(0) <= r.unsqueeze(1))  # relevant and within the top R
        precision = rel.cumsum(dim=1, dtype=torch.float64) / ranks
        ap = (precision * rel).sum(dim=1)
        ap_sum += (ap[r > 0] / r[r > 0]).sum()

    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float((first_hit < min(k, depth)).double().mean())
    has_others = int((others > 0).sum())
    out["map@r"] = float(ap_sum / has_others) if has_others else float("nan")

    if nmi:
        clusters, _ = kmeans(x, len(counts), n_init=n_init, max_iter=max_iter, seed=seed)
        out["nmi"] = float(normalized_mutual_info_score(y.numpy(), clusters.numpy()))
    return out


def _as_predictions(logits_or_preds: ArrayLike) -> torch.Tensor:
    p = torch.as_tensor(logits_or_preds)
    if p.ndim == 2:
        return p.argmax(dim=1)
    if p.ndim != 1:
        raise ValueError(f"expected (N, C) logits or (N,) predictions, got shape {tuple(p.shape)}")
    return p.long()


def _per_class_recall(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy on each class's test items (torchmetrics' per-class accuracy)."""
    return multiclass_accuracy(preds, labels, num_classes=num_classes, average="none")


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
    preds = _as_predictions(logits)
    y = torch.as_tensor(labels).long()
    if len(y) == 0 or len(preds) != len(y):
        raise ValueError(f"need as many predictions as labels (>0): {len(preds)} vs {len(y)}")
    acc = multiclass_accuracy(preds, y, num_classes=num_classes, average="micro")
    present = torch.bincount(y, minlength=num_classes) > 0
    macro = _per_class_recall(preds, y, num_classes)[present].mean()
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
    preds = _as_predictions(logits_or_preds)
    y = torch.as_tensor(labels).long()
    counts = torch.as_tensor(np.asarray(train_counts)).long()
    num_classes = len(counts)
    if len(y) == 0 or len(preds) != len(y):
        raise ValueError(f"need as many predictions as labels (>0): {len(preds)} vs {len(y)}")
    recall = _per_class_recall(preds, y, num_classes)
    present = torch.bincount(y, minlength=num_classes) > 0
    groups = {
        "many_acc": counts > many,
        "medium_acc": (counts >= few) & (counts <= many),
        "few_acc": counts < few,
    }
    out = {}
    for key, members in groups.items():
        members = members & present
        if members.any():
            out[key] = float(recall[members].mean())
    return out
