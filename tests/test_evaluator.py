"""The Evaluator: collection, (simulated) gathering, ordering by position, metrics, hand-off."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ranking_reg.metrics.evaluator as evaluator_module
from ranking_reg.metrics import (
    EvaluationResult,
    Evaluator,
    classification_metrics,
    notify_evaluation_end,
    retrieval_metrics,
    shot_accuracy,
)
from ranking_reg.metrics.calibration import expected_calibration_error
from ranking_reg.metrics.geometry import embedding_geometry

N_CLASSES = 5
BASE_KEYS = {
    "recall@1",
    "recall@2",
    "recall@4",
    "recall@8",
    "map@r",
    "nmi",
    "pooled_recall@1",
    "pooled_map@r",
    "pooled_nmi",
    # the diagnostics (tests/test_diagnostics.py checks their values)
    "intra_dist",
    "inter_dist",
    "intra_inter_ratio",
    "pooled_intra_dist",
    "pooled_inter_dist",
    "pooled_intra_inter_ratio",
}
# Recall@1 by frequency group, with train_class_counts
SHOT_RECALL_KEYS = {
    f"{prefix}{group}_recall@1" for prefix in ("", "pooled_") for group in ("many", "medium", "few")
}


def split_outputs(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """Outputs of ``n`` samples indexed by dataset position (row i = position i): clustered
    embeddings and pooled features so the metrics are neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    centres = rng.standard_normal((N_CLASSES, 8)) * 1.5
    emb = centres[labels] + rng.standard_normal((n, 8))
    pooled = np.concatenate([emb, rng.standard_normal((n, 4))], 1) + rng.standard_normal((n, 12))
    logits = np.eye(N_CLASSES)[labels] * 2 + rng.standard_normal((n, N_CLASSES)) * 1.2
    return {
        "logits": logits.astype(np.float32),
        "embeddings": emb.astype(np.float32),
        "pooled": pooled.astype(np.float32),
        "labels": labels.astype(np.int64),
        "positions": np.arange(n, dtype=np.int64),
    }


def batches(outputs: dict[str, np.ndarray], order: np.ndarray, size: int) -> list[dict]:
    """The samples ``order`` in batches of ``size``, as tensors (logits in float16, as under
    mixed precision)."""
    out = []
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        batch = {key: torch.from_numpy(value[rows]) for key, value in outputs.items()}
        batch["logits"] = batch["logits"].half()
        out.append(batch)
    return out


def feed(evaluator: Evaluator, parts: list[dict]) -> None:
    for b in parts:
        evaluator.update(b["logits"], b["embeddings"], b["pooled"], b["labels"], b["positions"])


@pytest.fixture
def two_ranks(monkeypatch):
    """Simulates a second process: ``gather_uneven`` returns this process's tensor followed by
    the other rank's concatenated batches of the same output (found by content)."""
    remote: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
        (other,) = [
            theirs
            for mine, theirs in remote.values()
            if mine.dtype == tensor.dtype and torch.equal(mine, tensor)
        ]
        return torch.cat([tensor, other])

    monkeypatch.setattr(evaluator_module.distributed, "gather_uneven", gather_uneven)
    return remote


def test_out_of_order_batches_of_two_ranks_equal_the_metrics_of_the_sorted_split(two_ranks):
    outputs = split_outputs()
    rng = np.random.default_rng(1)
    order = rng.permutation(60)
    mine, theirs = batches(outputs, order[:31], 7), batches(outputs, order[31:], 9)
    for key in outputs:
        local = torch.cat([b[key] for b in mine])
        local = local.float() if key == "logits" else local
        two_ranks[key] = (local, torch.cat([b[key] for b in theirs]).to(local.dtype))

    evaluator = Evaluator(ks=(1, 2, 4, 8), seed=3)
    assert evaluator.empty
    feed(evaluator, mine)
    assert not evaluator.empty
    result = evaluator.compute("val", N_CLASSES)

    assert isinstance(result, EvaluationResult) and result.stage == "val"
    # Every sample once, in dataset order, whatever the rank and batch it came from.
    assert result.positions.tolist() == list(range(60))
    ref = {key: torch.from_numpy(value) for key, value in outputs.items()}
    ref["logits"] = ref["logits"].half().float()  # what the model's float16 logits hold
    for key in ("embeddings", "pooled", "logits", "labels", "positions"):
        got = getattr(result, key)
        assert got.device.type == "cpu" and torch.equal(got, ref[key]), key
    assert result.embeddings.dtype == result.pooled.dtype == result.logits.dtype == torch.float32
    assert result.labels.dtype == result.positions.dtype == torch.int64

    # The metrics are those of the sorted split, computed here from the arrays directly.
    expected = classification_metrics(ref["logits"], ref["labels"], N_CLASSES)
    expected.update(retrieval_metrics(outputs["embeddings"], outputs["labels"], seed=3))
    pooled = retrieval_metrics(outputs["pooled"], outputs["labels"], ks=(1,), seed=3)
    pooled.update(embedding_geometry(outputs["pooled"], outputs["labels"]))
    expected.update({f"pooled_{k}": v for k, v in pooled.items()})
    expected.update(embedding_geometry(outputs["embeddings"], outputs["labels"]))
    expected["ece"] = expected_calibration_error(ref["logits"], ref["labels"])
    assert result.metrics == expected
    assert set(result.metrics) == BASE_KEYS | {"acc", "macro_acc", "ece"}
    assert 0.2 < result.metrics["recall@1"] < 1.0 and 0.2 < result.metrics["acc"] < 1.0
    # Top-1 accuracy counted by hand.
    hits = (outputs["logits"].argmax(1) == outputs["labels"]).sum()
    assert result.metrics["acc"] == pytest.approx(hits / 60)

    # compute resets: the next evaluation starts empty.
    assert evaluator.empty
    with pytest.raises(RuntimeError, match="no batch"):
        evaluator.compute("val", N_CLASSES)


def test_single_process_sorts_by_position():
    outputs = split_outputs(n=20, seed=2)
    outputs["positions"] = np.arange(20, dtype=np.int64)[::-1] * 3  # dataset of 60, reversed
    evaluator = Evaluator(ks=(1, 2))
    feed(evaluator, batches(outputs, np.arange(20), 6))
    result = evaluator.compute("test", N_CLASSES)
    assert result.stage == "test"
    assert result.positions.tolist() == list(range(0, 60, 3))
    assert torch.equal(result.labels, torch.from_numpy(outputs["labels"][::-1].copy()))
    assert {k for k in result.metrics if k.startswith("recall@")} == {"recall@1", "recall@2"}


def test_classify_false_gives_no_classification_metrics_and_no_logits():
    outputs = split_outputs(seed=4)
    evaluator = Evaluator()
    evaluator.classify = False
    evaluator.train_class_counts = [150, 50, 50, 5, 5]  # no logits: no shot accuracy either
    feed(evaluator, batches(outputs, np.arange(60), 16))
    result = evaluator.compute("test", 3)  # the class head's 3 classes do not fit: unused
    assert result.logits is None
    assert set(result.metrics) == BASE_KEYS
    expected = retrieval_metrics(outputs["embeddings"], outputs["labels"])
    assert {k: result.metrics[k] for k in expected} == expected


def test_shot_accuracy_only_with_train_class_counts():
    # 4 classes; train counts 150 | 50, 50 | 5: many {0}, medium {1, 2}, few {3}.
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2, 0, 1])
    logits = torch.nn.functional.one_hot(preds, 4).float()
    emb = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    evaluator = Evaluator(ks=(1,), many_shot=100, few_shot=20)

    def run() -> dict[str, float]:
        evaluator.update(logits, emb, emb, labels, torch.arange(10))
        return evaluator.compute("val", 4).metrics

    without = run()
    assert not {"many_acc", "medium_acc", "few_acc"} & set(without)
    evaluator.train_class_counts = [150, 50, 50, 5]
    got = run()
    # By hand: class 0 3/4 right; classes 1 and 2: 1/2 and 2/2; class 3: 0/2.
    assert got["many_acc"] == pytest.approx(0.75)
    assert got["medium_acc"] == pytest.approx(0.75)
    assert got["few_acc"] == 0.0
    assert SHOT_RECALL_KEYS <= set(got)
    got_acc = {k: v for k, v in got.items() if k not in SHOT_RECALL_KEYS}
    assert got_acc == pytest.approx({**without, **shot_accuracy(preds, labels, [150, 50, 50, 5])})
    # The bounds are the constructor's: with few_shot=60 classes 1 and 2 are few-shot too.
    evaluator = Evaluator(ks=(1,), many_shot=100, few_shot=60)
    evaluator.train_class_counts = [150, 50, 50, 5]
    got = run()
    assert "medium_acc" not in got and got["few_acc"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_update_rejects_mismatched_batch_sizes_and_reset_forgets():
    evaluator = Evaluator()
    with pytest.raises(ValueError, match="batch sizes differ"):
        evaluator.update(
            torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(3, 2), torch.zeros(4), torch.zeros(4)
        )
    assert evaluator.empty
    evaluator.update(
        torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4), torch.zeros(4)
    )
    evaluator.reset()
    assert evaluator.empty


def test_update_detaches():
    emb = torch.randn(6, 3, requires_grad=True)
    logits = torch.randn(6, 2, requires_grad=True)
    evaluator = Evaluator(ks=(1,))
    evaluator.update(logits, emb * 2, emb, torch.tensor([0, 0, 0, 1, 1, 1]), torch.arange(6))
    result = evaluator.compute("val", 2)
    assert not result.embeddings.requires_grad and not result.logits.requires_grad


def test_notify_evaluation_end_calls_only_callbacks_that_define_the_hook():
    calls = []

    class Drawer:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_evaluation_end(self, trainer, pl_module, result) -> None:
            calls.append((self.name, trainer, pl_module, result))

    class Other:
        def on_validation_end(self, trainer, pl_module) -> None:  # not this hook
            calls.append(("other",))

    result = EvaluationResult(
        "val", {}, torch.zeros(2, 1), torch.zeros(2, 1), None, torch.zeros(2), torch.arange(2)
    )
    trainer, module = SimpleNamespace(), object()
    trainer.callbacks = [Drawer("a"), Other(), Drawer("b")]
    notify_evaluation_end(trainer, module, result)
    assert calls == [("a", trainer, module, result), ("b", trainer, module, result)]
