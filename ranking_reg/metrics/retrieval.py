"""Retrieval quality of an embedding: every item is a query against all the other items.

- ``recall@k`` (Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding",
  CVPR 2016): the fraction of queries for which at least one of the k nearest *other* items
  shares the query's label.
- ``map@r`` (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020): with R the number
  of other items of the query's class, AP@R = (1/R) sum_{i=1..R} P(i) rel(i), averaged over the
  queries; the same numbers as pytorch-metric-learning's ``AccuracyCalculator``
  (``mean_average_precision_at_r`` with ``k="max_bin_count"``).
- ``nmi``: normalized mutual information (scikit-learn, arithmetic mean) between the labels and
  a k-means clustering (:mod:`ranking_reg.metrics.kmeans`) of the embeddings with as many
  clusters as classes.

Everything here is exact (brute-force kNN, no approximate index: the symmetric search of
:mod:`ranking_reg.metrics.self_knn`, which computes each pair's distance once, with
:mod:`ranking_reg.metrics.knn` as its reference) and deterministic for a seed. Most of the
time is float32 GEMMs (the kNN's distances, then the k-means assignments), run through numpy's
OpenBLAS by default (:mod:`~ranking_reg.metrics.gemm`:
torch's MKL sgemm is ~2x slower on AMD CPUs); ``experiments/benchmarks/bench_eval.py`` times it
against pytorch-metric-learning's ``AccuracyCalculator`` with faiss-cpu.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from ranking_reg.metrics.gemm import check_backend
from ranking_reg.metrics.kmeans import kmeans
from ranking_reg.metrics.knn import ArrayLike, _as_embeddings, _neighbour_chunks
from ranking_reg.metrics.self_knn import expected_bytes, self_neighbors


def _self_search_chunks(
    x: torch.Tensor, depth: int, chunk_size: int | None, backend: str
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(query slice, (rows, depth) neighbour indices) of every item's leave-one-out search:
    the symmetric search of :mod:`~ranking_reg.metrics.self_knn` (half the GEMM) through
    numpy's BLAS, or, with ``backend="torch"`` or when the symmetric search would hold more than
    2 GiB of heaps, the reference chunked search
    (:func:`~ranking_reg.metrics.knn.nearest_neighbors`)."""
    # the symmetric search holds every query's heap of k keys at once (16 bytes a neighbour with
    # the result): past 2 GiB (e.g. 200k items with classes of 1,000) the chunked search, whose
    # memory is one block of queries, is the one that fits
    if check_backend(backend) == "torch" or expected_bytes(len(x), depth) > 2 << 30:
        yield from _neighbour_chunks(x, depth, chunk_size, backend=backend)
        return
    idx = self_neighbors(x, depth, block_rows=chunk_size)
    step = 4096
    for start in range(0, len(x), step):
        rows = slice(start, min(start + step, len(x)))
        yield rows, idx[rows]


def _encode_labels(labels: ArrayLike, n: int) -> torch.Tensor:
    """Labels of any values (sparse ints, strings) -> contiguous class ids 0..C-1 (int64)."""
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must be a 1-D array of length {n}, got shape {y.shape}")
    _, codes = np.unique(y, return_inverse=True)
    return torch.from_numpy(codes.reshape(-1).astype(np.int64))


def retrieval_metrics(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = (1, 2, 4, 8),
    nmi: bool = True,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 20,
    chunk_size: int | None = None,
    backend: str = "auto",
    per_query: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Recall@k for every k in ``ks``, MAP@R and (if ``nmi``) NMI of the embeddings.

    Every item is a query against all the *other* items (Euclidean distance, exact kNN from
    :func:`~.self_knn.self_neighbors`, the same lists as :func:`~.knn.nearest_neighbors`;
    ties go to the lower index). One kNN pass of depth max(max(ks), largest R) feeds both
    Recall@k and MAP@R. ``chunk_size``: rows of one distance block.

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
    ``backend``: the BLAS of the kNN and k-means GEMMs, ``auto`` (= ``blas``, numpy's OpenBLAS,
    and the symmetric search) or ``torch`` (:mod:`~ranking_reg.metrics.gemm`; the reference
    chunked search, every distance computed from both sides).

    ``per_query``: a dict to fill with each query's own results (for diagnostics such as
    recall by class frequency or the worst queries): ``first_hit`` (N,) int64, the 0-based
    rank of the nearest same-label item among the ``depth`` = max(max(ks), largest R)
    neighbours searched (``depth`` when none is found; query i hits at k iff
    ``first_hit[i] < k``), and ``ap@r`` (N,) float64, the query's AP@R (NaN when R = 0).
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
    ap_each = torch.full((n,), float("nan"), dtype=torch.float64) if per_query is not None else None
    ranks = torch.arange(1, depth + 1, dtype=torch.float64)
    for rows, nn_idx in _self_search_chunks(x, depth, chunk_size, backend):
        q_labels, r = y[rows], others[rows]
        hits = y[nn_idx] == q_labels.unsqueeze(1)  # (chunk, depth)
        first_hit[rows] = torch.where(hits.any(dim=1), hits.to(torch.int8).argmax(dim=1), depth)
        rel = hits & (ranks.unsqueeze(0) <= r.unsqueeze(1))  # relevant and within the top R
        precision = rel.cumsum(dim=1, dtype=torch.float64) / ranks
        ap = (precision * rel).sum(dim=1)
        ap_sum += (ap[r > 0] / r[r > 0]).sum()
        if ap_each is not None:
            ap_each[rows] = torch.where(r > 0, ap / r.clamp(min=1), float("nan"))

    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float((first_hit < min(k, depth)).double().mean())
    has_others = int((others > 0).sum())
    out["map@r"] = float(ap_sum / has_others) if has_others else float("nan")
    if per_query is not None:
        per_query["first_hit"] = first_hit
        per_query["ap@r"] = ap_each

    if nmi:
        clusters, _ = kmeans(
            x, len(counts), n_init=n_init, max_iter=max_iter, seed=seed, backend=backend
        )
        out["nmi"] = float(normalized_mutual_info_score(y.numpy(), clusters.numpy()))
    return out
