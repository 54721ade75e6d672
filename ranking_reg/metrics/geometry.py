"""Geometry of an embedding: how tight the classes are against how far apart they lie.

- ``intra_dist``: the mean squared Euclidean distance ||x_i - x_j||^2 over all ordered pairs
  i != j of the same class;
- ``inter_dist``: the same mean over all ordered pairs of different classes;
- ``intra_inter_ratio``: intra_dist / inter_dist (scale-free: smaller = tighter, better
  separated classes; about 1 for an embedding that ignores the classes).

Exact, in O(N·D) and float64, from per-class sums instead of the N² pairs: for a set S of n
vectors, sum_{i != j in S} ||x_i - x_j||^2 = 2 n sum_{i in S} ||x_i||^2 - 2 ||sum_{i in S} x_i||^2
(ordered pairs). Applied to each class c and to the whole set, the different-class total is the
all-pairs total less the same-class ones.

:func:`pair_distance_sample` draws the same-class ("positive") and different-class
("negative") pair distances of the histogram picture, all of them when there are few.
"""

from __future__ import annotations

import numpy as np
import torch

from ranking_reg.metrics.knn import ArrayLike

DEFAULT_MAX_PAIRS = 20_000  # pairs of each kind in the histogram sample
_CHUNK = 4096  # rows (or pairs) converted / differenced at a time


def _pair_sum(
    count: torch.Tensor, sq_norm_sum: torch.Tensor, vec_sum: torch.Tensor
) -> torch.Tensor:
    """sum over ordered pairs i != j of ||x_i - x_j||^2 of a set (or of each row's set)."""
    return 2.0 * count * sq_norm_sum - 2.0 * (vec_sum * vec_sum).sum(dim=-1)


def embedding_geometry(embeddings: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """``intra_dist``, ``inter_dist`` and ``intra_inter_ratio`` of ``embeddings`` (N, D) with
    ``labels`` (N,) of any integer ids, exact in float64, O(N·D) (see the module docstring).

    A key is left out when it has no pair: ``intra_dist`` (and the ratio) when every class has a
    single item, ``inter_dist`` (and the ratio) when there is one class; the ratio also when
    ``inter_dist`` is 0.
    """
    x = embeddings if torch.is_tensor(embeddings) else torch.as_tensor(np.asarray(embeddings))
    x = x.detach().cpu()
    y = torch.as_tensor(labels).detach().cpu().long()
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need (N, D) embeddings and N labels: {tuple(x.shape)}, {tuple(y.shape)}")
    n = len(x)
    _, codes = torch.unique(y, return_inverse=True)
    n_classes = int(codes.max()) + 1 if n else 0
    count_c = torch.bincount(codes, minlength=n_classes).double()
    sq_c = torch.zeros(n_classes, dtype=torch.float64)
    sum_c = torch.zeros(n_classes, x.shape[1], dtype=torch.float64)
    for start in range(0, n, _CHUNK):  # float64 a chunk at a time: no N x D float64 copy
        rows = x[start : start + _CHUNK].double()
        sq_c.index_add_(0, codes[start : start + _CHUNK], (rows * rows).sum(dim=1))
        sum_c.index_add_(0, codes[start : start + _CHUNK], rows)
    intra_total = float(_pair_sum(count_c, sq_c, sum_c).sum())
    all_total = float(_pair_sum(torch.tensor(float(n)), sq_c.sum(), sum_c.sum(dim=0)))
    intra_pairs = float((count_c * (count_c - 1)).sum())
    inter_pairs = float(n * (n - 1)) - intra_pairs
    out: dict[str, float] = {}
    if intra_pairs > 0:
        # rounding can leave a tiny negative total for identical points: clamp at 0
        out["intra_dist"] = max(intra_total, 0.0) / intra_pairs
    if inter_pairs > 0:
        out["inter_dist"] = max(all_total - intra_total, 0.0) / inter_pairs
    if "intra_dist" in out and out.get("inter_dist", 0.0) > 0:
        out["intra_inter_ratio"] = out["intra_dist"] / out["inter_dist"]
    return out


def pair_distance_sample(
    embeddings: ArrayLike,
    labels: ArrayLike,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Euclidean distances of same-class and of different-class pairs, for a histogram.

    Unordered pairs {i, j}, i != j. When a kind has at most ``max_pairs`` pairs, all of them;
    otherwise ``max_pairs`` pairs drawn uniformly with replacement among that kind's pairs
    (seeded by ``seed``: a same-class pair picks its class with probability proportional to its
    number of pairs, then two distinct members; a different-class pair is a uniform pair of
    items redrawn while it is a same-class pair). Returns ``(positive, negative, sampled)``
    (float64 arrays of distances computed in the embeddings' precision; ``sampled`` is True
    when either kind was sampled). Cost O(max_pairs·D).
    """
    x = embeddings if torch.is_tensor(embeddings) else torch.as_tensor(np.asarray(embeddings))
    x = x.detach().cpu()
    y = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels).astype(np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need (N, D) embeddings and N labels: {x.shape}, {y.shape}")
    if int(max_pairs) < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs}")
    rng = np.random.default_rng(seed)
    n = len(y)
    order = np.argsort(y, kind="stable")  # the items of each class, contiguous
    classes, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    pos_per_class = counts * (counts - 1) // 2
    n_pos = int(pos_per_class.sum())
    n_neg = n * (n - 1) // 2 - n_pos
    sampled = n_pos > max_pairs or n_neg > max_pairs

    if n_pos <= max_pairs:
        pos_i, pos_j = _class_pairs(order, starts, counts, same=True)
    else:
        cls = rng.choice(len(classes), size=int(max_pairs), p=pos_per_class / n_pos)
        a = rng.integers(0, counts[cls])
        b = rng.integers(0, counts[cls] - 1)
        b = b + (b >= a)  # a distinct second member
        pos_i, pos_j = order[starts[cls] + a], order[starts[cls] + b]
    if n_neg <= max_pairs:
        neg_i, neg_j = _class_pairs(order, starts, counts, same=False)
    else:
        neg_i, neg_j = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        while len(neg_i) < max_pairs:  # rejection sampling; accepts most draws on most data
            a = rng.integers(0, n, size=2 * int(max_pairs))
            b = rng.integers(0, n, size=2 * int(max_pairs))
            keep = y[a] != y[b]
            neg_i = np.concatenate([neg_i, a[keep]])
            neg_j = np.concatenate([neg_j, b[keep]])
        neg_i, neg_j = neg_i[: int(max_pairs)], neg_j[: int(max_pairs)]
    return _distances(x, pos_i, pos_j), _distances(x, neg_i, neg_j), sampled


def _class_pairs(
    order: np.ndarray, starts: np.ndarray, counts: np.ndarray, same: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered same-class (``same``) or different-class pair, as two index arrays;
    ``order`` lists the items class by class, class c at ``starts[c]``, ``counts[c]`` long."""
    firsts, seconds = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    n = len(order)
    for start, count in zip(starts, counts, strict=True):
        members = order[start : start + count]
        if same:
            a, b = np.triu_indices(int(count), k=1)
            firsts.append(members[a])
            seconds.append(members[b])
        else:  # with the items of every later class
            later = order[start + count :]
            firsts.append(np.repeat(members, n - start - count))
            seconds.append(np.tile(later, int(count)))
    return np.concatenate(firsts), np.concatenate(seconds)


def _distances(x: torch.Tensor, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """||x_i - x_j|| of each pair, in x's precision (a histogram needs no more), as float64."""
    values = x.numpy()  # numpy's fancy indexing is several times faster than torch's here
    out = np.empty(len(i), dtype=np.float64)
    for start in range(0, len(i), _CHUNK):
        stop = start + _CHUNK
        out[start:stop] = np.linalg.norm(values[i[start:stop]] - values[j[start:stop]], axis=1)
    return out
