"""TestResultsWriter: the test split's per-class accuracy on disk, for the tables.

Called by the module through :func:`~ranking_reg.metrics.notify_evaluation_end` after every
evaluation; only the test stage on global rank 0 writes ``<output_dir>/per_class.json``
(whole or not at all, :func:`~ranking_reg.utils.io.write_json_atomic`)::

    {"classes": [...names, or class ids...],
     "accuracy": [...test accuracy of each class, null for a class without test items...],
     "train_counts": [...training images per class...] or null,
     "stage": "test"}

``ranking_reg.reporting`` reads it beside ``metrics.json`` and counts, per method, the classes
improved and worsened against the softmax run of the same seed (long-tailed tables). Without a
class head for the evaluated classes (``result.logits`` is None) nothing is written.
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning.pytorch as pl

from ranking_reg.metrics import EvaluationResult, per_class_accuracy
from ranking_reg.utils.io import write_json_atomic

FILE_NAME = "per_class.json"


def _attribute(obj: Any, name: str) -> Any:
    """``obj.name``, or None when absent or not available yet (an unset-up data module)."""
    try:
        return getattr(obj, name, None)
    except (AssertionError, AttributeError, RuntimeError):
        return None


def _test_classes(datamodule: Any) -> list[str] | None:
    dataset = None
    if datamodule is not None and hasattr(datamodule, "eval_dataset"):
        try:
            dataset = datamodule.eval_dataset("test")
        except (AssertionError, KeyError, RuntimeError):
            dataset = None
    if dataset is None:
        dataset = _attribute(datamodule, "test_dataset")
    classes = _attribute(dataset, "classes")
    return None if classes is None else [str(c) for c in classes]


class TestResultsWriter(pl.Callback):
    """Writes ``<output_dir>/per_class.json`` after the test evaluation (rank 0 only)."""

    __test__ = False  # not a pytest test class

    def __init__(self, output_dir: str) -> None:
        super().__init__()
        self.output_dir = str(output_dir)
        self.path = os.path.join(self.output_dir, FILE_NAME)

    def on_evaluation_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: EvaluationResult
    ) -> None:
        if result.stage != "test" or not trainer.is_global_zero or result.logits is None:
            return
        n_classes = int(result.logits.shape[1])
        accuracy = per_class_accuracy(result.logits, result.labels, n_classes).double().tolist()
        datamodule = getattr(trainer, "datamodule", None)
        classes = _test_classes(datamodule)
        if classes is None or len(classes) != n_classes:
            classes = list(range(n_classes))
        counts = _attribute(datamodule, "train_class_counts")
        payload = {
            "stage": "test",
            "classes": classes,
            "accuracy": [None if math.isnan(a) else a for a in accuracy],
            "train_counts": None if counts is None else [int(c) for c in counts],
        }
        write_json_atomic(self.path, payload)
