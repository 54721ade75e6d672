"""Retrieval and classification metrics against references written from the definitions."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from ranking_reg.metrics import (
    classification_metrics,
    kmeans,
    nearest_neighbors,
    per_class_accuracy,
    retrieval_metrics,
    shot_accuracy,
)

# ---------------------------------------------------------------- slow references


def ref_neighbours(x: np.ndarray) -> list[list[int]]:
    """For every item, all other items sorted by (exact float64 squared distance, index)."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for i in range(len(x)):
        d = [(float(((x[i] - x[j]) ** 2).sum()), j) for j in range(len(x)) if j != i]
        out.append([j for _, j in sorted(d)])
    return out


def ref_recall(x: np.ndarray, y: np.ndarray, k: int) -> float:
    nbrs = ref_neighbours(x)
    return sum(any(y[j] == y[i] for j in nbrs[i][:k]) for i in range(len(y))) / len(y)


def ref_map_at_r(x: np.ndarray, y: np.ndarray) -> float:
    nbrs = ref_neighbours(x)
    aps = []
    for i in range(len(y)):
        r = int((y == y[i]).sum()) - 1
        if r == 0:
            continue
        hits, total = 0, 0.0
        for rank, j in enumerate(nbrs[i][:r], start=1):
            if y[j] == y[i]:
                hits += 1
                total += hits / rank
        aps.append(total / r)
    return sum(aps) / len(aps)


# ---------------------------------------------------------------- fixtures


def tied_set(seed: int, n: int = 40, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Integer coordinates in {0, 1, 2}: float32 distances are exact and ties abound; labels
    include singleton classes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(n, d)).astype(np.float32)
    y = rng.integers(0, 8, size=n)
    y[:3] = [100, 101, 102]  # three singleton classes
    return x, y


def blob_set(seed: int, n_classes: int = 6, per: int = 12, d: int = 8, noise: float = 0.8):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, d)) * 2
    y = np.repeat(np.arange(n_classes), per)
    sizes = rng.integers(0, per, n_classes)  # unequal class sizes
    keep = np.concatenate(
        [np.arange(c * per, c * per + per - sizes[c] // 2) for c in range(n_classes)]
    )
    y = y[keep]
    x = centers[y] + noise * rng.standard_normal((len(y), d))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


# ---------------------------------------------------------------- kNN and ties


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_neighbours_break_ties_by_index(seed):
    x, _ = tied_set(seed)
    ref = ref_neighbours(x)
    for k in (1, 5, 17, len(x) - 1):
        got = nearest_neighbors(x, k)
        assert got.tolist() == [r[:k] for r in ref]
        # Same lists when every chunk is a few queries (the tie fix-up runs per chunk).
        assert nearest_neighbors(x, k, chunk_size=3).tolist() == got.tolist()


def ref_neighbours_fast(x: np.ndarray, k: int) -> np.ndarray:
    """The k first of every row sorted by (float64 squared distance, index), vectorised: a
    stable sort by distance (exact for small integer coordinates)."""
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("k", [1, 8, 40])
def test_grouped_selection_is_exact_at_larger_n_with_ties(k):
    # Integer coordinates in 0..9: float32 distances are exact and many tie, and N is large
    # enough that the two-stage (group minima, then candidates) selection is used.
    from ranking_reg.metrics.knn import _group_sizes

    rng = np.random.default_rng(k)
    x = rng.integers(0, 10, size=(1200, 4)).astype(np.float32)
    assert len(_group_sizes(len(x), k + 1)) >= 1
    got = nearest_neighbors(x, k)
    assert np.array_equal(got.numpy(), ref_neighbours_fast(x, k))
    assert torch.equal(nearest_neighbors(x, k, chunk_size=500), got)


def test_grouped_selection_on_continuous_data_matches_a_full_sort():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    got = nearest_neighbors(x, 30)
    # Float32 rounding could only reorder items whose float64 distances differ by ~1e-6.
    agree = (got.numpy() == ref_neighbours_fast(x, 30)).mean()
    assert agree > 0.999


@pytest.mark.parametrize("n", [40, 1200])
def test_query_subset_gives_the_rows_of_the_full_search(n):
    # Small and large N (the grouped selection), ties included: a query's list does not depend
    # on which other queries are searched with it, their order, repeats or the chunking.
    rng = np.random.default_rng(n)
    x = rng.integers(0, 3, size=(n, 3)).astype(np.float32)
    queries = np.array([n - 1, 0, 7, 7, n // 2])
    ref = ref_neighbours_fast(x, 5)[queries]
    assert np.array_equal(nearest_neighbors(x, 5, queries=queries).numpy(), ref)
    got = nearest_neighbors(torch.from_numpy(x), 5, chunk_size=2, queries=torch.tensor(queries))
    assert np.array_equal(got.numpy(), ref)
    assert nearest_neighbors(x, 5, queries=[]).shape == (0, 5)
    with pytest.raises(ValueError, match="item indices"):
        nearest_neighbors(x, 5, queries=[n])
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbors(x, n, queries=[0])


@pytest.mark.parametrize("n", [40, 1200])
def test_gallery_search_equals_a_stable_sort_of_the_distances(n):
    """New queries against a gallery: the k first gallery items of each row sorted by (float64
    distance, index), nothing excluded; distances are the Euclidean ones."""
    from ranking_reg.metrics.knn import search_gallery

    rng = np.random.default_rng(n)
    gallery = rng.integers(0, 3, size=(n, 3)).astype(np.float32)
    queries = np.concatenate([gallery[:3], rng.integers(0, 3, size=(9, 3))]).astype(np.float32)
    g64, q64 = gallery.astype(np.float64), queries.astype(np.float64)
    d = ((q64[:, None, :] - g64[None, :, :]) ** 2).sum(2)
    for k in (1, 5, n):
        ref = np.argsort(d, axis=1, kind="stable")[:, :k]
        dist, idx = search_gallery(gallery, queries, k)
        assert np.array_equal(idx.numpy(), ref)
        assert np.allclose(dist.numpy(), np.sqrt(np.take_along_axis(d, ref, 1)), atol=1e-6)
        assert torch.equal(search_gallery(gallery, queries, k, chunk_size=4)[1], idx)
    assert search_gallery(gallery, queries[:0], 2)[1].shape == (0, 2)
    with pytest.raises(ValueError, match="k must be"):
        search_gallery(gallery, queries, n + 1)
    with pytest.raises(ValueError, match="dimension"):
        search_gallery(gallery, np.zeros((2, 5), np.float32), 1)


def test_duplicates_are_neighbours_and_self_is_not():
    x = np.zeros((5, 4), dtype=np.float32)  # all identical: every distance is 0
    got = nearest_neighbors(x, 4)
    assert got.tolist() == [[j for j in range(5) if j != i] for i in range(5)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_and_map_at_r_match_definitions_with_ties_and_singletons(seed):
    x, y = tied_set(seed)
    # K = 16: the paper's Table 5 reports R@16 (the project's default metrics.ks)
    got = retrieval_metrics(x, y, ks=(1, 2, 4, 8, 16), nmi=False)
    for k in (1, 2, 4, 8, 16):
        assert got[f"recall@{k}"] == pytest.approx(ref_recall(x, y, k), abs=1e-12)
    assert got["map@r"] == pytest.approx(ref_map_at_r(x, y), abs=1e-12)
    assert "nmi" not in got


@pytest.mark.parametrize("seed", [0, 1])
def test_per_query_results_match_definitions(seed):
    x, y = tied_set(seed)
    per_query: dict = {}
    got = retrieval_metrics(x, y, ks=(1, 4), nmi=False, per_query=per_query)
    nbrs = ref_neighbours(x)
    depth = min(max(4, max(int((y == c).sum()) - 1 for c in y)), len(y) - 1)
    for i in range(len(y)):
        same = [rank for rank, j in enumerate(nbrs[i]) if y[j] == y[i]]
        r = len(same)
        expected_first = same[0] if same and same[0] < depth else depth
        assert int(per_query["first_hit"][i]) == expected_first
        if r == 0:
            assert math.isnan(float(per_query["ap@r"][i]))
        else:
            ap = sum((n + 1) / (rank + 1) for n, rank in enumerate(s for s in same if s < r)) / r
            assert float(per_query["ap@r"][i]) == pytest.approx(ap, abs=1e-12)
    assert float((per_query["first_hit"] < 1).double().mean()) == got["recall@1"]
    assert float((per_query["first_hit"] < 4).double().mean()) == got["recall@4"]
    assert float(np.nanmean(per_query["ap@r"].numpy())) == pytest.approx(got["map@r"], abs=1e-12)


def test_continuous_data_matches_definitions():
    x, y = blob_set(3, noise=2.0)
    got = retrieval_metrics(x, y, ks=(1, 3), nmi=False)
    assert got["recall@1"] == pytest.approx(ref_recall(x, y, 1), abs=1e-12)
    assert got["recall@3"] == pytest.approx(ref_recall(x, y, 3), abs=1e-12)
    assert got["map@r"] == pytest.approx(ref_map_at_r(x, y), abs=1e-12)
    assert 0.0 < got["map@r"] < 1.0  # a non-trivial set


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    y = rng.integers(0, 20, 300)
    whole = retrieval_metrics(x, y, nmi=False, chunk_size=300)
    for chunk in (1, 7, 64):
        parts = retrieval_metrics(x, y, nmi=False, chunk_size=chunk)
        assert parts == pytest.approx(whole, abs=1e-6)


def test_labels_of_any_values_and_input_types():
    x, y = tied_set(4)
    base = retrieval_metrics(x, y, nmi=False)
    sparse = retrieval_metrics(torch.from_numpy(x), torch.from_numpy(y * 37 - 5), nmi=False)
    names = retrieval_metrics(x.tolist(), [f"class-{v}" for v in y], nmi=False)
    assert sparse == base and names == base


def test_k_larger_than_the_set_is_clipped():
    x = np.array([[0.0], [1.0], [5.0], [6.0]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    got = retrieval_metrics(x, y, ks=(1, 2, 8), nmi=False)
    # Nearest others: 0 -> 1,2,3; 1 -> 0,2,3; 2 -> 3,1,0; 3 -> 2,1,0.
    assert got["recall@1"] == 0.0
    assert got["recall@2"] == 0.5  # item 1 finds 2, item 2 finds 1 at rank 2
    assert got["recall@8"] == 1.0  # clipped to N-1 = 3: everyone's partner is in the list
    # AP@R with R = 1: only rank 1 counts, and it is never relevant.
    assert got["map@r"] == 0.0


def test_all_singletons_and_invalid_inputs():
    x = np.eye(3, dtype=np.float32)
    got = retrieval_metrics(x, [0, 1, 2], nmi=False)
    assert got["recall@1"] == 0.0 and math.isnan(got["map@r"])
    with pytest.raises(ValueError, match="at least 2"):
        retrieval_metrics(np.zeros((0, 4), dtype=np.float32), [])
    with pytest.raises(ValueError, match="at least 2"):
        retrieval_metrics(np.zeros((1, 4), dtype=np.float32), [0])
    with pytest.raises(ValueError, match="length"):
        retrieval_metrics(np.zeros((3, 4), dtype=np.float32), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((3, 4), np.nan, dtype=np.float32), [0, 1, 1])


# ---------------------------------------------------------------- against PML


def pml_accuracy(x: np.ndarray, y: np.ndarray) -> dict:
    pytest.importorskip("faiss")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("mean_average_precision_at_r", "precision_at_1"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    return calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))


@pytest.mark.parametrize("seed", [0, 1])
def test_map_at_r_and_recall_at_1_equal_pytorch_metric_learning(seed):
    x, y = blob_set(seed, noise=1.5)
    ours = retrieval_metrics(x, y, nmi=False)
    pml = pml_accuracy(x, y)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert 0.1 < ours["map@r"] < 0.9


def test_singletons_count_in_recall_but_not_in_map_at_r_like_pml():
    x, y = blob_set(5, noise=1.5)
    x = np.concatenate([x, np.random.default_rng(0).standard_normal((4, x.shape[1]))])
    x = x.astype(np.float32)
    y = np.concatenate([y, [90, 91, 92, 93]])  # four singleton classes
    ours = retrieval_metrics(x, y, nmi=False)
    pml = pml_accuracy(x, y)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    # PML's precision_at_1 leaves the 4 singleton queries out; our recall@1 counts them as misses.
    n = len(y)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"] * (n - 4) / n, abs=1e-6)


# ---------------------------------------------------------------- k-means and NMI


def test_nmi_is_one_on_unambiguous_clusters():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((7, 5)) * 50
    y = rng.permutation(np.repeat(np.arange(7), 9))
    x = (centers[y] + rng.standard_normal((len(y), 5))).astype(np.float32)
    got = retrieval_metrics(x, y * 3 + 1, nmi=True)
    km = KMeans(7, n_init=3, random_state=0).fit(x)
    assert normalized_mutual_info_score(y, km.labels_) == 1.0
    assert got["nmi"] == pytest.approx(1.0, abs=1e-12)
    assert got["recall@1"] == 1.0 and got["map@r"] == 1.0


def test_kmeans_matches_sklearn_quality_and_is_deterministic():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 6)).astype(np.float32)  # no true clusters: a hard instance
    a, inertia = kmeans(x, 12, n_init=3, seed=5)
    b, inertia_b = kmeans(x, 12, n_init=3, seed=5)
    assert torch.equal(a, b) and inertia == inertia_b
    # The returned inertia is that of the returned assignment (recomputed in float64).
    centers = np.stack([x[a.numpy() == c].mean(0) for c in range(12)])
    own = ((x - centers[a.numpy()]) ** 2).sum()
    assert inertia == pytest.approx(float(own), rel=1e-5)
    # A converged Lloyd run: every point is at its nearest centre.
    d = ((x[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(-1)
    assert (d.argmin(1) == a.numpy()).mean() > 0.99
    sk = KMeans(12, n_init=3, random_state=0).fit(x)
    assert inertia <= sk.inertia_ * 1.03


def test_nmi_is_sensible_on_random_and_noisy_data():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    random_nmi = retrieval_metrics(x, y)["nmi"]
    # The NMI of an unrelated 10-way partition of 300 items (chance level is ~0.05-0.1).
    assert 0.0 < random_nmi < 0.15
    xb, yb = blob_set(4, noise=2.5)
    ours = retrieval_metrics(xb, yb, seed=1)["nmi"]
    sk = KMeans(6, n_init=5, random_state=0).fit(xb)
    assert ours == pytest.approx(normalized_mutual_info_score(yb, sk.labels_), abs=0.1)
    assert ours > random_nmi + 0.2


# ---------------------------------------------------------------- classification


def test_classification_metrics_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2, 3, 3])  # class 3 predicted, never true
    logits = torch.nn.functional.one_hot(preds, 5).float() * 3.0
    got = classification_metrics(logits, labels, num_classes=5)
    assert got["acc"] == pytest.approx(6 / 10)
    # Per-class accuracy 3/4, 1/2, 2/4 over the classes that have test items (not class 3).
    assert got["macro_acc"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert classification_metrics(preds, labels, num_classes=5) == got


def test_per_class_accuracy_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 1, 3])
    preds = torch.tensor([0, 1, 1, 1, 0, 3])
    acc = per_class_accuracy(preds, labels, 5)
    assert acc.shape == (5,) and acc.dtype == torch.float32
    assert acc[0] == 0.5 and acc[1] == pytest.approx(2 / 3) and acc[3] == 1.0
    # Classes without test items are NaN, also when they are predicted (class 2 never is,
    # class 4 is by the logits below).
    assert torch.isnan(acc[2]) and torch.isnan(acc[4])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 4, 3]), 5).float()
    from_logits = per_class_accuracy(logits, labels.numpy(), 5)
    assert from_logits[0] == 0.5 and from_logits[1] == pytest.approx(2 / 3)
    assert torch.isnan(from_logits[4])
    with pytest.raises(ValueError, match="as many predictions"):
        per_class_accuracy(preds[:3], labels, 5)


def test_shot_accuracy_groups_and_omits_empty_groups():
    train_counts = [150, 101, 100, 20, 19, 3]  # many: 0,1  medium: 2,3  few: 4,5
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 4, 5])
    preds = torch.tensor([0, 1, 1, 2, 0, 0, 4, 4, 0, 5])
    got = shot_accuracy(preds, labels, train_counts)
    assert got == pytest.approx(
        {"many_acc": (0.5 + 1.0) / 2, "medium_acc": (0.5 + 0.0) / 2, "few_acc": (2 / 3 + 1) / 2}
    )
    # Only many-shot classes in the test labels: the other groups are left out, no NaN.
    only_many = shot_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), train_counts)
    assert only_many == {"many_acc": 1.0}
    # Logits give the same numbers as their argmax.
    logits = torch.nn.functional.one_hot(preds, 6).float()
    assert shot_accuracy(logits, labels, train_counts, many=100, few=20) == got


# ---------------------------------------------------------------- the benchmark runs


def test_bench_eval_quick_runs_and_agrees_with_pml():
    pytest.importorskip("faiss")
    path = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "bench_eval.py"
    spec = importlib.util.spec_from_file_location("bench_eval", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        rows = bench.run(quick=True, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert [r["variant"] for r in rows] == [
        "retrieval",
        "retrieval+nmi",
        "retrieval+nmi@100it",
        "retrieval (reference, torch GEMM)",
    ]
    for r in rows:
        assert r["N"] == 1200 and r["ours_s"] > 0 and r["pml_s"] > 0
        assert r["ours_recall@1"] == pytest.approx(r["pml_recall@1"], abs=1e-6)
        assert r["ours_map@r"] == pytest.approx(r["pml_map@r"], abs=1e-6)
    assert abs(rows[1]["ours_nmi"] - rows[1]["pml_nmi"]) < 0.1
    assert "| retrieval+nmi | 1200 | 1 |" in bench.markdown_table(rows)
