"""Runs that survive the cluster: stable folders for ckpt_path=auto, the run-folder lock, the
non-finite guard and safe checkpoint reading."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from conftest import TINY, compose_config
from lightning.pytorch.callbacks import Callback

from ranking_reg.lightning.guards import NonFiniteLossError
from ranking_reg.train import run
from ranking_reg.utils.errors import ConfigError, format_user_error
from ranking_reg.utils.run_folder import (
    RunFolderLock,
    auto_folder_name,
    is_main_process,
    run_folder_name,
)


def test_auto_folders_are_named_after_the_command(monkeypatch):
    stamp = "2026-11-29_10-00-00_000001"
    monkeypatch.setattr(sys, "argv", ["train.py", "seed=1", "data=digits"])
    assert run_folder_name(stamp) == stamp  # no ckpt_path=auto: the start time
    monkeypatch.setattr(sys, "argv", ["train.py", "seed=1", "ckpt_path=auto", "data=digits"])
    name = run_folder_name(stamp)
    assert name == auto_folder_name(["data=digits", "ckpt_path=auto", "seed=1"])  # any order
    assert name.startswith("auto-") and len(name) == len("auto-") + 12
    monkeypatch.setattr(sys, "argv", ["train.py", "seed=2", "ckpt_path=auto", "data=digits"])
    assert run_folder_name(stamp) != name  # another command, another folder


def test_a_second_run_in_a_locked_folder_is_refused(tmp_path):
    with RunFolderLock(tmp_path):
        assert "pid" in (tmp_path / ".lock").read_text()
        with pytest.raises(ConfigError, match="in use by a running job") as refused:
            run(compose_config([*TINY, "logger=none"], output_dir=tmp_path))
        assert str(tmp_path) in str(refused.value)
    with RunFolderLock(tmp_path):  # released when the holder ends
        pass


def test_only_the_main_process_locks(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child of the same run shares the folder
    assert not is_main_process()
    with RunFolderLock(tmp_path), RunFolderLock(tmp_path):
        pass
    assert not (tmp_path / ".lock").exists()


class PoisonAtEpoch(Callback):
    """Makes one weight NaN at the first step of ``epoch``: the loss of that step is NaN."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    overrides = [*TINY, "logger=none", "trainer.max_epochs=3", "trainer.limit_train_batches=2"]
    with pytest.raises(NonFiniteLossError) as stopped:
        run(compose_config(overrides, output_dir=tmp_path), [PoisonAtEpoch(1)])
    message = " ".join(format_user_error(stopped.value).split())
    assert "training loss became nan at step 3 (epoch 1)" in message
    assert "learning rate" in message and "optimizer.lr" in message
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # epoch 1 never saved
    assert all(
        torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point()
    )
    assert not (tmp_path / "metrics.json").exists()


def test_a_diverging_learning_rate_ends_with_the_non_finite_paragraph(tmp_path):
    with pytest.raises(NonFiniteLossError, match="became"):
        run(compose_config([*TINY, "logger=none", "optimizer.lr=1e6"], output_dir=tmp_path))


@pytest.fixture
def last_ckpt(digits_checkpoint, tmp_path):
    path = tmp_path / "given.ckpt"
    shutil.copy(digits_checkpoint[0] / "checkpoints" / "last.ckpt", path)
    return path


def _resume(path, out, *overrides: str):
    return run(
        compose_config([*TINY, "logger=none", f"ckpt_path={path}", *overrides], output_dir=out)
    )


def test_garbage_and_truncated_checkpoints_are_one_paragraph(last_ckpt, tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(ConfigError, match="could not be read as a checkpoint") as error:
        _resume(garbage, tmp_path / "a")
    assert str(garbage) in str(error.value)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last_ckpt.read_bytes()[: last_ckpt.stat().st_size // 2])
    with pytest.raises(ConfigError, match="truncated"):
        _resume(truncated, tmp_path / "b")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ConfigError, match="not a ranking_reg checkpoint"):
        _resume(foreign, tmp_path / "c")


def test_a_checkpoint_of_another_model_is_named_with_the_mismatch(last_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="does not fit the model of this run") as error:
        _resume(last_ckpt, tmp_path / "run", "model.net.embedding_dim=32")
    text = str(error.value)
    assert "backbone=small_cnn" in text and "(256," in text and "(32," in text


def test_ckpt_path_auto_without_a_checkpoint_starts_a_new_run(tmp_path):
    from ranking_reg.train import checkpoint_to_resume

    assert checkpoint_to_resume("auto", str(tmp_path)) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert checkpoint_to_resume("auto", str(tmp_path)) == str(
        tmp_path / "checkpoints" / "last.ckpt"
    )
    with pytest.raises(ConfigError, match="does not exist"):
        checkpoint_to_resume(str(tmp_path / "nope.ckpt"), str(tmp_path))
