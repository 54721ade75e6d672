"""Exact leave-one-out kNN of a set against itself, each pair's distance computed once.

The neighbours of item i are the *other* items ordered by squared Euclidean distance, ties
broken by the lower item index (the prefix of a stable sort of i's row of distances), exactly
as :func:`~ranking_reg.metrics.knn.nearest_neighbors`, which stays the reference.

Why a second implementation: the brute-force search is one (N x N) GEMM, ~80 % of the time of
``retrieval_metrics`` at NABirds' test size, and faiss (pytorch-metric-learning's backend) runs
the same GEMM through the same OpenBLAS kernels, so matching its arithmetic cannot beat it by
much. The distance matrix is symmetric, though: this module computes only the blocks on and
above the diagonal (half the flops) and uses every computed value twice, for its row's query
and for its column's query.

How, for rows blocked as [s, e) and processed from the last block to the first:

1. one GEMM gives the distances of rows [s, e) to columns [s, N) (the block's own square and
   everything to its right), d_ij = ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j in float32;
2. *row direction*: each row's k-th smallest value over those columns, tau_i, is found
   without sorting the row: group minima (one vectorised ``minimum`` pass) give an upper bound t
   with at least k values <= t, one comparison pass keeps the few values <= t, and a
   partial sort of those gives tau_i. The values <= tau_i are kept as candidates;
3. *column direction*: a column j >= e belongs to a row processed earlier, whose tau_j is
   known and bounds its k-th smallest distance over *all* items from above (a bound over a
   subset of its items). So value d_ij is a candidate for query j only if d_ij <= tau_j: one
   comparison pass over the block keeps them (a few per column);
4. at the end every query's candidates (a few times k) hold every value <= its tau, hence its
   k nearest with every tie at the boundary; the neighbours are the first k of the candidates
   sorted by (distance, index).

Exact: each ordered pair (i, j) has exactly one computed value, seen by query i either in its
own row block (j >= s_i) or in the column direction of j's block (j < s_i); every value that
can be among a query's k smallest is kept; ties are resolved by index over all values equal
to the k-th. Distances are float32 with the BLAS's rounding, as any GEMM's; for data whose
arithmetic is exact in float32 (small integers) the lists equal the definition's exactly.
Degenerate data (e.g. thousands of identical points, where the bounds keep too many
candidates) falls back to the reference search.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from ranking_reg.metrics.gemm import blas_threads

# Elements of one (rows x columns) distance block: 2**25 float32 = 128 MiB (~1,360 rows of
# NABirds' 24,633 test images), as in the reference search.
_BLOCK_ELEMENTS = 1 << 25
# Row blocks stay below 2**16 rows, so a row's offset in its block sorts as uint16 (numpy's
# stable sort of 16-bit integers is a radix sort, ~10x faster than for wider keys).
_MAX_BLOCK_ROWS = (1 << 16) - 1
# Candidates of the column direction beyond which the data is degenerate (massive ties) and
# the reference search is used instead, per query: 2k(1 + ln blocks). A query of block b gets
# about k * s_b / (N - s_b) of them (its bound comes from a fraction (N - s_b)/N of the items),
# ~k(ln(blocks) - 1) on average for items in random order (e.g. 2.5k at NABirds' test size,
# 18 blocks), so this is ~3x the expected count.
_CANDIDATE_FACTOR = 2.0


class _TooManyCandidates(Exception):
    """The bounds keep too many candidates (massive ties): use the reference search."""


def _group_size(width: int, k: int) -> int:
    """Columns per group of the row-direction bound (a power of two, 1 = no groups).

    A row then costs a partial sort of width/g group minima plus ~k*g values read again; with
    the second ~5x dearer per value (a gather and a few passes), g ~ sqrt(width / 5k) balances
    them (8 at NABirds' test size, where width = 24,633 and k = 66).
    """
    g = 1
    while g < 64 and 4 * g * g * 5 * k <= width:  # next power of two while g < sqrt(w/5k)/2
        g *= 2
    return g


def _block_starts(n: int, rows: int) -> list[int]:
    """Starts of the row blocks: all of ``rows`` rows except the first (the remainder), so the
    block processed first (the last) is full and its queries' bounds are tight."""
    blocks = -(-n // rows)
    first = n - (blocks - 1) * rows
    return [0] + [first + i * rows for i in range(blocks - 1)]


def _grouped(rows_local: np.ndarray, n_rows: int, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flat entries (row, column values...) grouped by row (stable) into padded (n_rows, width)
    arrays, one per column array; padding is +inf for float arrays and -1 otherwise."""
    counts = np.bincount(rows_local, minlength=n_rows)
    width = int(counts.max()) if len(counts) else 0
    order = None
    if len(rows_local) > 1 and np.any(rows_local[1:] < rows_local[:-1]):
        order = np.argsort(rows_local.astype(np.uint16), kind="stable")
        rows_local = rows_local[order]
    starts = np.cumsum(counts) - counts
    pos = np.arange(len(rows_local)) - np.repeat(starts, counts)  # rows_local is sorted
    out: list[np.ndarray] = []
    for values in columns:
        values = values if order is None else values[order]
        fill = np.inf if values.dtype.kind == "f" else -1
        padded = np.full((n_rows, width), fill, dtype=values.dtype)
        padded[rows_local, pos] = values
        out.append(padded)
    return tuple(out)


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a C-contiguous 2-D mask, row-major; through ``flatnonzero``, which is
    ~8x faster than the 2-D ``nonzero`` on sparse masks."""
    flat = np.flatnonzero(mask)
    return np.divmod(flat, mask.shape[1])


def _kth_smallest(values: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest (1-based) of every row (partial sort, no indices)."""
    return np.partition(values, k - 1, axis=1)[:, k - 1]


def _block_rows(n: int, k: int, block_rows: int | None) -> int:
    rows = block_rows or _BLOCK_ELEMENTS // n
    return int(min(max(rows, k + 1), _MAX_BLOCK_ROWS, n))


def expected_bytes(n: int, k: int, block_rows: int | None = None) -> int:
    """Memory the search holds at once, besides its 128 MiB block: the (N, k) result and the
    candidates, about k(1 + ln blocks) a query at 12 bytes each (the count is data-dependent;
    this is the expected one for items in random order)."""
    blocks = -(-n // _block_rows(n, k, block_rows))
    return int(n * k * (8 + 12 * (1 + math.log(blocks))))


def self_neighbors(x: torch.Tensor, k: int, block_rows: int | None = None) -> torch.Tensor:
    """Indices (N, k) of the k nearest *other* items of every item, nearest first, ties by the
    lower index: the same lists as :func:`~ranking_reg.metrics.knn.nearest_neighbors` (see the
    module docstring for the method). ``x``: (N, D) float32 CPU tensor, finite; 1 <= k <= N-1.
    ``block_rows``: rows of one distance block (default: 2**25 elements a block)."""
    n = len(x)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    rows = _block_rows(n, k, block_rows)
    try:
        with blas_threads():
            return _search(x, k, rows)
    except _TooManyCandidates:
        from ranking_reg.metrics.knn import nearest_neighbors  # the reference search

        return nearest_neighbors(x, k, backend="blas")


def _search(x: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    n, dim = x.shape
    xs = x.numpy()
    sq = (x * x).sum(dim=1).numpy()
    # d_ij = [x_i, ||x_i||^2, 1] . [-2 x_j, 1, ||x_j||^2]: the GEMM writes distances directly;
    # zero rows pad the item side so a block's width can be rounded up to whole groups
    pad = 256  # >= g^2 - 1: a block's width rounds up to whole level-2 groups
    left = np.empty((n, dim + 2), dtype=np.float32)
    left[:, :dim], left[:, dim], left[:, dim + 1] = xs, sq, 1.0
    right = np.zeros((n + pad, dim + 2), dtype=np.float32)
    np.multiply(xs, -2.0, out=right[:n, :dim])
    right[:n, dim], right[:n, dim + 1] = 1.0, sq

    starts = _block_starts(n, rows)
    ends = starts[1:] + [n]
    tau = np.full(n, np.inf, dtype=np.float32)
    # candidates of every query, as runs of flat (query, item, distance) arrays sorted by query
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    budget = int(_CANDIDATE_FACTOR * k * (1 + math.log(len(starts))) * n)
    buffer = np.empty(rows * (n + pad), dtype=np.float32)
    mask = np.empty(rows * n, dtype=bool)
    threads = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(threads) as pool:
        for b in reversed(range(len(starts))):
            s, e = starts[b], ends[b]
            h, width = e - s, n - s
            g = _group_size(width, k)
            unit = g * g if (width // g) // g >= 4 * k else g  # see _row_direction
            padded_width = -(-width // unit) * unit
            d = buffer[: h * padded_width].reshape(h, padded_width)
            np.matmul(left[s:e], right[s : s + padded_width].T, out=d)
            d[:, width:] = np.inf
            d[np.arange(h), np.arange(h)] = np.inf  # the query itself

            # numpy's passes are single-threaded: slabs of rows in parallel (no GIL inside)
            parts = [a for a in np.array_split(np.arange(h), threads) if len(a)]
            work = partial(_slab, d, k, g, (s, e), tau, mask)
            results = list(pool.map(work, [(int(a[0]), int(a[-1]) + 1) for a in parts]))
            tau[s:e] = np.concatenate([t for t, _ in results])
            for _, out in results:
                runs.extend(out)
                budget -= sum(len(run[0]) for run in out[1:])
            if budget < 0:
                raise _TooManyCandidates
        finals = pool.map(lambda b: _final(runs, starts[b], ends[b], k), range(len(starts)))
        return torch.from_numpy(np.concatenate(list(finals)))


def _slab(
    d: np.ndarray,
    k: int,
    g: int,
    block: tuple[int, int],
    tau: np.ndarray,
    mask: np.ndarray,
    slab: tuple[int, int],
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Rows [lo, hi) of the block of queries [s, e) (``d``: their distances to items [s, N)):
    their tau and candidate runs (row direction, then column direction for items >= e)."""
    (s, e), (lo, hi) = block, slab
    n = len(tau)
    tau_slab, run = _row_direction(d[lo:hi], k, g, s + lo, s)
    runs = [run]
    if e < n:
        m = mask[lo * (n - e) : hi * (n - e)]
        runs.append(_column_direction(d[lo:hi, e - s : n - s], tau[e:], s + lo, e, m))
    return tau_slab, runs


def _group_minima(a: np.ndarray, g: int) -> np.ndarray:
    """Minima (rows, w/g) of the groups of g columns of ``a`` (rows, w): column j is in group
    j mod (w/g), so a group's minimum is an elementwise minimum of g contiguous slices."""
    m = a.shape[1] // g
    minima = a[:, :m].copy()
    for j in range(1, g):
        np.minimum(minima, a[:, j * m : (j + 1) * m], out=minima)
    return minima


def _row_direction(
    d: np.ndarray, k: int, g: int, first_query: int, first_item: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """tau (the k-th smallest value of every row of ``d``) and the run of every row's
    entries <= tau (query ``first_query`` + row, item ``first_item`` + column, distance).

    With groups of g columns (column j in group j mod m, m = width/g: g contiguous slices,
    one vectorised ``minimum`` pass), the k-th smallest group minimum bounds the row's k-th smallest
    value from above; only the groups whose minimum is <= that bound (about k of them) can
    hold values <= it, so only their g*k-odd values are read again.
    """
    h, width = d.shape
    if g == 1:
        bound = _kth_smallest(d, k)
        rows, cols = _nonzero(d <= bound[:, None])
        values = d[rows, cols]
    else:
        m = width // g
        # numpy, not torch's amin: this runs in one of the slab threads, and torch's own
        # thread pool inside them would oversubscribe the cores
        minima = _group_minima(d, g)
        if m % g == 0 and m // g >= 4 * k:
            # a second level (groups of g minima): the partial sort runs on width/g^2 values;
            # the level-1 groups that can hold values <= bound are those of the kept level-2
            # groups whose own minimum is <= bound
            m2 = m // g
            minima2 = _group_minima(minima, g)
            bound = _kth_smallest(minima2, k)
            rows, groups2 = _nonzero(minima2 <= bound[:, None])
            groups = (groups2[:, None] + m2 * np.arange(g)).reshape(-1)
            rows = np.repeat(rows, g)
            inside = minima[rows, groups] <= bound[rows]
            rows, groups = rows[inside], groups[inside]
        else:
            bound = _kth_smallest(minima, k)  # >= k values of the row are <= bound
            rows, groups = _nonzero(minima <= bound[:, None])
        cols = (groups[:, None] + m * np.arange(g)).reshape(-1)
        rows = np.repeat(rows, g)
        values = d[rows, cols]
    if not np.isfinite(bound).all():
        raise ValueError("squared distances overflow float32: scale the embeddings down")
    counts = np.bincount(rows, minlength=h)
    if (counts == counts[0]).all():  # rows are sorted: reshaped, they are the padded rows
        padded = values.reshape(h, -1)
    else:
        (padded,) = _grouped(rows, h, values)
    tau = _kth_smallest(padded, k)
    keep = values <= tau[rows]
    index = np.int32 if first_item + width < 2**31 else np.int64  # 12 bytes a candidate
    queries = (rows[keep] + first_query).astype(index)
    return tau, (queries, (cols[keep] + first_item).astype(index), values[keep])


def _column_direction(
    d: np.ndarray, tau: np.ndarray, start: int, first_column: int, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run of every value d[r, c] <= tau[c], as a candidate of query ``first_column`` + c
    (item ``start`` + r), sorted by query."""
    h, width = d.shape
    m = mask[: h * width].reshape(h, width)  # a reused buffer
    np.less_equal(d, tau[None, :], out=m)
    r, c = _nonzero(m)
    values = d[r, c]
    key = c.astype(np.uint16) if width <= 1 << 16 else c
    order = np.argsort(key, kind="stable")  # a radix sort for 16-bit keys
    index = np.int32 if first_column + width < 2**31 else np.int64  # 12 bytes a candidate
    return (
        (c[order] + first_column).astype(index),
        (r[order] + start).astype(index),
        values[order],
    )


def _final(
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], start: int, end: int, k: int
) -> np.ndarray:
    """The k nearest of the queries [start, end) from their candidates in ``runs``: the first
    k by (distance, item index)."""
    h = end - start
    parts = []
    for queries, items, values in runs:
        lo, hi = np.searchsorted(queries, [start, end])
        if hi > lo:
            parts.append((queries[lo:hi] - start, items[lo:hi], values[lo:hi]))
    rows = np.concatenate([p[0] for p in parts])
    padded_values, padded_items = _grouped(
        rows, h, np.concatenate([p[2] for p in parts]), np.concatenate([p[1] for p in parts])
    )
    kth = _kth_smallest(padded_values, k)
    if not np.isfinite(kth).all():
        raise ValueError("squared distances overflow float32: scale the embeddings down")
    rows, pos = _nonzero(padded_values <= kth[:, None])
    values, items = padded_values[rows, pos], padded_items[rows, pos]
    if len(rows) == h * k:  # no tie beyond the k-th place: exactly k a row
        top_values, top_items = values.reshape(h, k), items.reshape(h, k)
    else:
        top_values, top_items = _grouped(rows, h, values, items)
    # sort each row by (distance, item); padding (item -1, distance +inf) goes last
    items = np.where(top_items < 0, np.iinfo(np.int64).max, top_items.astype(np.int64))
    order = np.lexsort((items, top_values), axis=1)[:, :k]
    return np.take_along_axis(items, order, axis=1)
