"""k-means clustering of embeddings in torch, for the NMI of :mod:`ranking_reg.metrics.retrieval`.

Lloyd's algorithm (Lloyd, "Least squares quantization in PCM", 1982) minimising the inertia
sum_i ||x_i - c_{a(i)}||^2, seeded by greedy k-means++ (Arthur & Vassilvitskii, "k-means++:
The Advantages of Careful Seeding", SODA 2007; scikit-learn's variant with 2 + ln(k)
candidates a step). The iteration budget is faiss's (20 Lloyd iterations), the k-means that
pytorch-metric-learning's ``AccuracyCalculator`` runs for its NMI.

Deterministic for a seed. At NABirds' test size (24,633 x 256, 555 clusters) on one CPU
thread a clustering took ~2.3 s on an Intel Xeon (``experiments/benchmarks/bench_eval.py``).
The assignment GEMMs go through numpy's OpenBLAS (:mod:`~ranking_reg.metrics.gemm`), the BLAS
faiss's k-means (what pytorch-metric-learning runs) uses too; faiss itself is not needed.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from ranking_reg.metrics.gemm import (
    augmented_items,
    blas_threads,
    check_backend,
    one_torch_thread,
    ranking_keys,
)
from ranking_reg.metrics.knn import ArrayLike, _as_embeddings

# Greedy k-means++ runs on a seeded subsample of at most this many points per cluster: its
# n_clusters sequential steps each read every candidate point (memory-bound, ~1.5 s at NABirds'
# 24,633 x 256 and 555 clusters); 20 a cluster halves that, and Lloyd then runs on all points.
_INIT_POINTS_PER_CLUSTER = 20
# Elements of one (points x clusters) block of the assignment: 2**25 float32 = 128 MiB, all
# 24,633 points at once for 555 clusters. Few large GEMMs beat many small ones: one 24,633-row
# product 0.14 s against 0.35 s in 2,048-row blocks (AMD EPYC, 2 threads, bench_eval's data).
_BLOCK_ELEMENTS = 1 << 25


def kmeans(
    embeddings: ArrayLike,
    n_clusters: int,
    n_init: int = 1,
    max_iter: int = 20,
    tol: float = 1e-4,
    seed: int = 0,
    backend: str = "auto",
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

    Deterministic for a ``seed``: the same input gives the same assignment. ``backend``: the
    BLAS of the assignment GEMM (:func:`~ranking_reg.metrics.gemm.check_backend`).
    """
    backend = check_backend(backend)
    x = _as_embeddings(embeddings)
    n = len(x)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, N] = [1, {n}], got {n_clusters}")
    gen = torch.Generator().manual_seed(seed)
    sq = (x * x).sum(dim=1)
    threshold = tol * x.var(dim=0).mean().item()
    init_points = min(n, _INIT_POINTS_PER_CLUSTER * n_clusters)
    best: tuple[torch.Tensor, float] | None = None
    # The GEMMs on torch's thread count through numpy's BLAS, everything else in torch on one
    # thread: on 2 cores the assignment ran in 0.06 s this way against
    # 0.10 s with both pools on 2 threads, whose idle workers spin against each other.
    # (backend="torch" keeps torch's threads: its GEMM is torch's own)
    # The k-means++ start is n_clusters sequential steps of small products, each too small to
    # share between threads, and a pool's barrier at every step stalls whenever another process
    # holds a core (on a loaded 2-core machine the start took 30 s with 2 threads against 1.5 s
    # with one; idle, one thread is as fast).
    torch_threads = nullcontext() if backend == "torch" else one_torch_thread()
    with blas_threads(torch.get_num_threads()), torch_threads:
        for _ in range(n_init):
            sub = torch.randperm(n, generator=gen)[:init_points] if init_points < n else slice(None)
            centers = _kmeans_plus_plus(x[sub], sq[sub], n_clusters, gen)
            assign, inertia = _lloyd(x, sq, centers, max_iter, threshold, backend)
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
    x: torch.Tensor,
    sq: torch.Tensor,
    centers: torch.Tensor,
    backend: str = "blas",
    buffer: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every point (ties: the lowest-numbered) and the squared distance.
    ``buffer``: a float32 array of at least (min(N, step), n_clusters) elements to reuse (a
    fresh 54 MB block per Lloyd iteration costs ~20 ms of page faults at NABirds' size)."""
    items = augmented_items(centers)
    step = max(1, _BLOCK_ELEMENTS // len(centers))
    shape = (min(len(x), step), len(centers))
    if buffer is None or buffer.size < shape[0] * shape[1]:
        buffer = np.empty(shape[0] * shape[1], dtype=np.float32)
    block = buffer[: shape[0] * shape[1]].reshape(shape)
    assign = torch.empty(len(x), dtype=torch.int64)
    dist = torch.empty(len(x), dtype=x.dtype)
    for start in range(0, len(x), step):  # BLAS threads: set by kmeans() for the clustering
        rows = slice(start, start + step)
        keys = ranking_keys(x[rows], items, block[: len(dist[rows])], backend)
        # argmin_c ||x - c||^2 = argmin_c ||c||^2 - 2 x.c: ||x||^2 is constant along the row.
        torch.min(keys, dim=1, out=(dist[rows], assign[rows]))
    return assign, dist.add_(sq).clamp_(min=0.0)


def _lloyd(
    x: torch.Tensor,
    sq: torch.Tensor,
    centers: torch.Tensor,
    max_iter: int,
    threshold: float,
    backend: str,
) -> tuple[torch.Tensor, float]:
    k = len(centers)
    assign = None
    buffer = np.empty(min(len(x), max(1, _BLOCK_ELEMENTS // k)) * k, dtype=np.float32)
    for _ in range(max_iter):
        new_assign, _ = _assign(x, sq, centers, backend, buffer)
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
    assign, dist = _assign(x, sq, centers, backend, buffer)
    return assign, float(dist.double().sum())
