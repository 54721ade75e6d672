"""Aggregation of run dirs into tables: statistics, matching, missing runs, rendering, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from ranking_reg import reporting
from ranking_reg.integrations.wandb_tables import log_wandb
from ranking_reg.reporting.build import build_generic_table, build_spec_table
from ranking_reg.reporting.render import _tex, render_csv, render_latex, render_markdown
from ranking_reg.reporting.runs import find_runs
from ranking_reg.reporting.summary import summarize
from ranking_reg.reporting.table_spec import SCALES, load_spec
from ranking_reg.tables import main
from ranking_reg.utils.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SPECS_DIR = REPO / "ranking_reg" / "reporting" / "specs"
SPECS = sorted(SPECS_DIR.glob("*.yaml"))


def make_run(root: Path, name: str, overrides: list[str], seed: int, metrics: dict | None, **cfg):
    """A run dir as Hydra + train.py leave it: .hydra/{config,overrides}.yaml [+ metrics.json]."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "trainer": {"max_epochs": 3, "accelerator": "cpu", "devices": 1}}
    for dotted, value in cfg.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides + [f"seed={seed}"]))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


SPEC = {
    "name": "toy",
    "title": "Toy table",
    "layout": {"rows": "method", "columns": "dataset"},
    "metrics": [{"key": "test/acc", "label": "top-1"}],
    "factors": {
        "method": {
            "softmax": {"label": "Softmax", "overrides": ["regularizer=none"]},
            "semihard": ["regularizer=triplet", "miner=semihard"],
        }
    },
    "smoke": {
        "seeds": [0, 1],
        "overrides": ["trainer.max_epochs=3"],
        "factors": {"dataset": {"digits": ["data=digits"]}},
    },
    "paper": {
        "seeds": [0, 1, 2],
        "overrides": [],
        "factors": {"dataset": {"cars": ["data=cars"], "dogs": ["data=dogs"]}},
    },
    "published": {
        "source": "toy source",
        "values": [
            {"method": "softmax", "dataset": "cars", "value": 85.85},
            {"method": "semihard", "dataset": "cars", "value": 88.22},
        ],
    },
}


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return path


def test_summary_is_mean_and_sample_std() -> None:
    even = summarize([0.80, 0.85, 0.90])
    assert even.mean == pytest.approx(0.85) and even.std == pytest.approx(0.05)
    # mean 3.62 / 4; squared deviations 0.005², 0.035², 0.045², 0.015² sum to 0.0035
    s = summarize([0.91, 0.87, 0.95, 0.89])
    assert s.mean == pytest.approx(0.905)
    assert s.std == pytest.approx(math.sqrt(0.0035 / 3))  # sample std (ddof = 1)
    assert s.std != pytest.approx(math.sqrt(0.0035 / 4))  # not the population std
    assert s.n == 4 and s.expected == 4
    one = summarize([0.5], expected=3)
    assert one.mean == 0.5 and one.std is None and one.n == 1 and one.expected == 3
    assert summarize([]).mean is None


def test_spec_table_statistics_paper_diff_and_missing(tmp_path: Path, spec_file: Path) -> None:
    runs_dir = tmp_path / "runs"
    accs = {0: 0.80, 1: 0.84, 2: 0.90}
    # softmax on cars: three finished seeds
    for seed, acc in accs.items():
        make_run(runs_dir, f"sm{seed}", ["regularizer=none", "data=cars"], seed, {"test/acc": acc})
    # semi-hard on cars: seed 0 finished, seed 1 crashed (no metrics.json), seed 2 never ran;
    # a lambda=0.5 run (extra override) and an unlisted seed must not leak into the cell.
    sh = ["data=cars", "miner=semihard", "regularizer=triplet"]
    make_run(runs_dir, "sh0", sh, 0, {"test/acc": 0.70})
    make_run(runs_dir, "sh1", sh, 1, None)
    make_run(runs_dir, "shw", sh + ["regularizer.weight=0.5"], 2, {"test/acc": 0.99})
    make_run(runs_dir, "sh7", sh, 7, {"test/acc": 0.10})

    spec = load_spec(spec_file, "paper")
    table = build_spec_table(spec, find_runs([runs_dir]))
    (panel,) = table.panels
    assert panel.row_labels == ["Softmax", "semihard"]
    assert panel.column_labels == ["cars", "dogs"]

    softmax_cars = panel.entries[(0, 0)]
    mean, std = softmax_cars.ours()
    # 80, 84, 90: mean 254/3; squared deviations sum to 152/3, over n - 1 = 2: 76/3
    assert mean == pytest.approx(84.6667, abs=1e-4)
    assert std == pytest.approx(5.0332, abs=1e-4)
    assert softmax_cars.paper == 85.85
    assert softmax_cars.diff == pytest.approx(-1.1833, abs=1e-4)

    semihard_cars = panel.entries[(1, 0)]
    assert semihard_cars.summary.values == [0.70]  # only the finished, listed seed
    assert semihard_cars.summary.n == 1 and semihard_cars.summary.expected == 3
    assert semihard_cars.ours() == (pytest.approx(70.0), None)
    assert semihard_cars.diff == pytest.approx(70.0 - 88.22)

    dogs = panel.entries[(0, 1)]
    assert dogs.summary.values == [] and dogs.ours() == (None, None)
    assert dogs.paper is None and dogs.diff is None  # not transcribed: never invented

    text = "\n".join(table.missing)
    assert "seed 1: no metrics.json" in text and "seed 2: no run dir" in text
    assert "Softmax / dogs" in text
    md = render_markdown([table])
    assert "| Softmax | 84.67 ± 5.03 | 85.85 | -1.18 |  | missing |  |  |  |" in md
    assert "70.00 (n=1/3)" in md
    assert "seeds 0, 1, 2; backbone config default; 4/12 runs finished" in md
    assert "accelerator=cpu" in table.ran


def test_ignored_overrides_do_not_split_cells(tmp_path: Path, spec_file: Path) -> None:
    runs_dir = tmp_path / "runs"
    base = ["regularizer=none", "data=digits", "trainer.max_epochs=3"]
    make_run(runs_dir, "a", base + ["data.root=/x", "logger=wandb"], 0, {"test/acc": 0.5})
    make_run(runs_dir, "b", base + ["trainer.devices=2"], 1, {"test/acc": 0.7})
    spec = load_spec(spec_file, "smoke")
    without = build_spec_table(spec, find_runs([runs_dir]))
    assert without.panels[0].entries[(0, 0)].summary.values == [0.5]
    with_ignore = build_spec_table(spec, find_runs([runs_dir]), ["trainer.devices=2"])
    assert sorted(with_ignore.panels[0].entries[(0, 0)].summary.values) == [0.5, 0.7]
    # smoke scale has no published values
    assert with_ignore.panels[0].entries[(0, 0)].paper is None
    assert "no published values at smoke scale" in with_ignore.paper_note


def test_generic_table_groups_by_config_less_seed(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for seed, acc in enumerate([0.6, 0.8]):
        make_run(root, f"w1_{seed}", [], seed, {"test/acc": acc}, regularizer__weight=1.0)
    make_run(root, "w2_0", [], 0, {"test/acc": 0.9, "test/nmi": 0.5}, regularizer__weight=2.0)
    make_run(root, "w2_1", [], 1, None, regularizer__weight=2.0)
    table = build_generic_table(find_runs([root]), ["test/acc", "test/nmi"])
    (panel,) = table.panels
    rows = dict(zip(panel.row_labels, range(len(panel.row_labels)), strict=True))
    assert set(rows) == {"regularizer.weight=1.0", "regularizer.weight=2.0"}
    w1 = panel.entries[(rows["regularizer.weight=1.0"], 0)]
    assert w1.ours() == (pytest.approx(70.0), pytest.approx(14.1421, abs=1e-4))  # 100·√0.02
    w2 = panel.entries[(rows["regularizer.weight=2.0"], 1)]
    assert w2.summary.values == [0.5] and w2.summary.expected == 2
    assert len(table.missing) == 1 and "w2_1" in table.missing[0]
    assert "4 run dirs (3 finished)" in table.ran
    (single,) = find_runs([root / "w1_1"])  # a --runs DIR may also be one run
    assert single.seed == 1 and single.metrics == {"test/acc": 0.8}


def test_csv_and_latex_carry_the_same_numbers(tmp_path: Path, spec_file: Path) -> None:
    runs_dir = tmp_path / "runs"
    for seed, acc in enumerate([0.8, 0.9, 0.85]):
        make_run(runs_dir, f"r{seed}", ["regularizer=none", "data=cars"], seed, {"test/acc": acc})
    table = build_spec_table(load_spec(spec_file, "paper"), find_runs([runs_dir]))
    rows = list(csv.DictReader(io.StringIO(render_csv([table]))))
    assert len(rows) == 4  # 2 methods x 2 datasets
    first = rows[0]
    assert (first["row"], first["column"], first["metric"]) == ("Softmax", "cars", "test/acc")
    assert float(first["mean"]) == pytest.approx(85.0)
    assert float(first["std"]) == pytest.approx(5.0)
    assert float(first["paper"]) == 85.85 and float(first["diff"]) == pytest.approx(-0.85)
    assert first["n"] == "3" and first["n_expected"] == "3"
    assert rows[1]["mean"] == "" and "no run dir" in rows[1]["missing"]
    tex = render_latex([table])
    assert "\\toprule" in tex and "85.00 $\\pm$ 5.00 & 85.85 & -0.85" in tex
    assert _tex("λ_1 & 5% {x} ~ \\") == (
        r"$\lambda$\_1 \& 5\% \{x\} \textasciitilde{} \textbackslash{}"
    )


def test_cli_writes_three_files_atomically(tmp_path: Path, spec_file: Path, capsys) -> None:
    runs_dir = tmp_path / "runs"
    make_run(runs_dir, "r0", ["regularizer=none", "data=digits", "trainer.max_epochs=3"], 0,
             {"test/acc": 0.9})  # fmt: skip
    out = tmp_path / "out"
    assert main(["--runs", str(runs_dir), "--out", str(out), "--spec", str(spec_file)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tables.csv", "tables.md", "tables.tex"]
    assert "90.00 (n=1/2)" in (out / "tables.md").read_text()
    # generic mode over the same dirs
    assert main(["--runs", str(runs_dir), "--out", str(out)]) == 0
    assert "Runs grouped by configuration" in (out / "tables.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs", str(tmp_path / "nope"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--runs" in capsys.readouterr().err


def test_user_errors_name_the_file(tmp_path: Path, spec_file: Path) -> None:
    bad = dict(SPEC, layout={"rows": "nope", "columns": "dataset"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="bad.yaml: layout.rows"):
        load_spec(path, "smoke")
    typo = dict(SPEC, published={"values": [{"method": "softmaxx", "dataset": "cars", "value": 1}]})
    path.write_text(yaml.safe_dump(typo))
    with pytest.raises(ConfigError, match="method=softmaxx"):
        load_spec(path, "paper")
    run = make_run(tmp_path / "runs", "r", [], 0, None)
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics.json is not valid JSON"):
        find_runs([tmp_path / "runs"])


def test_project_specs_load_and_share_runs() -> None:
    names = {p.stem for p in SPECS}
    assert names == {
        "classification",
        "imbalanced",
        "retrieval",
        "lambda_ablation",
        "zoo",
        "zoo_longtail",
    }
    for path in SPECS:
        for scale in SCALES:  # the paper section of every spec composes too
            spec = load_spec(path, scale)
            assert spec.cells() and len(spec.seeds) >= (2 if scale == "smoke" else 1)
    by_name = {p.stem: p for p in SPECS}
    for scale in SCALES:
        cls = {c.key for c in load_spec(by_name["classification"], scale).cells()}
        ret = {c.key for c in load_spec(by_name["retrieval"], scale).cells()}
        assert ret == cls  # retrieval reads the classification runs
    lam = load_spec(by_name["lambda_ablation"], "smoke")
    cls = {c.key for c in load_spec(by_name["classification"], "smoke").cells()}
    one = next(c for c in lam.cells() if c.level("lambda").key == "1.0")
    zero = next(c for c in lam.cells() if c.level("lambda").key == "0")
    assert one.key in cls and zero.key in cls  # smoke: λ = 1 and λ = 0 rows are shared
    for scale in SCALES:  # the long-tailed zoo reads the zoo's long-tailed runs
        zoo = {c.key for c in load_spec(by_name["zoo"], scale).cells()}
        longtail = {c.key for c in load_spec(by_name["zoo_longtail"], scale).cells()}
        assert longtail <= zoo if scale == "smoke" else not longtail & zoo
    methods = [lv.key for lv in load_spec(by_name["zoo"], "smoke").factors["method"]]
    assert len(methods) == 10 and {"triplet_center", "proxy_anchor", "xbm_triplet"} <= set(methods)


def test_paper_cells_select_the_experiment_presets() -> None:
    conf = REPO / "ranking_reg" / "conf" / "experiment"
    for path in SPECS:
        for cell in load_spec(path, "paper").cells():
            (preset,) = [o for o in cell.overrides if o.startswith("experiment=")]
            assert (conf / f"{preset.split('=')[1]}.yaml").is_file(), preset
            assert not any(
                o.startswith(("trainer.max_steps=4", "backbone=")) for o in cell.overrides
            )
    lam = load_spec(SPECS_DIR / "lambda_ablation.yaml", "paper")
    assert [lv.key for lv in lam.factors["lambda"]] == [
        "0",
        "0.1",
        "0.2",
        "0.5",
        "1",
        "2",
        "5",
        "10",
    ]
    assert [m.key for m in lam.metrics] == ["val/acc_best"]
    assert "trainer.max_steps=2000" in lam.common


def _published(name: str) -> dict:
    spec = load_spec(SPECS_DIR / f"{name}.yaml", "paper")
    got = {}
    for cell in spec.cells():
        for metric in spec.metrics:
            value = spec.published_value(cell, metric)
            if value is not None:
                levels = tuple(lv.key for lv in cell.levels)
                got[levels + (metric.key,)] = value
    return got


def test_classification_holds_table_2() -> None:
    spec = load_spec(SPECS_DIR / "classification.yaml", "paper")
    assert len(spec.published) == 60  # 3 backbones x 4 methods x 5 datasets, each once
    keys = [(r["backbone"], r["method"], r["dataset"]) for r in spec.published]
    assert len(set(keys)) == 60
    got = _published("classification")
    assert len(got) == 60
    assert {k[0] for k in got} == {"softmax", "center", "semihard", "hard"}  # not hard_soft
    assert got[("softmax", "resnet50", "cars", "test/acc")] == 85.85
    assert got[("center", "resnet50", "nabirds", "test/acc")] == 65.5
    assert got[("hard", "inception_v4", "flowers102", "test/acc")] == 90.66
    assert got[("semihard", "densenet161", "nabirds", "test/acc")] == 79.57
    assert "65.5}" in (SPECS_DIR / "classification.yaml").read_text()  # as printed


def test_retrieval_holds_every_table_5_row() -> None:
    spec = load_spec(SPECS_DIR / "retrieval.yaml", "paper")
    assert [m.key for m in spec.metrics] == [
        "test/nmi", "test/recall@1", "test/recall@4", "test/recall@8", "test/recall@16",
        "test/knn_acc@1",
    ]  # fmt: skip
    rows = {(r["backbone"], r["dataset"], r["method"]) for r in spec.published}
    assert len(rows) == 45 and len(spec.published) == 225  # 15 blocks x 3 losses, 5 numbers each
    got = _published("retrieval")
    assert len(got) == 225
    assert got[("center", "resnet50", "cars", "test/nmi")] == 54.9  # printed 0.549
    assert got[("hard", "densenet161", "nabirds", "test/recall@16")] == 94.70
    assert got[("semihard", "inception_v4", "dogs", "test/recall@1")] == 68.48
    assert len(spec.notes) >= 4 and len(spec.reference[0]["rows"]) == 9  # Table 6


def test_reference_only_tables_are_in_the_note() -> None:
    spec = load_spec(SPECS_DIR / "imbalanced.yaml", "paper")
    assert spec.published == [] and "not public" in spec.source
    assert [len(t["rows"]) for t in spec.reference] == [4, 12]  # Tables 3 and 4 (HDD)
    table = build_spec_table(spec, [])
    assert "84.93" in table.paper_note and "Merge" in table.paper_note
    lam = load_spec(SPECS_DIR / "lambda_ablation.yaml", "paper")
    assert lam.published == [] and "arXiv 1901.08616" in lam.source


def test_wandb_offline_table(tmp_path: Path, spec_file: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    # no WANDB_MODE and no API key (no variable, no netrc): the run must go offline by itself
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    runs_dir = tmp_path / "runs"
    make_run(runs_dir, "r0", ["regularizer=none", "data=cars"], 0, {"test/acc": 0.9})
    table = build_spec_table(load_spec(spec_file, "paper"), find_runs([runs_dir]))
    run_dir = Path(log_wandb([table], name="test"))
    assert "offline-run-" in str(run_dir)
    (logged,) = list(run_dir.rglob("*.table.json"))
    data = json.loads(logged.read_text())
    assert data["columns"] == [
        "table", "panel", "row", "column", "metric", "mean", "std", "n", "n_expected",
        "paper", "diff", "missing",
    ]  # fmt: skip
    assert data["data"][0][:6] == ["toy", "", "Softmax", "cars", "test/acc", 90.0]


def test_package_reexports_the_table_api() -> None:
    assert sorted(reporting.__all__) == [
        "build_tables", "find_runs", "load_spec", "render_markdown", "write_tables",
    ]  # fmt: skip
    assert reporting.find_runs is find_runs and reporting.load_spec is load_spec
    assert reporting.render_markdown is render_markdown


def test_a_level_can_read_its_runs_metrics_under_another_name(tmp_path: Path) -> None:
    """The retrieval table's softmax row reads test/pooled_* (the GAP features a softmax run
    retrieves with), never the untrained embedding head's test/recall@1."""
    spec = {
        "name": "ret",
        "title": "Retrieval",
        "layout": {"rows": "method", "columns": "metric"},
        "metrics": [{"key": "test/recall@1", "label": "R@1"}],
        "factors": {
            "method": {
                "softmax": {"overrides": ["regularizer=none"], "metric_prefix": "pooled_"},
                "semihard": {"overrides": ["regularizer=triplet"]},
            }
        },
        "smoke": {"seeds": [0], "overrides": [], "factors": {}},
        "paper": {"seeds": [0], "overrides": [], "factors": {}},
        "published": {"source": "none", "values": []},
    }
    path = tmp_path / "ret.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs"
    both = {"test/recall@1": 0.5, "test/pooled_recall@1": 0.9}
    make_run(runs, "a", ["regularizer=none"], 0, both)
    make_run(runs, "b", ["regularizer=triplet"], 0, both)
    table = build_spec_table(load_spec(path, "smoke"), find_runs([runs]))
    (panel,) = table.panels
    means = {panel.row_labels[r]: e.ours()[0] for (r, _), e in panel.entries.items()}
    assert means == {"softmax": pytest.approx(90.0), "semihard": pytest.approx(50.0)}

    # a classifier metric is never renamed: the softmax row's accuracy is its class head's
    spec["metrics"].append({"key": "test/acc", "label": "acc", "classifier": True})
    path.write_text(yaml.safe_dump(spec))
    for name in ("a", "b"):
        metrics_file = runs / name / "metrics.json"
        metrics_file.write_text(json.dumps({**both, "test/acc": 0.7, "test/pooled_acc": 0.1}))
    table = build_spec_table(load_spec(path, "smoke"), find_runs([runs]))
    (panel,) = table.panels
    accs = {panel.row_labels[r]: e.ours()[0] for (r, j), e in panel.entries.items() if j == 1}
    assert accs == {"softmax": pytest.approx(70.0), "semihard": pytest.approx(70.0)}


def test_signed_numbers_never_print_minus_zero() -> None:
    from ranking_reg.reporting.render import _signed

    assert [_signed(v) for v in (-0.004, 0.0, -0.006, 1.234)] == [
        "+0.00",
        "+0.00",
        "-0.01",
        "+1.23",
    ]
