"""Compiled selection kernels of the symmetric exact kNN (:mod:`~ranking_reg.metrics.self_knn`).

A candidate neighbour is one 64-bit key, ``(orderable bits of the float32 distance) << 32 |
item index``: integer order on keys is exactly the order "by distance, ties by the lower index"
that defines the neighbour lists, so every comparison below is one integer comparison and a
query's k nearest are its k smallest keys, kept in a max-heap of k keys per query. ``-0.0`` is
turned into ``+0.0`` first (equal distances, so only the index may order them).

Why numba and not numpy: the selection reads every computed distance once or twice and keeps a
few; numpy needs a temporary array per step (group minima, masks, gathers, sorts), and those
passes cost as much as the GEMM that produced the distances. Fused per row, the same steps run
from cache. The kernels release the GIL; :mod:`~ranking_reg.metrics.self_knn` runs them on
slabs of rows or columns in a thread pool of its own (no numba threading layer, so nothing
here starts threads or cares about ``fork``). They are compiled on first use and cached on
disk (``cache=True``, next to this file or in numba's user cache directory).
"""

from __future__ import annotations

import numba as nb
import numpy as np

_SIGN = np.uint32(0x80000000)
_LOW = np.uint64(0xFFFFFFFF)
_GROUPS = 8  # columns per level-1 group, level-1 groups per level-2 group

_jit = nb.njit(cache=True, nogil=True)


@_jit
def _key(value: np.float32, item: int) -> np.uint64:
    """The 64-bit key of (distance, item): float bits mapped to an unsigned order, then index."""
    bits = np.float32(value + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0
    if bits & _SIGN:
        bits = ~bits
    else:
        bits = bits | _SIGN
    return (np.uint64(bits) << np.uint64(32)) | np.uint64(item)


@_jit
def _value(key: np.uint64) -> np.float32:
    """The distance of a key (inverse of :func:`_key`'s high half)."""
    bits = np.uint32(key >> np.uint64(32))
    if bits & _SIGN:
        bits = bits & ~_SIGN
    else:
        bits = ~bits
    return np.uint32(bits).view(np.float32)


@_jit
def _sift_down(heap: np.ndarray, pos: int, length: int, key: np.uint64) -> None:
    """Put ``key`` at ``pos`` of the max-heap ``heap[:length]`` and sift it down."""
    while True:
        child = 2 * pos + 1
        if child >= length:
            break
        if child + 1 < length and heap[child + 1] > heap[child]:
            child += 1
        if heap[child] <= key:
            break
        heap[pos] = heap[child]
        pos = child
    heap[pos] = key


@_jit
def _offer(heaps: np.ndarray, tops: np.ndarray, q: int, value: np.float32, item: int) -> None:
    """Offer (value, item) to query q's full heap: it replaces the root if its key is smaller."""
    key = _key(value, item)
    heap = heaps[q]
    if key < heap[0]:
        _sift_down(heap, 0, len(heap), key)
        tops[q] = _value(heap[0])


@_jit
def _min(a: np.float32, b: np.float32) -> np.float32:
    return a if a < b else b


@_jit
def _minima(a: np.ndarray, out: np.ndarray) -> None:
    """out[j] = min over i < 8 of a[i * m + j], m = len(out).

    One loop over eight slices with an unconditional store: LLVM vectorises it (an in-place
    ``if a[j] < out[j]: out[j] = a[j]`` per slice becomes masked stores, microcoded and ~6x
    slower on AMD CPUs)."""
    m = len(out)
    a0, a1, a2, a3 = a[:m], a[m : 2 * m], a[2 * m : 3 * m], a[3 * m : 4 * m]
    a4, a5, a6, a7 = a[4 * m : 5 * m], a[5 * m : 6 * m], a[6 * m : 7 * m], a[7 * m : 8 * m]
    for j in range(m):
        out[j] = _min(
            _min(_min(a0[j], a1[j]), _min(a2[j], a3[j])),
            _min(_min(a4[j], a5[j]), _min(a6[j], a7[j])),
        )


@_jit
def _gap_minima(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[j] = min over i < 8 of a[i * m + j] - b[i * m + j], m = len(out) (as :func:`_minima`):
    out[j] <= 0 exactly when a <= b somewhere among the eight (the sign of a - b is exact)."""
    m = len(out)
    for j in range(m):
        g0 = _min(a[j] - b[j], a[m + j] - b[m + j])
        g1 = _min(a[2 * m + j] - b[2 * m + j], a[3 * m + j] - b[3 * m + j])
        g2 = _min(a[4 * m + j] - b[4 * m + j], a[5 * m + j] - b[5 * m + j])
        g3 = _min(a[6 * m + j] - b[6 * m + j], a[7 * m + j] - b[7 * m + j])
        out[j] = _min(_min(g0, g1), _min(g2, g3))


@_jit
def _kth_smallest(a: np.ndarray, k: int) -> np.float32:
    """The (k+1)-th smallest value of ``a`` (0-based k), reordering ``a`` in place: Hoare's
    selection with a median-of-three pivot (numba's ``np.partition`` copies its input and was
    3-5x slower on rows of group minima)."""
    lo, hi = 0, len(a) - 1
    while lo < hi:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi]
        pivot = max(min(x, y), min(max(x, y), z))
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while pivot < a[j]:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if j < k < i:
            break
        if j < k:
            lo = i
        if k < i:
            hi = j
    return a[k]


@_jit
def _histogram_bound(values: np.ndarray, k: int, counts: np.ndarray, peaks: np.ndarray):
    """A value of ``values`` with at least k values <= it, near the k-th smallest: the largest
    value of the first of 64 equal-width bins (between the least and the largest finite value)
    at which the bins' cumulative count reaches k (+inf if fewer than k values are finite).

    Valid because the bin of a value never decreases as the value grows, and ~4x cheaper
    than an exact selection (a histogram has no data-dependent branches); the caller tightens
    it on the next level of minima anyway."""
    lo, hi, finite = np.inf, -np.inf, 0
    for v in values:
        if v < np.inf:
            lo = min(lo, v)
            hi = max(hi, v)
            finite += 1
    if finite < k:
        return np.float32(np.inf)
    if hi == lo:
        return np.float32(lo)
    bins = len(counts)
    scale = bins / (np.float64(hi) - np.float64(lo))
    counts[:] = 0
    peaks[:] = -np.inf
    for v in values:
        if v < np.inf:
            b = min(int((np.float64(v) - lo) * scale), bins - 1)
            counts[b] += 1
            peaks[b] = max(peaks[b], v)
    total = 0
    for b in range(bins):
        total += counts[b]
        if total >= k:
            return np.float32(peaks[b])
    return np.float32(hi)


@_jit
def _take(heap: np.ndarray, filled: int, key: np.uint64) -> int:
    """Add ``key`` to a max-heap being filled (``filled`` keys so far) or, once full, put it in
    place of the root if smaller; the new fill count."""
    k = len(heap)
    if filled < k:
        # sift up
        pos = filled
        while pos > 0:
            parent = (pos - 1) >> 1
            if heap[parent] >= key:
                break
            heap[pos] = heap[parent]
            pos = parent
        heap[pos] = key
        return filled + 1
    if key < heap[0]:
        _sift_down(heap, 0, k, key)
    return filled


@_jit
def rows_into_heaps(
    d: np.ndarray,
    width: int,
    first_item: int,
    first_query: int,
    levels: int,
    heaps: np.ndarray,
    tops: np.ndarray,
) -> None:
    """Fill the heap of every query of ``d``'s rows with its k smallest keys (k = heaps' width)
    and ``tops[q]`` with the largest of their distances. Row r is query ``first_query`` + r;
    column c < ``width`` is item ``first_item`` + c. The query's own column and the columns from
    ``width`` on (padding) must hold +inf (the own column is skipped besides). Needs ``width``
    > k.

    A row is not sorted. With ``levels`` = 1, column c is in group c mod (W/8) (eight strided
    slices, W = d's width, a multiple of 64): the k-th smallest group minimum bounds the row's
    k-th smallest value from above (k groups hold a value <= it), and only the values <= that
    bound in groups whose minimum is <= it become keys (about k of them). ``levels`` = 2 groups
    the group minima once more the same way, takes a first bound there (a histogram of the W/64
    level-2 minima, :func:`_histogram_bound`) and tightens it by an exact selection over the
    level-1 minima it keeps; 0 makes every value a key."""
    rows, padded = d.shape
    k = heaps.shape[1]
    m1 = padded // _GROUPS
    m2 = m1 // _GROUPS
    minima1 = np.empty(m1, dtype=np.float32)
    minima2 = np.empty(m2, dtype=np.float32)
    scratch = np.empty(m1, dtype=np.float32)
    groups = np.empty(m1, dtype=np.int64)
    counts = np.empty(64, dtype=np.int64)
    peaks = np.empty(64, dtype=np.float32)
    for r in range(rows):
        row = d[r]
        q = first_query + r
        own = q - first_item  # the query's own column (may be outside the block)
        heap = heaps[q]
        filled = 0
        if levels == 0:
            for c in range(width):
                if c != own:
                    filled = _take(heap, filled, _key(row[c], first_item + c))
        else:
            _minima(row, minima1)
            if levels == 2:
                _minima(minima1, minima2)
                bound = _histogram_bound(minima2, k, counts, peaks)
                kept = 0
                for j2 in range(m2):
                    if minima2[j2] <= bound:
                        for i2 in range(_GROUPS):
                            j1 = j2 + i2 * m2
                            if minima1[j1] <= bound:
                                groups[kept] = j1
                                scratch[kept] = minima1[j1]
                                kept += 1
            else:
                kept = m1
                for j1 in range(m1):
                    groups[j1] = j1
                    scratch[j1] = minima1[j1]
            bound = _kth_smallest(scratch[:kept], k - 1)
            for g in range(kept):
                j1 = groups[g]
                if minima1[j1] <= bound:
                    for i in range(_GROUPS):
                        c = j1 + i * m1
                        if row[c] <= bound and c < width and c != own:
                            filled = _take(heap, filled, _key(row[c], first_item + c))
        tops[q] = _value(heap[0])


@_jit
def columns_into_heaps(
    d: np.ndarray,
    first_column: int,
    columns: int,
    first_item: int,
    first_query: int,
    heaps: np.ndarray,
    tops: np.ndarray,
) -> None:
    """Offer value d[r, first_column + j] (item ``first_item`` + r) to the full heap of query
    ``first_query`` + j, for j < ``columns``: it replaces the root when its key is smaller.

    ``tops[q]`` (the root's distance) screens the values: with columns in eight strided slices
    (column j in group j mod m, m = columns // 8), one vectorised pass gives each group's
    least value - top, and only the groups where that is <= 0 are looked at."""
    rows = d.shape[0]
    m = columns // _GROUPS
    body = m * _GROUPS
    gaps = np.empty(m, dtype=np.float32)
    top = tops[first_query : first_query + columns]
    for r in range(rows):
        row = d[r, first_column : first_column + columns]
        item = first_item + r
        _gap_minima(row, top, gaps)
        for j in range(m):
            if gaps[j] <= 0:
                for i in range(_GROUPS):
                    c = j + i * m
                    if row[c] <= top[c]:
                        _offer(heaps, tops, first_query + c, row[c], item)
        for c in range(body, columns):
            if row[c] <= top[c]:
                _offer(heaps, tops, first_query + c, row[c], item)


@_jit
def sorted_items(heaps: np.ndarray, start: int, stop: int, out: np.ndarray) -> bool:
    """The items of heaps [start, stop) in key order (heapsort, in place) into ``out`` rows
    [start, stop); False if any kept distance is +inf (squared distances overflowed float32)."""
    finite = True
    k = heaps.shape[1]
    for q in range(start, stop):
        heap = heaps[q]
        for last in range(k - 1, 0, -1):
            largest = heap[0]
            _sift_down(heap, 0, last, heap[last])
            heap[last] = largest
        for i in range(k):
            if _value(heap[i]) == np.inf:
                finite = False
            out[q, i] = np.int64(heap[i] & _LOW)
    return finite
