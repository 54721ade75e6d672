"""Test-time diagnostics: ECE and the reliability diagram, Recall@1 by frequency group, the
embedding geometry and its pair-distance histogram, the worst-query grid, the hierarchy hook,
and the keys of a tiny long-tailed run (metrics.json and the printed table)."""

from __future__ import annotations

import json
import math
import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config
from PIL import Image
from test_plots import FakeDataset, fixed_result
from torchmetrics.functional.classification import multiclass_calibration_error

from ranking_reg.lightning.module import RankingRegModule
from ranking_reg.lightning.plot_callback import PLOT_NAMES, PlotOptions, render_plots
from ranking_reg.metrics import Evaluator
from ranking_reg.metrics.calibration import expected_calibration_error, reliability_bins
from ranking_reg.metrics.classification import shot_recall
from ranking_reg.metrics.geometry import embedding_geometry, pair_distance_sample
from ranking_reg.reporting import diagnostic_plots, plots
from ranking_reg.reporting.metrics_table import format_metrics_table
from ranking_reg.utils.errors import ConfigError


# -- calibration ----------------------------------------------------------------------------------
def reference_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Guo et al. 2017, Eq. 3, from the definition: a Python loop over bins ((m-1)/M, m/M]."""
    n = len(labels)
    confidences, correct = [], []
    for row, label in zip(logits.double().tolist(), labels.tolist(), strict=True):
        exps = [math.exp(v - max(row)) for v in row]
        probs = [e / sum(exps) for e in exps]
        best = max(range(len(probs)), key=lambda c: (probs[c], -c))
        confidences.append(probs[best])
        correct.append(best == label)
    total = 0.0
    for m in range(1, n_bins + 1):
        lo, hi = (m - 1) / n_bins, m / n_bins
        members = [i for i in range(n) if lo < confidences[i] <= hi]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidences[i] for i in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


def test_ece_equals_the_reference_and_torchmetrics_away_from_bin_edges():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 7, generator=g) * 2.5
    labels = torch.randint(0, 7, (300,), generator=g)
    ours = expected_calibration_error(logits, labels)
    assert ours == pytest.approx(reference_ece(logits, labels), abs=1e-12)
    assert 0.0 < ours < 1.0
    # torchmetrics' left-closed float32 bins give the same number when no confidence sits on an
    # edge (probability 0 for random logits)
    probs = torch.softmax(logits, dim=1)
    theirs = multiclass_calibration_error(probs, labels, num_classes=7, n_bins=15, norm="l1")
    assert ours == pytest.approx(float(theirs), abs=1e-5)


def two_class_logits(confidence: float, n: int, correct: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` predictions of class 0 with softmax confidence ``confidence``, ``correct`` right."""
    row = torch.tensor([math.log(confidence), math.log(1 - confidence)], dtype=torch.float64)
    labels = torch.tensor([0] * correct + [1] * (n - correct))
    return row.repeat(n, 1), labels


def test_ece_of_an_exactly_calibrated_head_is_zero_and_a_hand_computed_case():
    # 10 predictions at confidence 0.8, 8 right; 5 at 0.6, 3 right: every bin is calibrated
    a, ya = two_class_logits(0.8, 10, 8)
    b, yb = two_class_logits(0.6, 5, 3)
    assert expected_calibration_error(torch.cat([a, b]), torch.cat([ya, yb])) == pytest.approx(
        0.0, abs=1e-12
    )
    # By hand, n = 4: two at 0.9 (one right) share a bin, |0.5 - 0.9| * 2/4; one at 0.55,
    # right, |1 - 0.55| * 1/4; one at 0.4 of three classes, wrong, |0 - 0.4| * 1/4.
    c, yc = two_class_logits(0.9, 2, 1)
    d, yd = two_class_logits(0.55, 1, 1)
    e = torch.log(torch.tensor([[0.4, 0.3, 0.3]], dtype=torch.float64))
    logits = torch.cat([torch.nn.functional.pad(torch.cat([c, d]), (0, 1), value=-1e9), e])
    labels = torch.cat([yc, yd, torch.tensor([1])])
    assert expected_calibration_error(logits, labels) == pytest.approx(1.65 / 4, abs=1e-12)
    bins = reliability_bins(logits, labels)
    assert bins.counts.sum() == 4 and len(bins.counts) == 15 and bins.counts[13] == 2
    assert bins.accuracy[13] == pytest.approx(0.5) and bins.confidence[13] == pytest.approx(0.9)
    assert torch.isnan(bins.accuracy[0]) and bins.edges[-1] == 1.0


def test_a_confidence_of_one_falls_in_the_last_bin():
    logits = torch.tensor([[0.0, 2000.0], [0.0, 0.0]])  # confidences 1.0 and 0.5
    bins = reliability_bins(logits, torch.tensor([1, 0]))
    assert bins.counts.tolist() == [0] * 7 + [1] + [0] * 6 + [1]  # 0.5 in (7/15, 8/15]
    # the sure prediction is right (0); the tie goes to class 0, right: |1 - 0.5| * 1/2
    assert bins.ece == pytest.approx(0.25)


# -- Recall@1 by frequency group ------------------------------------------------------------------
def reference_shot_recall(
    x: torch.Tensor, labels: torch.Tensor, counts: list[int], many: int, few: int
) -> dict[str, float]:
    """From the definition: each query's nearest other item (brute force, float64, ties to the
    lower index) is a hit when it has the query's class; mean over the queries of each group."""
    x = x.double()
    hits: dict[str, list[bool]] = {"many": [], "medium": [], "few": []}
    for i in range(len(x)):
        d = ((x - x[i]) ** 2).sum(1)
        d[i] = float("inf")
        nearest = int(torch.argmin(d))
        c = counts[int(labels[i])]
        group = "many" if c > many else "few" if c < few else "medium"
        hits[group].append(bool(labels[nearest] == labels[i]))
    return {f"{g}_recall@1": sum(h) / len(h) for g, h in hits.items() if h}


def test_recall_by_frequency_group_equals_the_reference_knn():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(90) % 6
    centres = torch.randn(6, 5, generator=g) * 1.2
    emb = centres[labels] + torch.randn(90, 5, generator=g)
    pooled = centres[labels] * 2 + torch.randn(90, 5, generator=g) * 3
    logits = torch.randn(90, 6, generator=g)
    counts = [300, 120, 60, 40, 10, 3]  # many {0, 1}, medium {2, 3}, few {4, 5}
    evaluator = Evaluator(ks=(1, 2), many_shot=100, few_shot=20)
    evaluator.train_class_counts = counts
    evaluator.update(logits, emb, pooled, labels, torch.arange(90))
    metrics = evaluator.compute("test", 6).metrics
    expected = reference_shot_recall(emb, labels, counts, 100, 20)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    pooled_expected = reference_shot_recall(pooled, labels, counts, 100, 20)
    got = {k: metrics[f"pooled_{k}"] for k in pooled_expected}
    assert got == pytest.approx(pooled_expected, abs=1e-12)
    assert len(set(expected.values())) > 1  # the groups differ: the test can tell them apart
    # weighted by the groups' sizes (equal here), the groups make up the overall Recall@1
    assert np.mean(list(expected.values())) == pytest.approx(metrics["recall@1"])


def test_shot_recall_leaves_out_empty_groups_and_checks_labels():
    first_hit = torch.tensor([0, 3, 0, 0, 1])
    labels = torch.tensor([0, 0, 1, 1, 1])
    got = shot_recall(first_hit, labels, [500, 50, 5], k=1, many=100, few=20)
    assert got == {"many_recall@1": 0.5, "medium_recall@1": 2 / 3}  # no few-shot query
    assert shot_recall(first_hit, labels, [500, 50, 5], k=2)["medium_recall@2"] == 1.0
    with pytest.raises(ValueError, match="class ids"):
        shot_recall(first_hit, labels, [500])


# -- embedding geometry ---------------------------------------------------------------------------
def reference_geometry(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """O(N²) over ordered pairs i != j, float64."""
    intra, inter, n_intra, n_inter = 0.0, 0.0, 0, 0
    for i in range(len(x)):
        for j in range(len(x)):
            if i == j:
                continue
            d = float(((x[i] - x[j]) ** 2).sum())
            if labels[i] == labels[j]:
                intra, n_intra = intra + d, n_intra + 1
            else:
                inter, n_inter = inter + d, n_inter + 1
    return {
        "intra_dist": intra / n_intra,
        "inter_dist": inter / n_inter,
        "intra_inter_ratio": (intra / n_intra) / (inter / n_inter),
    }


def test_geometry_equals_the_quadratic_reference():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, size=70)
    x = rng.normal(size=(70, 6)) + 3.0 * labels[:, None] + 100.0  # an offset that cancels
    got = embedding_geometry(torch.tensor(x, dtype=torch.float64), torch.tensor(labels))
    expected = reference_geometry(x, labels)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert got["intra_inter_ratio"] < 0.2  # separated classes


def test_geometry_leaves_out_what_has_no_pair():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    only_singletons = embedding_geometry(x, torch.tensor([0, 1, 2, 3]))
    assert set(only_singletons) == {"inter_dist"}
    one_class = embedding_geometry(x, torch.tensor([7, 7, 7, 7]))
    assert set(one_class) == {"intra_dist"}


def test_pair_distance_sample_all_pairs_and_a_seeded_sample():
    rng = np.random.default_rng(4)
    labels = np.array([0] * 6 + [1] * 4 + [2] * 3)
    x = rng.normal(size=(13, 3))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    i, j = np.triu_indices(13, k=1)
    same = labels[i] == labels[j]
    positive, negative, sampled = pair_distance_sample(x, labels)
    assert not sampled
    assert np.allclose(np.sort(positive), np.sort(d[i[same], j[same]]))  # 15 + 6 + 3 pairs
    assert np.allclose(np.sort(negative), np.sort(d[i[~same], j[~same]]))
    pos, neg, sampled = pair_distance_sample(x, labels, max_pairs=10, seed=1)
    assert sampled and len(pos) == len(neg) == 10
    # every sampled distance is one of the kind's distances; the same seed draws the same pairs
    assert all(np.isclose(d[i[same], j[same]], p).any() for p in pos)
    assert all(np.isclose(d[i[~same], j[~same]], q).any() for q in neg)
    again = pair_distance_sample(x, labels, max_pairs=10, seed=1)
    assert np.array_equal(again[0], pos) and np.array_equal(again[1], neg)


# -- worst queries and the pictures ---------------------------------------------------------------
def test_select_worst_queries_lowest_ap_first_ties_by_index_no_singletons():
    ap = np.array([0.5, np.nan, 0.1, 0.5, 0.1, 1.0])
    assert diagnostic_plots.select_worst_queries(ap, 4).tolist() == [2, 4, 0, 3]
    assert diagnostic_plots.select_worst_queries(ap, 99).tolist() == [2, 4, 0, 3, 5]
    assert diagnostic_plots.select_worst_queries(ap, 0).tolist() == []


def not_blank(image: Image.Image) -> bool:
    pixels = np.asarray(image.convert("RGB"))
    return len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_reliability_diagram_and_pair_histogram_are_drawn():
    g = torch.Generator().manual_seed(5)
    logits, labels = torch.randn(200, 4, generator=g) * 3, torch.randint(0, 4, (200,), generator=g)
    bins = reliability_bins(logits, labels)
    image = diagnostic_plots.reliability_diagram(
        bins.edges.numpy(), bins.counts.numpy(), bins.accuracy.numpy(),
        bins.confidence.numpy(), bins.ece,
    )  # fmt: skip
    assert image.size == (600, 600) and not_blank(image)
    assert (np.asarray(image) == plots.BAR_COLOR).all(-1).sum() > 500  # the accuracy bars
    histogram = diagnostic_plots.pair_distance_histogram(
        np.random.rand(50), np.random.rand(80) + 1, True, 10
    )
    assert histogram.size == (700, 450) and not_blank(histogram)


def test_render_plots_draws_the_worst_queries_with_their_own_neighbours():
    result = fixed_result()
    labels = result.labels.numpy()
    ap = result.per_query["ap@r"].numpy()
    images = render_plots(
        result,
        FakeDataset(labels, 4),
        [5, 5, 5, 5],
        n_queries=8,
        n_neighbors=2,
        thumb_size=32,
        n_worst_queries=3,
    )
    assert set(images) == set(PLOT_NAMES)
    worst = diagnostic_plots.select_worst_queries(ap, 3)
    assert ap[worst[0]] == ap.min() and ap[worst[0]] < 1.0
    grid = images["worst_queries"]
    cell, pad = 32 + 8, 2
    row_h = cell + 12 + 2 * pad
    assert grid.size == (3 * (cell + 2 * pad) + cell // 3, 3 * row_h)
    for row, q in enumerate(worst):  # each row's query tile is the dataset image of that query
        expected = FakeDataset(labels, 4).load_image(100 + int(q)).getpixel((0, 0))
        assert grid.getpixel((pad + cell // 2, row * row_h + pad + cell // 2)) == expected
    # the random grid holds the same rows as before; with n_worst_queries=0 no worst grid
    none = render_plots(result, FakeDataset(labels, 4), n_queries=8, n_worst_queries=0)
    assert "worst_queries" not in none
    with pytest.raises(ConfigError, match="n_worst_queries"):
        PlotOptions(n_worst_queries=-1)


# -- the hierarchy hook ---------------------------------------------------------------------------
@pytest.fixture
def stand_in_hierarchy_metrics(monkeypatch):
    """A stand-in ``ranking_reg.metrics.hierarchy``: top-1 accuracy at the parent level of a
    hierarchy object with a ``parent`` list (class id -> parent id); records its calls."""
    calls = []

    def hierarchy_metrics(predictions, labels, hierarchy):
        calls.append((predictions.clone(), labels.clone(), hierarchy))
        parent = torch.tensor(hierarchy.parent)
        return {"top1@family": float((parent[predictions] == parent[labels]).double().mean())}

    module = ModuleType("ranking_reg.metrics.hierarchy")
    module.hierarchy_metrics = hierarchy_metrics
    monkeypatch.setitem(sys.modules, "ranking_reg.metrics.hierarchy", module)
    return calls


def test_hierarchy_metrics_are_merged_when_configured(stand_in_hierarchy_metrics):
    calls = stand_in_hierarchy_metrics
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    preds = torch.tensor([1, 1, 2, 0, 0, 0, 3, 3])  # families {0, 1} | {2, 3}: 7 of 8 right
    logits = torch.nn.functional.one_hot(preds, 4).float()
    emb = torch.randn(8, 3, generator=torch.Generator().manual_seed(6))
    evaluator = Evaluator(ks=(1,))

    def run() -> dict[str, float]:
        evaluator.update(logits, emb, emb, labels, torch.arange(8))
        return evaluator.compute("test", 4).metrics

    assert "top1@family" not in run() and not calls  # no hierarchy: inert
    hierarchy = SimpleNamespace(parent=[0, 0, 1, 1])
    evaluator.configure_hierarchy(hierarchy)
    assert run()["top1@family"] == pytest.approx(7 / 8)
    (predictions, got_labels, got_hierarchy), = calls  # fmt: skip
    assert torch.equal(predictions, preds) and torch.equal(got_labels, labels)
    assert got_hierarchy is hierarchy
    evaluator.classify = False  # the class head does not fit: no hierarchy metrics
    assert "top1@family" not in run() and len(calls) == 1
    evaluator.classify = True
    evaluator.configure_hierarchy(None)
    assert "top1@family" not in run() and len(calls) == 1


def test_module_setup_hands_the_datamodule_hierarchy_to_the_evaluator():
    hierarchy = SimpleNamespace(parent=[0, 0, 1, 1])
    for datamodule, expected in (
        (SimpleNamespace(class_hierarchy=hierarchy), hierarchy),
        (SimpleNamespace(), None),  # a data module without the attribute
    ):
        module = SimpleNamespace(
            _trainer=True, trainer=SimpleNamespace(datamodule=datamodule), evaluator=Evaluator()
        )
        module.evaluator.hierarchy = "stale"
        RankingRegModule.setup(module, "fit")
        assert module.evaluator.hierarchy is expected


# -- a tiny long-tailed run -----------------------------------------------------------------------
DIAGNOSTIC_KEYS = [
    "test/ece",
    "test/intra_dist",
    "test/inter_dist",
    "test/intra_inter_ratio",
    "test/pooled_intra_dist",
    "test/pooled_inter_dist",
    "test/pooled_intra_inter_ratio",
]


@pytest.mark.slow
def test_a_tiny_long_tailed_run_writes_the_diagnostics(tmp_path, capsys):
    from ranking_reg.train import run

    overrides = [
        *TINY,
        "data=digits_lt",
        "callbacks=default",
        "logger=none",
        "metrics.knn.gallery=none",
        "callbacks.plots.every_n_epochs=2",  # one epoch: the test's pictures only
        "trainer.limit_test_batches=2",
    ]
    metrics = run(compose_config(overrides, output_dir=tmp_path))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    groups = [k for k in on_disk if k.endswith("_recall@1") and "pooled" not in k]
    assert set(DIAGNOSTIC_KEYS) <= set(on_disk) and groups, sorted(on_disk)
    assert {k.replace("test/", "test/pooled_") for k in groups} <= set(on_disk)
    assert 0.0 <= on_disk["test/ece"] <= 1.0 and on_disk["test/intra_dist"] > 0
    # the embedding is L2-normalised: squared distances of unit vectors lie in [0, 4]
    assert on_disk["test/intra_dist"] < on_disk["test/inter_dist"] <= 4.0
    assert on_disk["test/intra_inter_ratio"] == pytest.approx(
        on_disk["test/intra_dist"] / on_disk["test/inter_dist"]
    )
    table = capsys.readouterr().out
    rows = [line.split()[0] for line in table.splitlines() if line.startswith("test/")]
    for key in DIAGNOSTIC_KEYS + groups:
        assert key in rows
    # rows in a reading order: the class head (calibration last), retrieval, groups, geometry
    order = ["test/acc", "test/ece", "test/recall@1", "test/map@r", groups[0], "test/intra_dist"]
    assert [rows.index(k) for k in order] == sorted(rows.index(k) for k in order)
    plot_dir = tmp_path / "plots"
    for name in PLOT_NAMES:
        assert (plot_dir / f"test_{name}_latest.png").is_file(), name


def test_metrics_table_shows_the_diagnostics_in_percent_or_plain():
    table = format_metrics_table(
        {
            "test/intra_dist": 0.5,
            "test/ece": 0.031,
            "test/few_recall@1": 0.25,
            "test/acc": 0.9,
            "test/recall@16": 0.99,
            "test/recall@2": 0.95,
        }
    )
    lines = table.splitlines()[3:]
    assert [line.split()[0] for line in lines] == [
        "test/acc",
        "test/ece",
        "test/recall@2",
        "test/recall@16",
        "test/few_recall@1",
        "test/intra_dist",
    ]
    assert "3.10 %" in lines[1] and "25.00 %" in lines[4] and "0.5000" in lines[5]
