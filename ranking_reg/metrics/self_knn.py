"""Exact leave-one-out kNN of a set against itself, each pair's distance computed once.

The neighbours of item i are the *other* items ordered by squared Euclidean distance, ties
broken by the lower item index (the prefix of a stable sort of i's row of distances), exactly
as :func:`~ranking_reg.metrics.knn.nearest_neighbors`, which stays the reference.

Why a second implementation: the brute-force search is one (N x N) GEMM, and faiss
(pytorch-metric-learning's backend) runs the same GEMM through the same OpenBLAS kernels, so
matching its arithmetic cannot beat it by much. The distance matrix is symmetric, though: this
module computes only the blocks on and above the diagonal (half the flops) and uses every
computed value twice, for its row's query and for its column's query.

How, for rows blocked as [s, e) and processed from the last block to the first, every query
keeping its k best (distance, index) keys in a max-heap (:mod:`~ranking_reg.metrics.knn_kernels`):

1. one GEMM gives the distances of rows [s, e) to columns [s, N) (the block's own square and
   everything to its right), d_ij = ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j in float32;
2. *row direction*: each row's k smallest keys over those columns fill its query's heap,
   found without sorting the row (group minima bound the k-th smallest value, and only the
   values under the bound become keys);
3. *column direction*: a column j >= e is a query of a block processed earlier, whose heap is
   full; value d_ij is offered to it (item i), and replaces the heap's largest key when
   smaller. The heap's largest distance screens the values, so few are looked at;
4. at the end, every heap holds its query's k smallest keys over all items; sorted, they are
   the neighbour lists.

Exact: each ordered pair (i, j) has exactly one computed value, seen by query i either in its
own row block (j >= s_i) or in the column direction of j's block (j < s_i), and a heap of
keys keeps exactly the k smallest it was offered, ties by index. Distances are float32 with the
BLAS's rounding, as any GEMM's; for data whose arithmetic is exact in float32 (small integers)
the lists equal the definition's exactly.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ranking_reg.metrics import knn_kernels
from ranking_reg.metrics.gemm import blas_threads

# Elements of one (rows x columns) distance block: 2**25 float32 = 128 MiB (~1,360 rows of
# NABirds' 24,633 test images), as in the reference search.
_BLOCK_ELEMENTS = 1 << 25
_PAD = 64  # a block's width is rounded up to whole level-2 groups (knn_kernels: 8 x 8)


def _block_starts(n: int, rows: int) -> list[int]:
    """Starts of the row blocks: all of ``rows`` rows except the first (the remainder), so the
    block processed first (the last) is full and its queries' heaps fill from > k items."""
    blocks = -(-n // rows)
    first = n - (blocks - 1) * rows
    return [0] + [first + i * rows for i in range(blocks - 1)]


def _block_rows(n: int, k: int, block_rows: int | None) -> int:
    rows = block_rows or _BLOCK_ELEMENTS // n
    return int(min(max(rows, k + 1), n))


def _levels(padded_width: int, k: int) -> int:
    """Group levels of the row direction (``knn_kernels.rows_into_heaps``): as many as leave
    more than k groups to select the bound from."""
    if padded_width // 64 > k:
        return 2
    return 1 if padded_width // 8 > k else 0


def expected_bytes(n: int, k: int) -> int:
    """Memory the search holds at once besides its 128 MiB block: the (N, k) heaps of 8-byte
    keys, the (N, k) int64 result and the (N,) screening distances."""
    return int(n * (16 * k + 4))


def self_neighbors(x: torch.Tensor, k: int, block_rows: int | None = None) -> torch.Tensor:
    """Indices (N, k) of the k nearest *other* items of every item, nearest first, ties by the
    lower index: the same lists as :func:`~ranking_reg.metrics.knn.nearest_neighbors` (see the
    module docstring for the method). ``x``: (N, D) float32 CPU tensor, finite; 1 <= k <= N-1.
    ``block_rows``: rows of one distance block (default: 2**25 elements a block)."""
    n = len(x)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    if n >= 1 << 32:
        raise ValueError(f"at most 2**32 - 1 items (a key holds a 32-bit index), got {n}")
    with blas_threads():
        return _search(x, k, _block_rows(n, k, block_rows))


def _augmented(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Operands of d_ij = [x_i, ||x_i||^2, 1] . [-2 x_j, 1, ||x_j||^2]: the GEMM writes the
    distances directly. Zero rows pad the item side so a block's width can be rounded up."""
    n, dim = x.shape
    xs = x.numpy()
    sq = (x * x).sum(dim=1).numpy()
    # every term and partial sum of a distance is at most 4 max ||x||^2 in size: below float32's
    # limit (with a margin for rounding), no distance can overflow (or become NaN, which the
    # kernels' comparisons could not order)
    if not 8.0 * float(np.max(sq, initial=0.0)) < float(np.finfo(np.float32).max):
        raise ValueError("squared distances overflow float32: scale the embeddings down")
    left = np.empty((n, dim + 2), dtype=np.float32)
    left[:, :dim], left[:, dim], left[:, dim + 1] = xs, sq, 1.0
    right = np.zeros((n + _PAD, dim + 2), dtype=np.float32)
    np.multiply(xs, -2.0, out=right[:n, :dim])
    right[:n, dim], right[:n, dim + 1] = 1.0, sq
    return left, right


def _slabs(count: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges splitting ``count`` into at most ``parts`` near-equal non-empty parts."""
    bounds = np.linspace(0, count, min(parts, count) + 1).astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def _search(x: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    n = len(x)
    left, right = _augmented(x)
    starts = _block_starts(n, rows)
    ends = starts[1:] + [n]
    heaps = np.empty((n, k), dtype=np.uint64)  # every query's k best keys, a max-heap each
    tops = np.empty(n, dtype=np.float32)  # the distance of each heap's largest key
    buffer = np.empty(rows * (n + _PAD), dtype=np.float32)
    threads = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(threads) as pool:
        for b in reversed(range(len(starts))):
            s, e = starts[b], ends[b]
            h, width = e - s, n - s
            padded = -(-width // _PAD) * _PAD
            d = buffer[: h * padded].reshape(h, padded)
            np.matmul(left[s:e], right[s : s + padded].T, out=d)
            d[:, width:] = np.inf  # padding
            d[np.arange(h), np.arange(h)] = np.inf  # each query's distance to itself
            levels = _levels(padded, k)
            # the kernels release the GIL: slabs of rows (their own queries' heaps) and slabs
            # of columns (the heaps of queries >= e) run in parallel, each heap in one task;
            # four slabs a thread balance the load (the latest queries get the most offers)
            tasks = [
                pool.submit(
                    knn_kernels.rows_into_heaps, d[lo:hi], width, s, s + lo, levels, heaps, tops
                )
                for lo, hi in _slabs(h, 4 * threads)
            ]
            tasks += [
                pool.submit(
                    knn_kernels.columns_into_heaps, d, e - s + lo, hi - lo, s, e + lo, heaps, tops
                )
                for lo, hi in _slabs(n - e, 4 * threads)
            ]
            for task in tasks:
                task.result()
        out = np.empty((n, k), dtype=np.int64)
        finite = pool.map(
            lambda span: knn_kernels.sorted_items(heaps, span[0], span[1], out),
            _slabs(n, threads),
        )
        if not all(finite):
            raise ValueError("squared distances overflow float32: scale the embeddings down")
    return torch.from_numpy(out)
