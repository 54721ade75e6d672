"""reproduce: plans shared cells once, runs missing seeds via Hydra multirun, resumes, reports."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ranking_reg.reporting import reproduce as R
from ranking_reg.reporting.table_spec import load_spec

# A stand-in for ranking_reg.train: a real Hydra app with the same config groups and outputs
# (.hydra/*, metrics.json), whose accuracy is a known function of the config and seed. It logs
# every job it runs and fails the jobs listed in FAKE_FAIL as <regularizer.weight>:<seed>.
FAKE_TRAIN = textwrap.dedent(
    """
    import json, os, hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base="1.3", config_path="conf", config_name="train")
    def main(cfg):
        with open(os.environ["FAKE_LOG"], "a") as log:
            log.write(json.dumps({"seed": cfg.seed, "reg": cfg.regularizer.name,
                                  "w": cfg.regularizer.weight}) + "\\n")
        if f"{cfg.regularizer.weight}:{cfg.seed}" in os.environ.get("FAKE_FAIL", "").split(","):
            raise RuntimeError("simulated crash")
        acc = 0.5 + 0.1 * cfg.regularizer.weight + 0.01 * cfg.seed
        out = HydraConfig.get().runtime.output_dir
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump({"test/acc": acc, "test/macro_acc": acc - 0.05}, f)
        return acc

    if __name__ == "__main__":
        main()
    """
)
CONF = {
    "train.yaml": "defaults:\n  - _self_\n  - regularizer: triplet\n  - miner: semihard\n"
    "  - data: digits\nseed: 0\ntrainer: {max_epochs: 2, accelerator: cpu, devices: 1}\n",
    "regularizer/triplet.yaml": "name: triplet\nweight: 1.0\n",
    "regularizer/none.yaml": "name: none\nweight: 0.0\n",
    "miner/semihard.yaml": "name: semihard\n",
    "data/digits.yaml": "name: digits\n",
}
METHODS = {
    "softmax": ["regularizer=none"],
    "semihard": ["regularizer=triplet", "miner=semihard"],
}


def spec(name: str, rows: str, factors: dict, metrics: list[str]) -> dict:
    return {
        "name": name,
        "title": name,
        "layout": {"rows": rows, "columns": "metric"},
        "metrics": [{"key": m} for m in metrics],
        "smoke": {"seeds": [0, 1], "overrides": ["trainer.max_epochs=1"], "factors": factors},
        "paper": {"seeds": [0], "factors": factors},
        "published": {"source": "none", "values": []},
    }


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    for rel, text in CONF.items():
        (tmp_path / "conf" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / rel).write_text(text)
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    specs = tmp_path / "specs"
    specs.mkdir()
    # two tables sharing the softmax and semi-hard cells: run once, read twice
    (specs / "cls.yaml").write_text(
        yaml.safe_dump(spec("cls", "method", {"method": METHODS}, ["test/acc"]))
    )
    lam = {"0": ["regularizer=none"], "1.0": METHODS["semihard"],
           "0.5": [*METHODS["semihard"], "regularizer.weight=0.5"]}  # fmt: skip
    (specs / "lam.yaml").write_text(
        yaml.safe_dump(spec("lam", "lambda", {"lambda": lam}, ["test/acc", "test/macro_acc"]))
    )
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    return tmp_path


def calls(project: Path) -> list[dict]:
    log = project / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run(project: Path, *extra: str) -> int:
    return R.main(
        ["--scale", "smoke", "--out", str(project / "out"), "--specs", str(project / "specs"),
         "--train-cmd", f"{sys.executable} {project / 'fake_train.py'}", *extra]
    )  # fmt: skip


def test_plan_merges_cells_shared_between_tables(project: Path) -> None:
    specs = [load_spec(p, "smoke") for p in R.spec_files(project / "specs", None)]
    jobs = R.plan(specs, project / "out")
    assert len(jobs) == 3  # softmax, semi-hard (shared by both tables), lambda 0.5
    shared = [j for j in jobs if j.tables == ["cls", "lam"]]
    assert len(shared) == 2 and all(j.seeds == [0, 1] for j in jobs)
    cmd = R.command(jobs[0], [1], ["train"], ["data.root=/d"])
    assert cmd[:2] == ["train", "-m"] and "seed=1" in cmd and "data.root=/d" in cmd
    assert "hydra.sweep.subdir=seed${seed}" in cmd
    assert f"hydra.sweep.dir='{jobs[0].sweep_dir}'" in cmd


@pytest.mark.slow  # four Hydra subprocesses (~3 s)
def test_runs_missing_then_resumes_only_failed(project: Path, monkeypatch, capsys) -> None:
    out = project / "out"
    monkeypatch.setenv("FAKE_FAIL", "0.5:1")
    assert run(project) == 1  # incomplete: seed 1 of lambda = 0.5 crashed
    first = calls(project)
    assert sorted((c["reg"], c["w"], c["seed"]) for c in first) == sorted(
        (reg, w, s)
        for reg, w in [("none", 0.0), ("triplet", 1.0), ("triplet", 0.5)]
        for s in (0, 1)
    )  # 3 configurations x 2 seeds, the shared ones once
    log = capsys.readouterr()
    assert "6 to run" in log.out and "[3/3]" in log.out and "FAILED" in log.out
    assert "simulated crash" in log.out  # tail of the failing run's log
    md = (out / "tables.md").read_text()
    assert "lam: 0.5: seed 1: no metrics.json" in md and "(n=1/2)" in md

    monkeypatch.delenv("FAKE_FAIL")
    assert run(project) == 0
    second = calls(project)[len(first) :]
    assert second == [{"seed": 1, "reg": "triplet", "w": 0.5}]  # only the failed run again
    assert "5 finished, 1 to run" in capsys.readouterr().out

    rows = list(csv_rows(out / "tables.csv"))
    acc = {(r["table"], r["row"], r["metric"]): r for r in rows}
    semihard = acc[("cls", "semihard", "test/acc")]
    # acc = 0.5 + 0.1 * weight + 0.01 * seed: 60 and 61 %, mean 60.5, sample std √0.5
    assert float(semihard["mean"]) == pytest.approx(60.5)
    assert float(semihard["std"]) == pytest.approx(0.7071, abs=1e-4)
    # the lambda table reads the very same runs for lambda = 1.0
    assert acc[("lam", "1.0", "test/acc")]["mean"] == semihard["mean"]
    assert float(acc[("lam", "0.5", "test/macro_acc")]["mean"]) == pytest.approx(100 * 0.505)
    assert (out / "runs").is_dir() and len(list((out / "runs").glob("*/seed*/metrics.json"))) == 6

    assert run(project) == 0  # everything finished: nothing runs
    assert len(calls(project)) == len(first) + len(second)
    captured = capsys.readouterr()
    assert "0 to run" in captured.out
    assert "6 run(s) have no provenance.json" in captured.err  # the stand-in records none

    # the two seeds of every cell trained on different data: each cell is named, status unchanged
    for seed, fingerprint in ((0, "a" * 64), (1, "b" * 64)):
        for run_dir in (out / "runs").glob(f"*/seed{seed}"):
            record = {"data_fingerprint": fingerprint, "git_commit": "c0ffee", "git_dirty": False}
            (run_dir / "provenance.json").write_text(json.dumps(record))
    assert run(project) == 0
    warnings = [
        line
        for line in capsys.readouterr().err.splitlines()
        if "differ in data_fingerprint" in line
    ]
    assert len(warnings) == 3 and all(
        line.startswith("reproduce: warning: cell ") for line in warnings
    )


def test_dry_run_and_unknown_table(project: Path, capsys) -> None:
    assert run(project, "--dry-run", "--tables", "lam", "--launcher", "joblib", "data.root=/d") == 0
    out = capsys.readouterr().out
    assert "3 configurations, 6 runs; 0 finished, 6 to run" in out
    assert "regularizer.weight=0.5" in out and "seed=0,1" in out and not calls(project)
    assert "data.root=/d hydra/launcher=joblib seed=0,1" in out
    assert not (project / "out" / "tables.md").exists()
    with pytest.raises(SystemExit) as exit_info:
        run(project, "--tables", "nope")
    assert exit_info.value.code == 2
    assert "--tables nope" in capsys.readouterr().err


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as handle:
        yield from csv.DictReader(handle)


def test_the_paper_plan_follows_the_authors_protocol_per_backbone():
    """What `reproduce --scale paper --dry-run` prints for a configuration: the composed
    protocol (the experiment presets are the one source of truth)."""
    inception = R.protocol(["experiment=flowers102_inception_v4", "regularizer=none"])
    assert "backbone=inception_v4 steps=80000" in inception and "img=299" in inception
    resnet = R.protocol(["experiment=cars_resnet50", "miner=hard", "regularizer.margin=soft"])
    for part in ("steps=40000", "img=224", "batch=32 K=4", "sampling=uniform", "margin=soft"):
        assert part in resnet, part
    assert "val_fraction=0 " in resnet and "test_ckpt=last" in resnet
