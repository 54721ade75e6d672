"""The comparison with softmax in the tables: bootstrap interval, pairing by seed, marking,
per-class wins/losses, rendering, and the callback that writes per_class.json."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from ranking_reg.lightning.results_callback import TestResultsWriter
from ranking_reg.metrics import EvaluationResult
from ranking_reg.reporting.build import build_spec_table
from ranking_reg.reporting.render import render_csv, render_latex, render_markdown
from ranking_reg.reporting.runs import find_runs
from ranking_reg.reporting.statistics import (
    N_RESAMPLES,
    Paired,
    bootstrap_interval,
    class_wins,
    paired_difference,
)
from ranking_reg.reporting.summary import Summary
from ranking_reg.reporting.table_spec import load_spec


# -- the bootstrap interval -----------------------------------------------------------------------
def test_identical_differences_give_a_degenerate_interval():
    assert bootstrap_interval([0.02, 0.02, 0.02]) == pytest.approx((0.02, 0.02))
    assert bootstrap_interval([-0.5]) == (-0.5, -0.5)
    with pytest.raises(ValueError):
        bootstrap_interval([])


@pytest.mark.parametrize("diffs", [[0.01, 0.03], [0.04, -0.01, 0.02]])
def test_two_or_three_pairs_give_min_and_max(diffs):
    """With n <= 3, n copies of the extreme pair have probability n**-n > 2.5 %."""
    assert bootstrap_interval(diffs) == pytest.approx((min(diffs), max(diffs)))


def _exact_percentiles(diffs, level=0.95):
    """Independent: every one of the n**n equally likely resamples, inverted-CDF quantiles."""
    n = len(diffs)
    means = sorted(
        math.fsum(diffs[i] for i in t) / n for t in itertools.product(range(n), repeat=n)
    )
    tail = (1 - level) / 2
    return means[math.ceil(tail * len(means)) - 1], means[math.ceil((1 - tail) * len(means)) - 1]


def _loop_bootstrap(diffs, resamples=N_RESAMPLES, seed=0, level=0.95):
    """Independent: the textbook loop, Python's own generator."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(resamples))
    tail = (1 - level) / 2
    return means[math.ceil(tail * resamples) - 1], means[math.ceil((1 - tail) * resamples) - 1]


def test_interval_of_four_pairs_matches_independent_implementations():
    # Exact CDF of the resample mean jumps 0.0195 -> 0.0352 at the lower end and 0.9648 ->
    # 0.9805 at the upper one: 10,000 resamples land on the exact quantiles (> 3 std away).
    diffs = [-0.012, 0.02, 0.031, 0.07]
    exact = _exact_percentiles(diffs)
    assert exact == pytest.approx((-0.00125, 0.0575))
    assert bootstrap_interval(diffs) == pytest.approx(exact)
    assert _loop_bootstrap(diffs) == pytest.approx(exact)
    assert bootstrap_interval(diffs) == bootstrap_interval(diffs)  # fixed seed: reproducible


# -- pairing and marking --------------------------------------------------------------------------
def test_paired_difference_matches_seeds_by_number():
    method = Summary([0.90, 0.80, 0.70], 3, seeds=[0, 1, 2])
    baseline = Summary([0.60, 0.85], 3, seeds=[2, 0])  # seed 1 missing, other order
    p = paired_difference(method, baseline)
    assert p.n == 2 and p.mean == pytest.approx((0.05 + 0.10) / 2)
    assert (p.low, p.high) == pytest.approx((0.05, 0.10)) and p.excludes_zero
    single = paired_difference(Summary([0.9], 1, seeds=[0]), baseline)
    assert single == Paired(pytest.approx(0.05), 1) and not single.excludes_zero
    assert paired_difference(Summary([0.9], 1, seeds=[7]), baseline) is None
    assert paired_difference(None, baseline) is None


@pytest.mark.parametrize(
    ("low", "high", "marked"),
    [(0.01, 0.02, True), (-0.02, -0.01, True), (-0.01, 0.02, False), (0.0, 0.02, False),
     (-8.7e-19, 0.05, False), (8.7e-19, 0.05, False), (None, None, False)],
)  # fmt: skip
def test_marked_only_when_the_interval_excludes_zero(low, high, marked):
    assert Paired(0.01, 2, low, high).excludes_zero is marked


def test_class_wins_summed_over_common_seeds():
    method = Summary([0.5, 0.5], 2, seeds=[0, 1],
                     per_class={0: [1.0, 0.5, 0.2, None], 1: [0.9, 0.9, 0.9, 0.1]})  # fmt: skip
    baseline = Summary([0.5], 2, seeds=[0], per_class={0: [0.5, 0.5, 0.3, 0.4]})
    assert class_wins(method, baseline) == (c := class_wins(method, baseline))
    assert (c.wins, c.losses, c.ties, c.n_seeds) == (1, 1, 1, 1)  # class 3: no test items
    assert class_wins(method, Summary([], 2)) is None


# -- tables from run dirs -------------------------------------------------------------------------
SPEC = {
    "name": "lt",
    "title": "Long-tailed toy",
    "layout": {"rows": "method", "columns": "metric"},
    "metrics": [{"key": "test/acc", "label": "micro"}, {"key": "test/macro_acc", "label": "macro"}],
    "factors": {
        "method": {
            "softmax": {"label": "Softmax", "overrides": ["regularizer=none"]},
            "semihard": {"label": "Semi-hard", "overrides": ["regularizer=triplet"]},
            "center": {"label": "Center", "overrides": ["regularizer=center"]},
        }
    },
    "smoke": {"seeds": [0, 1, 2], "overrides": [], "factors": {"dataset": {"lt": ["data=lt"]}}},
    "paper": {"seeds": [0], "overrides": [], "factors": {"dataset": {"lt": ["data=lt"]}}},
    "published": {"source": "none", "values": []},
}
# acc per (method, seed); semi-hard beats softmax on every seed, center does not.
ACC = {
    "none": [0.80, 0.82, 0.78],
    "triplet": [0.83, 0.86, 0.80],
    "center": [0.81, 0.80, 0.79],
}
PER_CLASS = {  # per seed: 3 classes, the last without test items in seed 0
    "none": [[0.5, 0.5, None], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]],
    "triplet": [[0.6, 0.4, None], [0.6, 0.6, 0.5], [0.6, 0.6, 0.6]],
    "center": [[0.5, 0.4, None], [0.4, 0.4, 0.5], [0.5, 0.5, 0.5]],
}


def make_run(root: Path, reg: str, seed: int, long_tailed: bool = True) -> None:
    run = root / f"{reg}_{seed}"
    (run / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "data": {"imbalance_ratio": 10 if long_tailed else None}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = [f"regularizer={reg}", "data=lt", f"seed={seed}"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    acc = ACC[reg][seed]
    (run / "metrics.json").write_text(json.dumps({"test/acc": acc, "test/macro_acc": acc - 0.1}))
    per_class = {"classes": ["a", "b", "c"], "accuracy": PER_CLASS[reg][seed]}
    (run / "per_class.json").write_text(json.dumps(per_class))


@pytest.fixture
def table(tmp_path: Path):
    spec_file = tmp_path / "lt.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    for reg, seed in itertools.product(ACC, range(3)):
        make_run(tmp_path / "runs", reg, seed)
    return build_spec_table(load_spec(spec_file, "smoke"), find_runs([tmp_path / "runs"]))


def test_spec_table_pairs_each_method_with_softmax(table):
    (panel,) = table.panels
    assert panel.baseline == 0 and panel.row_labels[0] == "Softmax"
    assert panel.entries[(0, 0)].paired is None  # the baseline itself
    semihard = panel.entries[(1, 0)].paired
    assert semihard.n == 3 and semihard.mean == pytest.approx(0.03)
    assert (semihard.low, semihard.high) == pytest.approx((0.02, 0.04)) and semihard.excludes_zero
    center = panel.entries[(2, 0)].paired
    assert (center.low, center.high) == pytest.approx((-0.02, 0.01))
    assert not center.excludes_zero
    # per class, summed over seeds: semi-hard 1+2+3 wins, 1 loss, 1 tie; center 0 / 1+2 / 1+1+3
    wins = {i: (c.wins, c.losses, c.ties, c.n_seeds) for (i, _), c in panel.class_counts.items()}
    assert wins == {1: (6, 1, 1, 3), 2: (0, 3, 5, 3)}
    assert "paired difference to Softmax over seeds" in table.statistics[0]
    assert "10,000 resamples, seed 0" in table.statistics[0]
    assert "summed over seeds" in table.statistics[1]


def test_markdown_csv_and_latex_show_the_comparison(table):
    md = render_markdown([table])
    assert "|  | micro | paper | Δ | vs Softmax | macro | paper | Δ | vs Softmax |" in md
    assert "| Semi-hard | 83.00 ± 3.00 |  |  | +3.00 [+2.00, +4.00]* |" in md
    assert "| Center | 80.00 ± 1.00 |  |  | +0.00 [-2.00, +1.00] |" in md  # not marked
    assert "| Semi-hard | 6 / 1 / 1 (3 seeds) |" in md and "| Center | 0 / 3 / 5 (3 seeds) |" in md
    assert "* = interval excludes 0; fixed before the runs" in md

    rows = list(csv.DictReader(io.StringIO(render_csv([table]))))
    by = {(r["row"], r["metric"]): r for r in rows}
    semi = by[("Semi-hard", "test/acc")]
    assert float(semi["vs_baseline"]) == pytest.approx(3.0)
    assert (float(semi["vs_baseline_low"]), float(semi["vs_baseline_high"])) == (2.0, 4.0)
    assert semi["n_pairs"] == "3" and semi["excludes_0"] == "1"
    assert by[("Center", "test/acc")]["excludes_0"] == "0"
    assert by[("Softmax", "test/acc")]["vs_baseline"] == ""
    counts = by[("Semi-hard", "per_class_wins")]
    assert (counts["class_wins"], counts["class_losses"], counts["class_ties"]) == ("6", "1", "1")
    assert len(rows) == 3 * 2 + 2

    tex = render_latex([table])
    assert "\\multicolumn{4}{c}{micro}" in tex and "\\cmidrule(lr){6-9}" in tex
    assert "+3.00 [+2.00, +4.00]* & 73.00" in tex
    assert "Semi-hard & 6 / 1 / 1 (3 seeds)" in tex and "* = interval excludes 0" in tex


def test_no_baseline_row_or_balanced_runs_leave_the_tables_as_before(tmp_path):
    spec = dict(SPEC, factors={"method": {"semihard": ["regularizer=triplet"]}})
    spec_file = tmp_path / "x.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    for reg, seed in itertools.product(ACC, range(3)):
        make_run(tmp_path / "runs", reg, seed, long_tailed=False)
    runs = find_runs([tmp_path / "runs"])
    table = build_spec_table(load_spec(spec_file, "smoke"), runs)
    assert table.statistics == [] and table.panels[0].baseline is None
    assert "vs " not in render_markdown([table])
    spec_file.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    table = build_spec_table(load_spec(spec_file, "smoke"), runs)  # not long-tailed: no counts
    assert len(table.statistics) == 1 and not table.panels[0].class_counts


# -- the callback ---------------------------------------------------------------------------------
def test_results_writer_writes_per_class_json_on_test_only(tmp_path):
    preds = np.array([0, 0, 0, 1, 2, 2, 3, 2])  # class 3's items: 1 right, 1 wrong; class 4: none
    result = EvaluationResult(
        stage="test", metrics={}, embeddings=torch.zeros(8, 2), pooled=torch.zeros(8, 2),
        logits=torch.tensor(np.eye(5)[preds], dtype=torch.float32),
        labels=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), positions=torch.arange(8),
    )  # fmt: skip
    dataset = SimpleNamespace(classes=["a", "b", "c", "d", "e"])
    datamodule = SimpleNamespace(
        eval_dataset=lambda stage: dataset, train_class_counts=[9, 6, 6, 3, 1]
    )
    trainer = SimpleNamespace(is_global_zero=True, datamodule=datamodule)
    writer = TestResultsWriter(str(tmp_path))
    writer.on_evaluation_end(trainer, None, EvaluationResult(**{**vars(result), "stage": "val"}))
    writer.on_evaluation_end(
        SimpleNamespace(is_global_zero=False, datamodule=datamodule), None, result
    )
    assert not (tmp_path / "per_class.json").exists()
    writer.on_evaluation_end(trainer, None, result)
    data = json.loads((tmp_path / "per_class.json").read_text())
    assert data["classes"] == ["a", "b", "c", "d", "e"]
    assert data["accuracy"] == [1.0, 0.5, 1.0, 0.5, None]
    assert data["train_counts"] == [9, 6, 6, 3, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_class.json"]  # no temp file left

    bare = SimpleNamespace(is_global_zero=True, datamodule=None)  # no names, no counts: ids
    writer.on_evaluation_end(bare, None, result)
    data = json.loads((tmp_path / "per_class.json").read_text())
    assert data["classes"] == [0, 1, 2, 3, 4] and data["train_counts"] is None
    (tmp_path / "per_class.json").unlink()
    writer.on_evaluation_end(trainer, None, EvaluationResult(**{**vars(result), "logits": None}))
    assert not (tmp_path / "per_class.json").exists()


@pytest.mark.parametrize("option", ["default", "checkpoints"])
def test_results_writer_is_in_the_callback_configs(option, tmp_path):
    from conftest import compose_config
    from hydra.utils import instantiate

    cfg = compose_config([f"callbacks={option}"], output_dir=tmp_path)
    writer = instantiate(cfg.callbacks.results)
    assert isinstance(writer, TestResultsWriter) and writer.output_dir == str(tmp_path)
