"""The evaluation's GEMM backends (numpy's OpenBLAS, the default, vs torch's ``torch.mm``, the
reference): the same neighbour lists, Recall@K and MAP@R wherever float32 is exact, differences
on continuous data only inside the float32 rounding bound, k-means deterministic per seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranking_reg.metrics import kmeans, nearest_neighbors, retrieval_metrics
from ranking_reg.metrics.gemm import augmented_items, check_backend, ranking_keys
from ranking_reg.metrics.knn import search_gallery


def stable_sort_reference(x: np.ndarray, k: int) -> np.ndarray:
    """The k first of every row sorted by (float64 squared distance, index), self excluded."""
    x64 = x.astype(np.float64)
    d = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(2)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize(("n", "dim", "top"), [(40, 3, 3), (600, 4, 10)])
def test_backends_agree_exactly_on_tied_integer_data(n, dim, top):
    # Small integers: every float32 key is exact, so ties are real ties (broken by index) and
    # both BLAS give the same lists, equal to a stable sort of the float64 distances; N = 600
    # takes the grouped selection.
    rng = np.random.default_rng(n)
    x = rng.integers(0, top, size=(n, dim)).astype(np.float32)
    y = rng.integers(0, 7, size=n)
    for k in (1, 8, 39) if n < 100 else (9,):
        ref = stable_sort_reference(x, k)
        blas = nearest_neighbors(x, k, backend="blas")
        assert np.array_equal(blas.numpy(), ref)
        assert torch.equal(nearest_neighbors(x, k, backend="torch"), blas)
        assert torch.equal(nearest_neighbors(x, k), blas)  # auto = blas
        assert torch.equal(nearest_neighbors(x, k, chunk_size=max(7, n // 3)), blas)
    fast = retrieval_metrics(x, y, ks=(1, 4, 16), nmi=False)
    assert fast == retrieval_metrics(x, y, ks=(1, 4, 16), nmi=False, backend="torch")


def test_backends_differ_only_inside_the_float32_rounding_bound_on_continuous_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 40, size=len(x))
    k = 20
    blas = nearest_neighbors(x, k).numpy()
    ref = nearest_neighbors(x, k, backend="torch").numpy()
    x64 = x.astype(np.float64)
    # Two float32 GEMMs of D + 1 terms differ by at most 2 (D + 2) u (||q|| + ||x||)^2 each
    # (u = 2^-24, norms 1 here); lists may swap only items whose float64 distances are that close.
    bound = 4 * (x.shape[1] + 2) * 2.0**-24 * 4
    for row in np.nonzero((blas != ref).any(axis=1))[0]:
        d_blas = ((x64[blas[row]] - x64[row]) ** 2).sum(1)
        d_ref = ((x64[ref[row]] - x64[row]) ** 2).sum(1)
        assert np.abs(d_blas - d_ref).max() <= bound
    assert (blas == ref).mean() > 0.999
    got = retrieval_metrics(x, y, ks=(1, 5), nmi=False)
    want = retrieval_metrics(x, y, ks=(1, 5), nmi=False, backend="torch")
    assert got == pytest.approx(want, abs=1e-6)


def test_gallery_search_and_keys_backends_agree_on_integer_data():
    rng = np.random.default_rng(5)
    gallery = rng.integers(0, 3, size=(300, 5)).astype(np.float32)
    queries = rng.integers(0, 3, size=(20, 5)).astype(np.float32)
    dist, idx = search_gallery(gallery, queries, 12)
    g64, q64 = gallery.astype(np.float64), queries.astype(np.float64)
    d = ((q64[:, None, :] - g64[None, :, :]) ** 2).sum(2)
    assert np.array_equal(idx.numpy(), np.argsort(d, axis=1, kind="stable")[:, :12])
    items = augmented_items(torch.from_numpy(gallery), rows=310)
    assert items.shape == (310, 6) and not items[300:].any()
    keys = [
        ranking_keys(torch.from_numpy(queries), items, np.empty((20, 310), np.float32), b)
        for b in ("blas", "torch")
    ]
    assert torch.equal(keys[0], keys[1])
    assert torch.equal(keys[0][:, :300].double(), torch.from_numpy(d - (q64**2).sum(1)[:, None]))


def test_kmeans_is_deterministic_per_seed_with_both_backends():
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((6, 8)) * 4
    labels = rng.integers(0, 6, size=600)
    x = (centers[labels] + rng.standard_normal((600, 8))).astype(np.float32)
    a, inertia = kmeans(x, 6, seed=3)
    b, inertia_b = kmeans(x, 6, seed=3)
    assert torch.equal(a, b) and inertia == inertia_b
    c, inertia_c = kmeans(x, 6, seed=3, backend="torch")
    assert torch.equal(kmeans(x, 6, seed=3, backend="torch")[0], c)
    assert inertia_c == pytest.approx(inertia, rel=1e-3)  # same clustering up to float32 rounding
    nmi = retrieval_metrics(x, labels, ks=(1,), seed=3)["nmi"]
    assert nmi == pytest.approx(
        retrieval_metrics(x, labels, ks=(1,), seed=3, backend="torch")["nmi"]
    )


def test_unknown_backend_is_refused():
    assert check_backend("auto") == "blas" and check_backend("torch") == "torch"
    with pytest.raises(ValueError, match="backend"):
        nearest_neighbors(np.zeros((4, 2), np.float32), 1, backend="faiss")
