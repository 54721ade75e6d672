"""``evaluate``: rebuilt from the checkpoint alone, on its own data (overridable key by key) or
on another dataset (embedding only when the classes differ)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import compose_config
from test_train import check_metrics, flowers_overrides

from ranking_reg.evaluate import evaluate
from ranking_reg.lightning import RankingRegModule
from ranking_reg.train import run
from ranking_reg.utils.errors import ConfigError

RETRIEVAL_KEYS = {"test/recall@1", "test/nmi", "test/map@r"}


@pytest.fixture
def digits_run(digits_checkpoint):
    """The tiny digits run of the session (conftest): (run dir, its metrics)."""
    return digits_checkpoint


def _evaluate(ckpt, out, *overrides: str, test_batches: float = 1) -> dict[str, float]:
    # by default the test split as the runs of debug=fast evaluate it (its first batch)
    args = [f"ckpt_path={ckpt}", "logger=none", "trainer.enable_progress_bar=false"]
    args += [f"trainer.limit_test_batches={test_batches}", *overrides]
    return evaluate(compose_config(args, output_dir=out, name="eval"), list(overrides))


@pytest.mark.slow
def test_evaluate_reproduces_the_test_metrics_of_its_run(digits_run, tmp_path):
    run_dir, trained = digits_run
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    metrics = _evaluate(best, tmp_path)
    check_metrics(metrics)
    for key, value in metrics.items():
        assert value == pytest.approx(trained[key], abs=1e-6), key
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)


@pytest.mark.slow
def test_a_checkpoint_from_pretrained_weights_is_rebuilt_without_them(digits_run, tmp_path):
    """The stored config asks for pretrained weights from a file that no longer exists (and
    small_cnn has none at all): evaluate and load_from_checkpoint must not touch them."""
    run_dir, trained = digits_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    backbone = checkpoint["hyper_parameters"]["run_config"]["model"]["net"]["backbone"]
    backbone.update(pretrained=True, weights_file=str(tmp_path / "gone" / "imagenet.pth"))
    edited = tmp_path / "pretrained.ckpt"
    torch.save(checkpoint, edited)

    module = RankingRegModule.load_from_checkpoint(edited)
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, checkpoint["state_dict"][name]), name
    metrics = _evaluate(edited, tmp_path / "eval")
    assert metrics["test/recall@1"] == pytest.approx(trained["test/recall@1"], abs=1e-6)


@pytest.mark.slow
def test_data_overrides_apply_to_the_checkpoints_own_dataset(tmp_path):
    """A flowers run evaluated after its data moved: data.root=NEW evaluates the flowers test
    split there, with the same metrics (not the digits, the eval config's fallback)."""
    from dataset_fixtures import make_flowers102

    old, new = tmp_path / "old", tmp_path / "new"
    make_flowers102(str(old), n_classes=4, per_class=6)
    out = tmp_path / "run"
    overrides = [*flowers_overrides(old), "logger=none", "trainer.limit_test_batches=1.0"]
    trained = run(compose_config(overrides, output_dir=out))
    shutil.move(str(old), str(new))
    ckpt = next((out / "checkpoints").glob("best-*.ckpt"))
    moved = [f"data.root={new}", "data.eval_batch_size=3"]  # the whole split, in other batches
    metrics = _evaluate(ckpt, tmp_path / "eval", *moved, test_batches=1.0)
    for key in RETRIEVAL_KEYS | {"test/acc"}:
        assert metrics[key] == pytest.approx(trained[key], abs=1e-6), key
    with pytest.raises(ConfigError, match="data.img_size=64: this checkpoint was trained at 32"):
        _evaluate(ckpt, tmp_path / "eval2", f"data.root={new}", "data.img_size=64")


@pytest.mark.slow
def test_another_dataset_gets_retrieval_metrics_and_no_class_head_scores(digits_run, tmp_path):
    from dataset_fixtures import make_flowers102

    make_flowers102(str(tmp_path / "data"), n_classes=4, per_class=6)
    run_dir, _ = digits_run
    metrics = _evaluate(
        run_dir / "checkpoints" / "last.ckpt",
        tmp_path / "eval",
        "data=flowers102",
        f"data.root={tmp_path / 'data'}",
        "data.num_workers=0",
    )
    assert RETRIEVAL_KEYS <= set(metrics)
    assert not [k for k in metrics if k.endswith("acc")]  # a 10-digit head on 4 flowers
    for key in RETRIEVAL_KEYS:
        assert 0.0 <= metrics[key] <= 1.0


def test_a_file_that_is_not_one_of_our_checkpoints_is_a_config_error(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not be read as a checkpoint"):
        _evaluate(garbage, tmp_path)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match="not a ranking_reg checkpoint"):
        _evaluate(foreign, tmp_path)
    with pytest.raises(ConfigError, match="is not a file"):
        _evaluate(tmp_path / "missing.ckpt", tmp_path)
