"""End to end: fit + test on the embedded digits, metrics.json, CLI, multirun, resume, evaluate."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import TINY, compose_config, run_cli
from lightning.pytorch.callbacks import Callback

from ranking_reg.train import run

METRIC_KEYS = {
    "test/acc",
    "test/macro_acc",
    "test/recall@1",
    "test/recall@2",
    "test/recall@4",
    "test/recall@8",
    "test/nmi",
    "test/map@r",
}


def _check_metrics(metrics: dict[str, float]) -> None:
    assert METRIC_KEYS <= set(metrics)
    for key, value in metrics.items():
        assert math.isfinite(value) and 0.0 <= value <= 1.0, key
    recalls = [metrics[f"test/recall@{k}"] for k in (1, 2, 4, 8)]
    assert recalls == sorted(recalls)  # Recall@K can only grow with K


@pytest.mark.slow
def test_fit_and_test_write_metrics_and_checkpoints(tmp_path):
    overrides = TINY + ["trainer.limit_train_batches=20", "optimizer.lr=0.05"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    metrics = run(cfg)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    _check_metrics(on_disk)
    # 20 steps of a two-head small CNN already separate the digits far above chance (10 %)
    assert on_disk["test/acc"] > 0.3 and on_disk["test/recall@1"] > 0.6
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temporaries


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", ["none", "center", "triplet miner=hard"])
def test_every_method_trains(regularizer, tmp_path):
    overrides = TINY + [f"regularizer={regularizer.split()[0]}"] + regularizer.split()[1:]
    metrics = run(compose_config(overrides, output_dir=tmp_path))
    _check_metrics(metrics)


@pytest.mark.slow
def test_cli_run_prints_the_table_and_writes_the_run_folder(tmp_path):
    result = run_cli("ranking_reg.train", *TINY, "callbacks=default", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "retrieval_grid",
        "per_class_accuracy",
        "confusion_matrix",
        "embedding_projection",
    ):
        assert (tmp_path / "plots" / f"test_{name}_latest.png").is_file()
    assert "test/recall@1" in result.stdout and "test/acc" in result.stdout
    saved = yaml.safe_load((tmp_path / ".hydra" / "config.yaml").read_text())
    assert saved["data"]["name"] == "digits" and saved["regularizer"]["weight"] == 1.0
    _check_metrics(json.loads((tmp_path / "metrics.json").read_text()))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "csv" / "metrics.csv").is_file()

    evaluation = run_cli(
        "ranking_reg.evaluate",
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        "trainer.enable_progress_bar=false",
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    _check_metrics(evaluated)


@pytest.mark.slow
def test_multirun_of_two_lambdas_makes_two_runs(tmp_path):
    result = run_cli(
        "ranking_reg.train",
        "-m",
        *TINY,
        "regularizer.weight=0.5,2.0",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = {}
    for job in ("0", "1"):
        saved = yaml.safe_load((tmp_path / job / ".hydra" / "config.yaml").read_text())
        weights[job] = saved["regularizer"]["weight"]
        _check_metrics(json.loads((tmp_path / job / "metrics.json").read_text()))
    assert weights == {"0": 0.5, "1": 2.0}


class StopAfterFirstEpoch(Callback):
    """Simulates a job killed right after epoch 0's checkpoint."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.mark.slow
def test_resume_from_last_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    common = [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=6", "seed=7"]
    straight = run(compose_config(common, output_dir=tmp_path / "straight"))

    first = tmp_path / "interrupted"
    run(compose_config(common + ["test=false"], output_dir=first), [StopAfterFirstEpoch()])
    last = first / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # resuming into the same run folder keeps the best-checkpoint bookkeeping (README: Resuming)
    resumed = run(compose_config(common + [f"ckpt_path={last}"], output_dir=first))

    assert set(resumed) == set(straight)
    for key in straight:
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_tests(tmp_path):
    result = run_cli(
        "ranking_reg.train",
        *TINY,
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    _check_metrics(metrics)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def _flowers_overrides(root) -> list[str]:
    # 4 classes x 2 train images: P x K = 2 x 2, half of train held out for validation
    return [
        *TINY,
        "data=flowers102",
        f"data.root={root}",
        "data.img_size=32",
        "data.batch_size=4",
        "data.samples_per_class=2",
        "data.val_fraction=0.5",
        "data.num_workers=0",
        "data.pin_memory=false",
    ]


@pytest.mark.slow
def test_train_runs_on_a_flowers102_tree_in_the_published_layout(tmp_path):
    from dataset_fixtures import make_flowers102

    make_flowers102(str(tmp_path / "data"), n_classes=4, per_class=6)
    out = tmp_path / "run"
    result = run_cli(
        "ranking_reg.train", *_flowers_overrides(tmp_path / "data"), f"hydra.run.dir={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    _check_metrics(metrics)
    # the 16 test images of the fixture (6 per class, 2 of them in train) are all evaluated
    saved = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    assert saved["data"]["name"] == "flowers102"


@pytest.mark.slow
def test_a_corrupt_image_ends_in_one_paragraph_naming_the_file(tmp_path):
    from dataset_fixtures import make_flowers102

    make_flowers102(str(tmp_path / "data"), n_classes=4, per_class=6)
    broken = tmp_path / "data" / "flowers-102" / "jpg" / "image_00003.jpg"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated JPEG
    out = tmp_path / "run"
    overrides = [*_flowers_overrides(tmp_path / "data"), "data.val_fraction=0.5"]
    result = run_cli("ranking_reg.train", *overrides, f"hydra.run.dir={out}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "ranking_reg data error:" in message and "image_00003.jpg" in message
    assert "data.skip_corrupt=true" in message
    assert not (out / "metrics.json").exists()


@pytest.mark.slow
def test_missing_dataset_folder_names_the_prepare_command(tmp_path):
    result = run_cli(
        "ranking_reg.train",
        *TINY,
        "data=dogs",
        f"data.root={tmp_path}",
        f"hydra.run.dir={tmp_path}/r",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "python -m ranking_reg.data.prepare dogs" in message
    assert "stanford_dogs" in message


@pytest.mark.slow
def test_wandb_logger_runs_offline_without_an_account(tmp_path):
    env_free = run_cli("ranking_reg.train", *TINY, "logger=wandb", f"hydra.run.dir={tmp_path}")
    assert env_free.returncode == 0, env_free.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))  # the metrics, uploaded later by `wandb sync`
    assert (tmp_path / "metrics.json").is_file()
