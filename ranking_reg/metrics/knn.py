"""Exact k-nearest-neighbour search of a set of embeddings against itself (brute force, chunked).

The neighbours of an item are the *other* items of the set ordered by Euclidean distance,
nearest first, ties broken by the lower item index: the prefix of a stable sort of the item's
row of distances. This is the leave-one-out search behind Recall@K (Song et al., "Deep Metric
Learning via Lifted Structured Feature Embedding", CVPR 2016) and MAP@R (Musgrave et al.,
"A Metric Learning Reality Check", ECCV 2020), see :mod:`ranking_reg.metrics.retrieval`, and
behind the retrieval grid of :mod:`ranking_reg.reporting.plots`.

Exact (no approximate index) and deterministic; memory stays at one (queries x items) block.
The block of ranking keys is one float32 GEMM through numpy's OpenBLAS
(:mod:`~ranking_reg.metrics.gemm`: torch's MKL sgemm runs ~2x slower on AMD CPUs); it is most
of the time (``experiments/benchmarks/bench_eval.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ranking_reg.metrics.gemm import augmented_items, blas_threads, check_backend, ranking_keys

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


def _order_by_distance_then_index(vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Sort each row's candidates by (distance, index): a stable sort by distance of
    candidates already ordered by index."""
    by_index = idx.argsort(dim=1)
    vals, idx = vals.gather(1, by_index), idx.gather(1, by_index)
    return idx.gather(1, vals.argsort(dim=1, stable=True))


def nearest_neighbors(
    embeddings: ArrayLike,
    k: int,
    chunk_size: int | None = None,
    queries: ArrayLike | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Indices (Q, k) of the k nearest *other* items of every query, nearest first.

    Exact Euclidean kNN of the set against itself. The queries are all N items (Q = N, row i
    for item i) or, given ``queries`` (item indices, any order, repeats allowed), those items
    (row j for item ``queries[j]``): the lists are the same rows as for all N queries.
    Items are ranked, per query q, by ||x||^2 - 2 q.x in float32: the squared distance less
    ||q||^2, which is constant along the query's row, so the order is that of the squared
    distances and the rounding of adding ||q||^2 is saved. One matmul per chunk of queries,
    so memory stays at ``chunk_size`` x N floats (never N x N). The query itself is excluded
    by index, so an exact duplicate of the query is a legitimate (distance-0) neighbour.

    Ties are broken by the lower item index, i.e. the neighbour list is the prefix of a stable
    sort of the row by distance. ``torch.topk`` does not promise which of several equal values
    it returns, so rows whose k-th and (k+1)-th smallest distances are equal are re-selected
    exactly from the full row; the order inside the k is then fixed by a stable sort.

    ``backend`` (``auto`` = ``blas``, or ``torch``) picks the BLAS of the key GEMM
    (:mod:`~ranking_reg.metrics.gemm`); the lists are the same wherever the float32 keys are
    (e.g. small integer data) and may differ only between items whose distances are within
    float32 rounding of each other.
    """
    x = _as_embeddings(embeddings)
    q = None if queries is None else _as_query_indices(queries, len(x))
    chunks = [idx for _, idx in _neighbour_chunks(x, k, chunk_size, q, backend=backend)]
    return torch.cat(chunks) if chunks else torch.zeros((0, k), dtype=torch.int64)


def _as_query_indices(queries: ArrayLike, n: int) -> torch.Tensor:
    q = torch.as_tensor(np.asarray(queries) if not torch.is_tensor(queries) else queries)
    q = q.detach().cpu().reshape(-1)
    if q.numel() and (q.is_floating_point() or int(q.min()) < 0 or int(q.max()) >= n):
        raise ValueError(f"queries must be item indices in [0, {n - 1}]")
    return q.long()


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


def search_gallery(
    gallery: ArrayLike,
    queries: ArrayLike,
    k: int,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean kNN of new ``queries`` (Q, D) in a ``gallery`` (N, D).

    Returns ``(distances, indices)``, both (Q, k), nearest first: the k gallery items with the
    smallest Euclidean distance to each query, ties broken by the lower gallery index (the
    prefix of a stable sort of the query's row of distances), as in :func:`nearest_neighbors`
    but with no item excluded (a query is not a gallery item). ``distances`` are recomputed
    exactly for the chosen pairs as ||q - g|| in float32 (not from the ranking expansion).
    """
    g = _as_embeddings(gallery)
    q = _as_embeddings(queries)
    if q.shape[1] != g.shape[1] and len(q):
        raise ValueError(f"queries have dimension {q.shape[1]} but the gallery has {g.shape[1]}")
    if not 1 <= k <= len(g):
        raise ValueError(f"k must be in [1, gallery size] = [1, {len(g)}], got {k}")
    chunks = [idx for _, idx in _neighbour_chunks(g, k, chunk_size, vectors=q)]
    idx = torch.cat(chunks) if chunks else torch.zeros((0, k), dtype=torch.int64)
    distances = (q.unsqueeze(1) - g[idx]).norm(dim=2) if len(q) else torch.zeros((0, k))
    return distances, idx


def _neighbour_chunks(
    x: torch.Tensor,
    k: int,
    chunk_size: int | None,
    queries: torch.Tensor | None = None,
    vectors: torch.Tensor | None = None,
    backend: str = "auto",
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(query slice, their (rows, k) neighbour indices) for consecutive chunks of queries: of
    all items in order, of the items ``queries`` (the slice then indexes ``queries``), or of
    outside ``vectors`` (nothing excluded; the slice indexes ``vectors``)."""
    n = len(x)
    n_queries = len(vectors) if vectors is not None else n if queries is None else len(queries)
    backend = check_backend(backend)
    limit = n if vectors is not None else n - 1
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in [1, {limit}], got {k}")
    # one more than needed, to see whether a tie straddles the k-th place (+inf padding when
    # the whole gallery is asked for)
    take = k + 1
    groups = _group_sizes(n, take)
    whole = math.prod(groups)
    width = max(-(-n // whole) * whole, take)  # columns padded to whole groups; padding +inf
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // width)
    items = augmented_items(x, width)
    block = np.empty((min(chunk_size, n_queries), width), dtype=np.float32)
    with blas_threads():
        yield from _chunks(x, k, take, groups, chunk_size, items, block, queries, vectors, backend)


def _chunks(
    x: torch.Tensor,
    k: int,
    take: int,
    groups: tuple[int, ...],
    chunk_size: int,
    items: np.ndarray,
    block: np.ndarray,
    queries: torch.Tensor | None,
    vectors: torch.Tensor | None,
    backend: str,
) -> Iterator[tuple[slice, torch.Tensor]]:
    n = len(x)
    n_queries = len(vectors) if vectors is not None else n if queries is None else len(queries)
    for start in range(0, n_queries, chunk_size):
        stop = min(start + chunk_size, n_queries)
        rows = torch.arange(stop - start)
        own = None
        if vectors is not None:
            q = vectors[start:stop]
        elif queries is None:
            q, own = x[start:stop], rows + start
        else:
            own = queries[start:stop]
            q = x[own]
        d = ranking_keys(q, items, block[: stop - start], backend)
        d[:, n:] = math.inf
        if own is not None:
            d[rows, own] = math.inf  # the query itself
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
