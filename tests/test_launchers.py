"""The launcher and search configs compose with Hydra and run a multirun of a trivial task."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import run_app_sweep
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "ranking_reg" / "conf"

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


@pytest.fixture
def primary(tmp_path: Path) -> Path:
    """A minimal primary config that searches the project's conf/ (independent of train.yaml)."""
    (tmp_path / "app.yaml").write_text(
        f"hydra:\n  searchpath:\n    - file://{CONF}\n"
        "seed: 0\nregularizer: {weight: 1.0, margin: 0.2}\n"
    )
    return tmp_path


def hydra_cfg(config_dir: Path, name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=True)


def test_joblib_launcher_composes(primary: Path) -> None:
    cfg = hydra_cfg(primary, "app", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"])
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "JoblibLauncher"
    assert launcher.n_jobs == 3 and launcher.prefer == "processes"


def test_submitit_slurm_launcher_composes(primary: Path) -> None:
    overrides = [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=90",
    ]
    cfg = hydra_cfg(primary, "app", overrides)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert get_class(launcher["_target_"]).__name__ == "SlurmLauncher"
    assert cfg.hydra.launcher.tasks_per_node == 4  # one task per GPU (follows gpus_per_node)
    assert (launcher["nodes"], launcher["partition"], launcher["timeout_min"]) == (2, "gpu", 90)


@pytest.mark.skipif(not (CONF / "train.yaml").exists(), reason="project conf/train.yaml absent")
def test_configs_compose_with_train_yaml() -> None:
    cfg = hydra_cfg(CONF, "train", ["hparams_search=lambda_optuna", "hydra/launcher=joblib"])
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.monitor == "val/acc"
    assert cfg.hydra.launcher.n_jobs == 2
    assert "regularizer.weight" in cfg.hydra.sweeper.params and "weight" in cfg.regularizer


APP = {"seed": 0, "regularizer": {"weight": 1.0, "margin": 0.2}}


def trivial_task(cfg) -> float:
    """The task of the sweeps below: records where and with what it ran, returns -(w - 1)²."""
    out = HydraConfig.get().runtime.output_dir
    record = {
        "seed": cfg.seed,
        "pid": os.getpid(),
        "w": cfg.regularizer.weight,
        "m": cfg.regularizer.margin,
        "launcher": HydraConfig.get().launcher._target_,
    }
    with open(os.path.join(out, "job.json"), "w") as f:
        json.dump(record, f)
    return -((cfg.regularizer.weight - 1.0) ** 2)


def run_sweep(monkeypatch, tmp_path: Path, overrides: list[str], task=trivial_task) -> None:
    """``python app.py -m OVERRIDES`` with the app config :data:`APP` (conftest.run_app_sweep)."""
    run_app_sweep(monkeypatch, tmp_path, APP, overrides, task)


@pytest.mark.slow  # starts two loky worker processes
def test_joblib_multirun_runs_two_jobs_in_parallel_processes(tmp_path: Path, monkeypatch) -> None:
    from joblib.externals.loky import reusable_executor

    sweep = tmp_path / "sweep"
    try:
        run_sweep(
            monkeypatch, tmp_path, ["hydra/launcher=joblib", "seed=3,4", f"hydra.sweep.dir={sweep}"]
        )
    finally:
        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:  # its idle workers would otherwise outlive the test
            executor.shutdown(wait=True)
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/job.json"))]
    assert sorted(j["seed"] for j in jobs) == [3, 4]
    assert all(j["launcher"].endswith("JoblibLauncher") for j in jobs)
    pids = {j["pid"] for j in jobs}
    assert len(pids) == 2 and os.getpid() not in pids  # two loky worker processes (n_jobs: 2)


@pytest.mark.slow  # importing optuna takes ~3 s: one test, so it is imported once
def test_lambda_optuna_search_space_and_a_three_trial_search(
    primary: Path, tmp_path: Path, monkeypatch
) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = hydra_cfg(primary, "app", ["+hparams_search=lambda_optuna"])
    sweeper = cfg.hydra.sweeper
    assert get_class(sweeper._target_).__name__ == "OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.n_trials >= 10
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == {"regularizer.weight", "regularizer.margin"}
    parser = OverridesParser.create()
    dists = {
        key: create_optuna_distribution_from_override(parser.parse_override(f"{key}={value}"))
        for key, value in sweeper.params.items()
    }
    weight, margin = dists["regularizer.weight"], dists["regularizer.margin"]
    assert (weight.low, weight.high) == (0.1, 3.0) and type(
        weight
    ).__name__ == "LogUniformDistribution"
    assert (margin.low, margin.high) == (0.05, 1.0)
    assert weight.low <= 0.2 and weight.high >= 2.0  # brackets the paper's lambda range

    # A real search over that space: the sweeper maximises what the task returns.
    sweep = tmp_path / "sweep"
    overrides = ["+hparams_search=lambda_optuna", "hydra.sweeper.n_trials=3"]
    run_sweep(monkeypatch, tmp_path, [*overrides, f"hydra.sweep.dir={sweep}"])
    trials = [json.loads(p.read_text()) for p in sweep.glob("*/job.json")]
    assert len(trials) == 3 and len({t["w"] for t in trials}) == 3
    assert all(0.1 <= t["w"] <= 3.0 and 0.05 <= t["m"] <= 1.0 for t in trials)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = {-((t["w"] - 1.0) ** 2): t for t in trials}
    assert best["best_value"] == pytest.approx(max(scores))
    assert best["best_params"]["regularizer.weight"] == pytest.approx(scores[max(scores)]["w"])


@pytest.mark.slow  # an Optuna study of four trivial trials
def test_a_failed_trial_is_recorded_and_the_study_goes_on(tmp_path: Path, monkeypatch) -> None:
    """Trial 1 fails: it leaves failure.json (its error and the end of its log), Optuna records
    it as failed, the other trials run, and the sweep ends with the failure listed, status 1."""
    from ranking_reg.utils.errors import ConfigError
    from ranking_reg.utils.sweep_failures import tolerate_job_failures

    @tolerate_job_failures
    def task(cfg) -> float:
        value = trivial_task(cfg)
        if HydraConfig.get().job.num == 1:
            raise ConfigError("regularizer.weight: this trial's value is refused on purpose")
        (Path(HydraConfig.get().runtime.output_dir) / "metrics.json").write_text("{}")
        return value

    sweep = tmp_path / "sweep"
    overrides = ["+hparams_search=lambda_optuna", "hydra.sweeper.n_trials=4"]
    overrides += [
        "+hydra.callbacks.failures._target_="
        + "ranking_reg.utils.sweep_failures.SweepFailureSummary"
    ]
    with pytest.raises(SystemExit) as ended:
        run_sweep(monkeypatch, tmp_path, [*overrides, f"hydra.sweep.dir={sweep}"], task)
    assert ended.value.code == 1
    assert len(list(sweep.glob("*/job.json"))) == 4  # every trial ran
    failure = json.loads((sweep / "1" / "failure.json").read_text())
    assert failure["user_error"] and "refused on purpose" in failure["message"]
    assert failure["error_type"] == "ConfigError" and failure["traceback"] is None
    assert not any((sweep / str(n) / "failure.json").exists() for n in (0, 2, 3))
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = [
        -((json.loads((sweep / str(n) / "job.json").read_text())["w"] - 1) ** 2) for n in (0, 2, 3)
    ]
    assert best["best_value"] == pytest.approx(max(scores))  # the failed trial is not a result
    listed = json.loads((sweep / "failures.json").read_text())
    assert [(f["job"], f["status"]) for f in listed] == [(str(sweep / "1"), "failed")]
