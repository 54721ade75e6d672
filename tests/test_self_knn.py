"""The symmetric leave-one-out search (``ranking_reg.metrics.self_knn`` and its compiled kernels)
against the definition (a stable sort of float64 distances) and against the reference chunked
search, across block layouts and group levels, ties, degenerate data and the overflow error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranking_reg.metrics import nearest_neighbors, retrieval_metrics, self_knn
from ranking_reg.metrics.self_knn import self_neighbors


def stable_sort_reference(x: np.ndarray, k: int) -> np.ndarray:
    """The k first of every row sorted by (float64 squared distance, index), self excluded."""
    x64 = x.astype(np.float64)
    d = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(2)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize(
    ("n", "dim", "k", "block_rows"),
    [
        (2, 1, 1, None),
        (37, 3, 5, None),
        (301, 3, 12, 40),
        (640, 2, 30, 97),
        (900, 4, 65, 128),
        (3000, 3, 10, 256),
        (3000, 2, 60, 300),
    ],
)
def test_equals_the_definition_on_tied_integer_data(n, dim, k, block_rows):
    # small integers: every float32 distance is exact, so ties are real and broken by index;
    # blocks of 40-300 rows put most pairs in the column direction, and 301 = 7 * 40 + 21
    # leaves a short first block; the row direction's group levels (0, 1, 2) all occur: the
    # narrowest blocks of (640, 30, 97) key every value, (3000, 10, 256) takes two levels
    rng = np.random.default_rng(n)
    x = rng.integers(-3, 4, size=(n, dim)).astype(np.float32)
    got = self_neighbors(torch.from_numpy(x), k, block_rows=block_rows)
    assert got.dtype == torch.int64 and got.shape == (n, k)
    assert np.array_equal(got.numpy(), stable_sort_reference(x, k))


@pytest.mark.parametrize("block_rows", [None, 64, 250])
def test_equals_the_reference_search_on_continuous_data(block_rows):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = self_neighbors(torch.from_numpy(x), 40, block_rows=block_rows).numpy()
    ref = stable_sort_reference(x, 40)
    # the same lists except between items whose float64 distances are within float32 rounding
    # (float32 ranks near-ties by its own rounding): compare the distances row by row
    x64 = x.astype(np.float64)
    rows = np.arange(len(x))[:, None]
    dist_got = ((x64[rows] - x64[got]) ** 2).sum(2)
    dist_ref = ((x64[rows] - x64[ref]) ** 2).sum(2)
    assert np.abs(dist_got - dist_ref).max() < 1e-6
    assert (got == ref).mean() > 0.999
    assert (got == nearest_neighbors(x, 40).numpy()).mean() > 0.999


def test_whole_set_and_duplicates():
    # k = N - 1 (every other item); exact duplicates are distance-0 neighbours, the query is not
    x = np.array([[0, 0], [1, 0], [0, 0], [3, 4], [1, 0]], dtype=np.float32)
    got = self_neighbors(torch.from_numpy(x), 4, block_rows=2).numpy()
    assert np.array_equal(got, stable_sort_reference(x, 4))
    assert got[0, 0] == 2 and got[2, 0] == 0 and got[1, 0] == 4


@pytest.mark.parametrize("levels", [0, 1, 2])
def test_row_kernel_keeps_the_k_smallest_by_distance_then_index(levels):
    from ranking_reg.metrics import knn_kernels

    # a (rows x 1024) block of ties, negative rounding values, -0.0 and padding: each row's
    # heap must hold the k first of a stable sort of its values, the own column excluded
    rng = np.random.default_rng(levels)
    rows, width, k, first = 6, 1000, 9, 500
    d = rng.choice(np.float32([-1e-7, -0.0, 0.0, 0.25, 0.5, 1.0, 2.0]), size=(rows, 1024))
    d[:, width:] = np.inf
    own = np.arange(rows)  # queries first..first+5 are items first..first+5: the diagonal
    d[own, own] = np.inf
    heaps = np.zeros((first + rows, k), dtype=np.uint64)
    tops = np.zeros(first + rows, dtype=np.float32)
    knn_kernels.rows_into_heaps(d, width, first, first, levels, heaps, tops)
    out = np.zeros((first + rows, k), dtype=np.int64)
    assert knn_kernels.sorted_items(heaps, first, first + rows, out)
    values = np.where(d[:, :width] == 0, 0.0, d[:, :width])  # -0.0 equals 0.0
    expected = first + np.argsort(values, axis=1, kind="stable")[:, :k]
    assert np.array_equal(out[first:], expected)
    assert np.array_equal(tops[first:], np.sort(values, axis=1)[:, k - 1])


def test_degenerate_data():
    # 600 identical points: every distance ties at 0, every bound keeps every value; the
    # neighbours are the other items in index order
    x = np.zeros((600, 3), dtype=np.float32)
    got = self_neighbors(torch.from_numpy(x), 7, block_rows=50)
    assert np.array_equal(got.numpy(), stable_sort_reference(x, 7))


def test_invalid_k_and_overflow():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        self_neighbors(x, 5)
    with pytest.raises(ValueError, match="overflow"):
        self_neighbors(torch.full((6, 2), 3e38) * torch.arange(6.0)[:, None], 2)


def test_retrieval_metrics_equal_with_both_searches_on_exact_data():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(700, 3)).astype(np.float32)
    y = rng.integers(0, 9, size=700)
    fast = retrieval_metrics(x, y, ks=(1, 4, 16), nmi=False, chunk_size=96)
    assert fast == retrieval_metrics(x, y, ks=(1, 4, 16), nmi=False, backend="torch")


def test_retrieval_takes_the_chunked_search_when_the_candidates_would_not_fit(monkeypatch):
    from ranking_reg.metrics import retrieval

    rng = np.random.default_rng(4)
    x = rng.integers(0, 5, size=(300, 3)).astype(np.float32)
    y = rng.integers(0, 6, size=300)
    expected = retrieval_metrics(x, y, ks=(1, 4), nmi=False)
    assert self_knn.expected_bytes(200_000, 1000) > 2 << 30  # e.g. 200k items, classes of 1,000
    calls = []
    monkeypatch.setattr(retrieval, "expected_bytes", lambda *args: 3 << 30)
    monkeypatch.setattr(retrieval, "self_neighbors", lambda *args, **kw: calls.append(1))
    assert retrieval_metrics(x, y, ks=(1, 4), nmi=False) == expected
    assert calls == []  # the symmetric search was not called


def test_histogram_bound_is_a_value_with_at_least_k_values_below():
    from ranking_reg.metrics import knn_kernels

    rng = np.random.default_rng(5)
    counts, peaks = np.empty(64, dtype=np.int64), np.empty(64, dtype=np.float32)
    for trial in range(200):
        n = int(rng.integers(1, 400))
        values = rng.choice([0.5, 1.0, 2.0], n) if trial % 3 == 0 else rng.random(n) ** 4
        values = values.astype(np.float32)
        values[rng.random(n) < 0.1] = np.inf  # padding groups
        k = int(rng.integers(1, n + 1))
        bound = knn_kernels._histogram_bound(values, k, counts, peaks)
        finite = np.sort(values[np.isfinite(values)])
        if len(finite) < k:
            assert bound == np.inf
        else:
            assert bound in finite and bound >= finite[k - 1]
            assert (finite <= bound).sum() >= k
