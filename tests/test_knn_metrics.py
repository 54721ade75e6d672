"""kNN classification metrics: the vote and the fusion against slow references written from
their definitions (ranking_reg/metrics/knn_classify.py), alpha chosen on validation only, the
test loaders, the class-disjoint protocol, and the metrics of real runs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config

from ranking_reg.metrics import Evaluator, search_gallery
from ranking_reg.metrics.knn_classify import (
    EPS,
    GalleryVotes,
    choose_alpha,
    fused_scores,
    knn_classification_metrics,
    normalised,
    predictions,
)

GRID = [i / 10 for i in range(11)]
KNN_KEYS = {"test/knn_acc@1", "test/knn_acc@10", "test/fused_acc", "test/fused_alpha"}


# -- references, from the definitions, one sample at a time ----------------------------------------
def reference_vote(neighbours: list[tuple[float, int]]) -> tuple[int, dict[int, float]]:
    """(prediction, normalised vote) of a query whose k neighbours are ``(distance, label)``,
    nearest first: each adds 1 / (d + eps) to its label; argmax, ties to the lower class id."""
    votes: dict[int, float] = {}
    for distance, label in neighbours:
        votes[label] = votes.get(label, 0.0) + 1.0 / (distance + EPS)
    best = None
    for label in sorted(votes):
        if best is None or votes[label] > votes[best]:
            best = label
    total = sum(votes.values())
    return best, {label: v / total for label, v in votes.items()}


def reference_neighbours(gallery, labels, query, k) -> list[tuple[float, int]]:
    """The k nearest gallery items (Euclidean, float64), ties to the lower gallery index."""
    d = [math.dist(query, g) for g in gallery]
    order = sorted(range(len(gallery)), key=lambda j: (d[j], j))[: min(k, len(gallery))]
    return [(d[j], int(labels[j])) for j in order]


def reference_fused(logits_row, vote: dict[int, float], alpha: float) -> int:
    """argmax_c (1 - alpha) softmax(logits)_c + alpha vote_c, ties to the lower class id."""
    top = max(logits_row)
    exps = [math.exp(v - top) for v in logits_row]
    p = [(1 - alpha) * e / sum(exps) + alpha * vote.get(c, 0.0) for c, e in enumerate(exps)]
    best = 0
    for c in range(1, len(p)):
        if p[c] > p[best]:
            best = c
    return best


def tie_heavy_points():
    """A 6 x 6 integer grid with a duplicated point of another class (gallery) and queries on
    and between the grid points: many equal distances, so ties at the k-th neighbour and ties
    between the votes of two classes."""
    gallery = [(x, y) for x in range(6) for y in range(6)] + [(2, 2), (4, 1)]
    labels = [(3 * x + y) % 4 for x, y in gallery[:-2]] + [3, 0]
    halves = [-1, 0, 0.5, 2, 2.5, 3, 5, 6]
    queries = list(itertools.product(halves, repeat=2))
    rng = np.random.default_rng(0)
    query_labels = rng.integers(0, 4, len(queries))
    return gallery, labels, queries, query_labels


def test_vote_predictions_and_accuracy_equal_the_definition_with_ties():
    gallery, labels, queries, query_labels = tie_heavy_points()
    votes = GalleryVotes(np.array(gallery, np.float32), labels)
    ks = (1, 2, 3, 5)
    scores, y = votes.votes(np.array(queries, np.float32), query_labels, ks)
    metrics = knn_classification_metrics(
        np.array(gallery, np.float32), labels, np.array(queries, np.float32), query_labels, ks
    )
    boundary_ties = vote_ties = 0
    for k in ks:
        hits = 0
        for i, query in enumerate(queries):
            deeper = reference_neighbours(gallery, labels, query, k + 1)
            boundary_ties += len(deeper) > k and deeper[k - 1][0] == deeper[k][0]
            neighbours = deeper[:k]
            expected, vote = reference_vote(neighbours)
            best = max(vote.values())
            vote_ties += sum(v == best for v in vote.values()) > 1
            assert int(predictions(scores[k])[i]) == expected, (k, query)
            assert normalised(scores[k])[i].tolist() == pytest.approx(
                [vote.get(c, 0.0) for c in range(4)], rel=1e-6
            )
            hits += expected == query_labels[i]
        assert metrics[f"knn_acc@{k}"] == pytest.approx(hits / len(queries), abs=1e-12)
    assert boundary_ties > 20 and vote_ties > 20  # the ties were exercised
    assert torch.equal(y, torch.as_tensor(query_labels))
    # k beyond the gallery is clipped to it (the key keeps the k asked for)
    few = knn_classification_metrics(gallery[:3], labels[:3], queries, query_labels, (3, 50))
    assert few["knn_acc@50"] == few["knn_acc@3"]


def test_fused_accuracy_equals_the_definition_with_ties():
    gallery, labels, queries, query_labels = tie_heavy_points()
    rng = np.random.default_rng(1)
    logits = rng.integers(0, 3, (len(queries), 4)).astype(np.float32)  # many equal logits
    logits[:5] = 0.0  # the softmax alone ties across all four classes
    scores, _ = GalleryVotes(gallery, labels, num_classes=4).votes(queries, query_labels, (5,))
    vote = normalised(scores[5])
    logits_t = torch.from_numpy(logits)
    for alpha in GRID:
        fused = predictions(fused_scores(logits_t, vote, alpha))
        for i, query in enumerate(queries):
            _, reference = reference_vote(reference_neighbours(gallery, labels, query, 5))
            assert int(fused[i]) == reference_fused(logits[i].tolist(), reference, alpha)
    metrics = knn_classification_metrics(
        gallery, labels, queries, query_labels, (1, 5), logits=logits_t, fuse_alpha=0.3
    )
    expected = np.mean(
        [
            reference_fused(logits[i].tolist(), reference_vote(
                reference_neighbours(gallery, labels, q, 5))[1], 0.3) == query_labels[i]
            for i, q in enumerate(queries)
        ]
    )  # fmt: skip
    assert metrics["fused_acc"] == pytest.approx(expected, abs=1e-12)
    assert metrics["fused_alpha"] == 0.3 and metrics["fused_alpha_on_val"] == 0.0


def _feed(evaluator: Evaluator, stream: str, emb, labels, logits) -> None:
    emb, logits = torch.tensor(emb, dtype=torch.float32), torch.tensor(logits)
    n = len(emb)
    evaluator.update(logits, emb, emb, torch.tensor(labels), torch.arange(n), stream=stream)


def test_alpha_is_chosen_on_the_validation_queries_never_on_the_test_split():
    """val: kNN wrong & softmax sure (needs alpha <= 0.4) and kNN right & softmax unsure (needs
    alpha >= 0.2): best 0.2 to 0.4, the smaller wins. test: kNN right & softmax sure and wrong,
    where only alpha >= 0.5 is right; the test split must not move alpha there."""
    gallery = [[0.0, 0.0]] * 3 + [[10.0, 0.0]] * 3
    gallery_labels = [0, 0, 0, 1, 1, 1]
    val_emb = [[0.1, 0.0], [0.0, 0.2], [0.2, 0.1], [0.1, 0.1]]
    val_labels = [1, 1, 0, 0]
    val_logits = [[0.0, 10.0], [0.0, 10.0], [0.0, 0.5], [0.0, 0.5]]
    test_emb = [[9.9, 0.0], [10.1, 0.1]]
    test_labels = [1, 1]
    test_logits = [[10.0, 0.0], [10.0, 0.0]]

    def run(streams, fuse_alpha=0.5):
        evaluator = Evaluator(ks=(1,), pooled_ks=(1,), knn_ks=(1, 3), fuse_alpha=fuse_alpha)
        evaluator.reset(streams)
        _feed(evaluator, "query", test_emb, test_labels, test_logits)
        if "gallery" in streams:
            _feed(evaluator, "gallery", gallery, gallery_labels, [[0.0, 0.0]] * 6)
        if "val" in streams:
            _feed(evaluator, "val", val_emb, val_labels, val_logits)
        return evaluator.compute("test", 2).metrics

    tuned = run(("query", "gallery", "val"))
    assert tuned["fused_alpha"] == 0.2 and tuned["fused_alpha_on_val"] == 1.0
    assert tuned["fused_acc"] == 0.0 and tuned["knn_acc@1"] == 1.0 and tuned["acc"] == 0.0
    # what the test split would have chosen (the check above is not vacuous)
    logits, labels = torch.tensor(test_logits), torch.tensor(test_labels)
    scores, _ = GalleryVotes(gallery, gallery_labels, 2).votes(test_emb, test_labels, (3,))
    assert choose_alpha(logits, normalised(scores[3]), labels, GRID) == 0.5
    # no validation split apart from the test split: the fixed default, said so
    fixed = run(("query", "gallery"), fuse_alpha=0.7)
    assert fixed["fused_alpha"] == 0.7 and fixed["fused_alpha_on_val"] == 0.0
    assert fixed["fused_acc"] == 1.0
    # no gallery: no kNN metrics at all
    assert not [k for k in run(("query",)) if "knn" in k or "fused" in k]


def test_test_loaders_follow_the_gallery_and_the_validation_split():
    from torch.utils.data import DataLoader

    from ranking_reg.data import FGVRDataModule

    def module(**options):
        dm = FGVRDataModule("digits", None, img_size=16, num_workers=0, **options)
        dm.setup("test")
        return dm

    dm = module(gallery="train")
    assert dm.test_streams == ("query", "gallery", "val")
    loaders = dm.test_dataloader()
    assert [loader.dataset for loader in loaders] == [
        dm.test_dataset, dm.gallery_dataset, dm.val_dataset,
    ]  # fmt: skip
    # the gallery is the training split (its images, the test transform): no validation image
    assert dm.gallery_dataset.indices == dm.train_dataset.indices
    assert not set(dm.gallery_dataset.indices) & set(dm.val_dataset.indices)
    assert dm.gallery_dataset.transform is dm.test_dataset.transform
    assert module(gallery="train", val_fraction=0).test_streams == ("query", "gallery")
    assert module(gallery="train", val_source="test", val_fraction=0).test_streams == (
        "query",
        "gallery",
    )
    plain = module()  # gallery=none (the class default): one loader, as before
    assert plain.test_streams == ("query",)
    single = plain.test_dataloader()
    assert isinstance(single, DataLoader) and single.dataset is plain.test_dataset


def test_class_halves_are_relabelled_in_every_split():
    from ranking_reg.data import FGVRDataModule
    from ranking_reg.data.class_subset import kept_class_ids
    from ranking_reg.utils.errors import ConfigError

    assert kept_class_ids(5, "first_half") == [0, 1] and kept_class_ids(5, "second_half") == [
        2,
        3,
        4,
    ]
    full = FGVRDataModule("digits", None, img_size=16, num_workers=0)
    full.setup("test")
    for which, names in (("first_half", "01234"), ("second_half", "56789")):
        dm = FGVRDataModule("digits", None, img_size=16, num_workers=0, classes=which)
        dm.setup("test")
        assert dm.num_classes == 5
        for split in ("train_dataset", "val_dataset", "test_dataset"):
            view = getattr(dm, split)
            assert view.classes == list(names) and set(view.targets) == set(range(5))
        old = [int(full.test_dataset.classes[y]) for y in full.test_dataset.targets]
        kept = [d for d in old if str(d) in names]
        assert [int(names[y]) for y in dm.test_dataset.targets] == kept
        image, label, _ = dm.test_dataset[0]
        assert label == dm.test_dataset.targets[0] and image.shape[-1] == 16
    with pytest.raises(ConfigError, match="data.classes=odd"):
        FGVRDataModule("digits", None, classes="odd")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("metrics.knn.gallery=test", "metrics.knn.gallery=test: expects one of train|none"),
        ("metrics.knn.ks=[0,5]", "metrics.knn.ks=[0, 5]: expects a non-empty list of integers"),
        ("metrics.knn.fuse_alpha=1.5", "metrics.knn.fuse_alpha=1.5: expects a number in [0, 1]"),
        ("metrics.knn.fuse_grid=[0.5,2]", "metrics.knn.fuse_grid=[0.5, 2]: expects a non-empty"),
        ("data.classes=odd", "data.classes=odd: expects one of all|first_half|second_half"),
    ],
)
def test_knn_and_class_options_are_checked_before_anything_runs(override, message):
    from test_config_errors import config_error

    assert message in config_error([override])


def test_evaluate_names_a_bad_gallery(tmp_path):
    from ranking_reg.evaluate import evaluate
    from ranking_reg.utils.errors import ConfigError

    cfg = compose_config(["ckpt_path=x.ckpt", "gallery=test"], tmp_path, name="eval")
    with pytest.raises(ConfigError, match="gallery=test: expects train"):
        evaluate(cfg, ["gallery=test"])
    # null knn settings mean the checkpoint's own
    cfg = compose_config(["ckpt_path=x.ckpt"], tmp_path, name="eval")
    assert cfg.metrics.knn.gallery == "train" and cfg.metrics.knn.ks is None


def test_metrics_table_prints_knn_accuracies_in_percent():
    from ranking_reg.reporting.metrics_table import format_metrics_table

    table = format_metrics_table(
        {
            "test/knn_acc@1": 0.9,
            "test/pooled_knn_acc@10": 0.85,
            "test/fused_acc": 0.95,
            "test/fused_alpha": 0.3,
        }
    )
    assert "90.00 %" in table and "85.00 %" in table and "95.00 %" in table
    assert "0.3000" in table


def test_the_retrieval_table_has_a_knn_column(tmp_path):
    from test_tables import SPECS_DIR, make_run

    from ranking_reg.reporting.build import build_spec_table
    from ranking_reg.reporting.render import render_markdown
    from ranking_reg.reporting.runs import find_runs
    from ranking_reg.reporting.table_spec import load_spec

    spec = load_spec(SPECS_DIR / "retrieval.yaml", "smoke")
    metrics = {"test/knn_acc@1": 0.9, "test/pooled_knn_acc@1": 0.8, "test/recall@1": 0.7}
    for i, cell in enumerate(spec.cells()):
        for seed in spec.seeds:
            make_run(tmp_path, f"r{i}-{seed}", list(cell.overrides), seed, metrics)
    table = build_spec_table(spec, find_runs([tmp_path]))
    (panel,) = table.panels
    column = panel.column_labels.index("kNN@1 acc")
    ours = [panel.entries[(row, column)].ours()[0] for row in range(len(panel.row_labels))]
    # the softmax row reads its GAP features (pooled_), the others their embedding
    assert ours == pytest.approx([80.0, 90.0, 90.0, 90.0])
    assert "kNN@1 acc" in render_markdown([table])


def _embed(module, dataset, n: int):
    """The outputs of the first ``n`` items of ``dataset``, in one batch (as the test ran)."""
    images = torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])
    labels = [dataset.targets[i] for i in range(len(images))]
    with torch.no_grad():
        output = module.eval()(images)
    return output, labels


@pytest.mark.slow
def test_a_run_reports_knn_metrics_equal_to_a_reference_from_its_embeddings(digits_checkpoint):
    from ranking_reg.data import FGVRDataModule
    from ranking_reg.lightning import RankingRegModule

    run_dir, metrics = digits_checkpoint
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert KNN_KEYS <= set(on_disk) and on_disk["test/fused_alpha_on_val"] == 1.0
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    module = RankingRegModule.load_from_checkpoint(best)
    data = dict(module.hparams["run_config"]["data"])
    data.pop("_target_")
    dm = FGVRDataModule(**data)
    dm.setup("test")
    batch = dm.eval_batch_size  # debug=fast: the first batch of every test loader
    query, query_labels = _embed(module, dm.test_dataset, batch)
    gallery, gallery_labels = _embed(module, dm.gallery_dataset, batch)
    val, val_labels = _embed(module, dm.val_dataset, batch)

    _, nearest = search_gallery(gallery.embedding, query.embedding, 1)
    hits = [gallery_labels[int(j)] == y for j, y in zip(nearest[:, 0], query_labels, strict=True)]
    assert on_disk["test/knn_acc@1"] == pytest.approx(np.mean(hits), abs=1e-7)

    def votes(outputs, labels):
        distances, idx = search_gallery(gallery.embedding, outputs.embedding, 10)
        rows = [
            reference_vote(
                [(float(d), gallery_labels[int(j)]) for d, j in zip(dr, ir, strict=True)]
            )
            for dr, ir in zip(distances, idx, strict=True)
        ]
        return rows

    test_votes = votes(query, query_labels)
    knn10 = np.mean([p == y for (p, _), y in zip(test_votes, query_labels, strict=True)])
    assert on_disk["test/knn_acc@10"] == pytest.approx(knn10, abs=1e-7)

    def fused_acc(outputs, rows, labels, alpha):
        logits = outputs.logits.tolist()
        return np.mean(
            [
                reference_fused(lg, v, alpha) == y
                for lg, (_, v), y in zip(logits, rows, labels, strict=True)
            ]
        )

    val_votes = votes(val, val_labels)
    val_acc = [fused_acc(val, val_votes, val_labels, a) for a in GRID]
    alpha = GRID[int(np.argmax(val_acc))]  # the first best: ties to the smaller alpha
    assert on_disk["test/fused_alpha"] == pytest.approx(alpha, abs=1e-7)  # logged as float32
    expected = fused_acc(query, test_votes, query_labels, alpha)
    assert on_disk["test/fused_acc"] == pytest.approx(expected, abs=1e-7)
    assert metrics == pytest.approx(on_disk)


@pytest.mark.slow
def test_train_on_half_the_classes_and_classify_the_other_half_without_retraining(tmp_path):
    from test_evaluate import _evaluate

    from ranking_reg.data import FGVRDataModule
    from ranking_reg.lightning import RankingRegModule
    from ranking_reg.train import run

    # 5 classes: P x K batches of 5 x 4
    overrides = [*TINY, "trainer.limit_train_batches=3", "logger=none", "data.classes=first_half"]
    overrides.append("data.batch_size=20")
    trained = run(compose_config(overrides, output_dir=tmp_path / "run"))
    assert "test/acc" in trained and "test/fused_acc" in trained
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    unseen = _evaluate(ckpt, tmp_path / "eval", "data.classes=second_half")
    assert {"test/recall@1", "test/map@r", "test/knn_acc@1", "test/knn_acc@10"} <= set(unseen)
    # a class head trained on digits 0-4 is never scored on 5-9: no softmax, no fusion
    assert not [k for k in unseen if k.endswith(("/acc", "macro_acc", "fused_acc", "alpha"))]

    module = RankingRegModule.load_from_checkpoint(ckpt)
    data = dict(module.hparams["run_config"]["data"], classes="second_half")
    data.pop("_target_")
    dm = FGVRDataModule(**data)
    dm.setup("test")
    assert dm.test_dataset.classes == list("56789")
    query, query_labels = _embed(module, dm.test_dataset, dm.eval_batch_size)
    gallery, gallery_labels = _embed(module, dm.gallery_dataset, dm.eval_batch_size)
    _, nearest = search_gallery(gallery.embedding, query.embedding, 1)
    hits = [gallery_labels[int(j)] == y for j, y in zip(nearest[:, 0], query_labels, strict=True)]
    assert unseen["test/knn_acc@1"] == pytest.approx(np.mean(hits), abs=1e-7)
    none = _evaluate(ckpt, tmp_path / "eval2", "data.classes=second_half", "gallery=none")
    assert not [k for k in none if "knn" in k] and none["test/recall@1"] == unseen["test/recall@1"]
