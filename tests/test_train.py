"""End to end: fit + test on the embedded digits, metrics.json, CLI, multirun, resume, DDP."""

from __future__ import annotations

import json
import math
import sys

import pytest
import yaml
from conftest import TINY, compose_config
from lightning.pytorch.callbacks import Callback

from ranking_reg.train import run
from ranking_reg.utils.errors import ConfigError, DataError

METRIC_KEYS = {
    "test/acc",
    "test/macro_acc",
    "test/recall@1",
    "test/recall@2",
    "test/recall@4",
    "test/recall@8",
    "test/recall@16",
    "test/nmi",
    "test/map@r",
}
# kNN classification against the training split (metrics.knn, on by default)
KNN_KEYS = {"test/knn_acc@1", "test/knn_acc@10", "test/fused_acc", "test/fused_alpha"}
# for runs whose point is elsewhere: the test's extra pass over train and val costs ~0.6 s
NO_KNN = "metrics.knn.gallery=none"


def check_metrics(metrics: dict[str, float], knn: bool = True) -> None:
    assert METRIC_KEYS | (KNN_KEYS if knn else set()) <= set(metrics)
    for key, value in metrics.items():
        if key.endswith(("_dist", "_ratio")):  # squared distances and their ratio: >= 0
            assert math.isfinite(value) and value >= 0.0, key
            continue
        assert math.isfinite(value) and 0.0 <= value <= 1.0, key
    recalls = [metrics[f"test/recall@{k}"] for k in (1, 2, 4, 8, 16)]
    assert recalls == sorted(recalls)  # Recall@K can only grow with K


@pytest.mark.slow
def test_fit_and_test_write_metrics_and_checkpoints(tmp_path):
    overrides = TINY + ["trainer.limit_train_batches=20", "optimizer.lr=0.05"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    metrics = run(cfg)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    check_metrics(on_disk)
    # 20 steps of a two-head small CNN already separate the digits far above chance (10 %)
    assert on_disk["test/acc"] > 0.3 and on_disk["test/recall@1"] > 0.6
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temporaries


def _in_process_cli(monkeypatch, argv: list[str]) -> None:
    """``python -m ranking_reg.train ARGV`` in this process (Hydra's own argv parsing)."""
    from hydra.core.global_hydra import GlobalHydra

    from ranking_reg import train

    monkeypatch.setattr(sys, "argv", ["ranking_reg.train", *argv])
    try:
        train.main()
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.slow
def test_cli_multirun_of_two_lambdas_prints_tables_and_writes_two_run_folders(
    tmp_path, monkeypatch, capsys, recwarn
):
    """``python -m ranking_reg.train -m ...`` as a user runs it, through Hydra's own command line
    (in this process; tests/test_config_errors.py runs the module in a subprocess). The
    pictures of a real run are checked by tests/test_plots.py."""
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.limit_train_batches=2", "regularizer.weight=0.5,2.0", NO_KNN]
    _in_process_cli(monkeypatch, [*args, f"hydra.sweep.dir={sweep}"])
    printed = capsys.readouterr().out
    assert printed.count("test/recall@1") >= 2 and "test/acc" in printed
    weights = {}
    for job in ("0", "1"):
        saved = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        assert saved["data"]["name"] == "digits"
        weights[job] = saved["regularizer"]["weight"]
        check_metrics(json.loads((sweep / job / "metrics.json").read_text()), knn=False)
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweep / job / "csv" / "metrics.csv").is_file()
    assert weights == {"0": 0.5, "1": 2.0}
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]  # no CUDA: nothing pinned


class StopAfterFirstEpoch(Callback):
    """Simulates a job killed right after epoch 0's checkpoint."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.mark.slow
def test_resume_from_last_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    common = [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=3", "seed=7", NO_KNN]
    straight = run(compose_config(common, output_dir=tmp_path / "straight"))

    first = tmp_path / "interrupted"
    run(compose_config(common + ["test=false"], output_dir=first), [StopAfterFirstEpoch()])
    last = first / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # the same command again with ckpt_path=auto continues from the folder's last.ckpt, keeping
    # the best-checkpoint bookkeeping (README: Running on a cluster)
    resumed = run(compose_config(common + ["ckpt_path=auto"], output_dir=first))

    assert set(resumed) == set(straight)
    for key in straight:
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_tests(tmp_path):
    """Two gloo processes (forked from this one: no second import of torch and Lightning):
    P x K batches per rank, the global-batch center term, gathered evaluation, rank-0 files."""
    overrides = [*TINY, "trainer.limit_train_batches=2", "trainer.devices=2", "logger=none"]
    overrides += ["regularizer=center"]  # every method trains end to end in one of these tests
    metrics = run(compose_config([*overrides, "trainer.strategy=ddp_fork"], output_dir=tmp_path))
    check_metrics(metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # each rank's shard of the 450 test digits (225) is its first batch: the gathered split
    # holds every digit once, so the accuracy is a whole number of 450ths
    assert metrics["test/acc"] * 450 == pytest.approx(round(metrics["test/acc"] * 450), abs=1e-3)
    # one process scoring the same weights on the same samples (each rank's first batch: the
    # first 2 x 256 training images as the kNN gallery, all test and validation digits) agrees
    from test_evaluate import _evaluate

    best = next((tmp_path / "checkpoints").glob("best-*.ckpt"))
    single = _evaluate(best, tmp_path / "eval", test_batches=2)
    knn = [k for k in metrics if "knn" in k or "fused" in k]
    assert len(knn) == 7
    for key in knn + ["test/acc", "test/recall@1"]:
        assert single[key] == pytest.approx(metrics[key], abs=1e-6), key


def flowers_overrides(root) -> list[str]:
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
    ]


@pytest.mark.slow
def test_train_runs_on_a_flowers102_tree_in_the_published_layout(tmp_path):
    from dataset_fixtures import make_flowers102

    make_flowers102(str(tmp_path / "data"), n_classes=4, per_class=6)
    out = tmp_path / "run"
    metrics = run(compose_config(flowers_overrides(tmp_path / "data"), output_dir=out))
    check_metrics(metrics)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)


def test_a_corrupt_image_is_a_data_error_naming_the_file(tmp_path):
    from dataset_fixtures import make_flowers102

    make_flowers102(str(tmp_path / "data"), n_classes=4, per_class=6)
    broken = tmp_path / "data" / "flowers-102" / "jpg" / "image_00003.jpg"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated JPEG
    out = tmp_path / "run"
    with pytest.raises(DataError) as caught:
        run(compose_config(flowers_overrides(tmp_path / "data"), output_dir=out))
    message = " ".join(str(caught.value).split())
    assert "image_00003.jpg" in message and "data.skip_corrupt=true" in message
    assert not (out / "metrics.json").exists()


def test_missing_dataset_folder_names_the_prepare_command(tmp_path):
    cfg = compose_config([*TINY, "data=dogs", f"data.root={tmp_path}"], output_dir=tmp_path / "r")
    with pytest.raises(DataError) as caught:
        run(cfg)
    message = " ".join(str(caught.value).split())
    assert "python -m ranking_reg.data.prepare dogs" in message
    assert "stanford_dogs" in message


@pytest.mark.slow
def test_wandb_logger_runs_offline_without_an_account(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "run"
    overrides = [*TINY, "trainer.limit_train_batches=2", "logger=wandb"]
    _in_process_cli(monkeypatch, [*overrides, f"hydra.run.dir={out}"])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))  # the metrics, uploaded later by `wandb sync`
    from test_wandb import run_summary

    logged = run_summary(str(runs[0]))["history"]  # every test metric, the kNN ones too
    assert {"test/acc", "test/knn_acc@1", "test/fused_acc", "test/fused_alpha"} <= set(logged)
    assert (out / "metrics.json").is_file()


@pytest.mark.slow
def test_no_validation_split_trains_on_all_of_train_and_tests_the_final_weights(tmp_path):
    """data.val_fraction=0 (the authors' protocol): no validation, no best checkpoint; the test
    scores the final weights, i.e. exactly what evaluating last.ckpt gives."""
    from test_evaluate import _evaluate

    overrides = [*TINY, "data.val_fraction=0", "logger=none", "miner=hard"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    metrics = run(cfg)
    check_metrics(metrics)
    assert not [k for k in metrics if k.startswith("val/")]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    final = _evaluate(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "eval")
    for key, value in final.items():
        assert value == pytest.approx(metrics[key], abs=1e-6), key
    with pytest.raises(ConfigError, match="test_ckpt=best needs a validation split"):
        run(compose_config([*TINY, "data.val_fraction=0", "test_ckpt=best"], tmp_path / "b"))


@pytest.mark.slow
def test_selection_on_the_test_split_is_labelled_as_such(tmp_path):
    overrides = [*TINY, "selection=best_test", "logger=none", "regularizer=none"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    metrics = run(cfg)
    assert metrics["test/selected_on_test"] == 1.0
    # the test split chose the checkpoint: its best validation accuracy is the test accuracy
    assert metrics["val/acc_best"] == pytest.approx(metrics["test/acc"], abs=1e-6)
