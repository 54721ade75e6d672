"""provenance.json of a run (ProvenanceWriter), its hashes and fingerprints, and the check that
the runs of one table cell share data and code."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, compose_config
from dataset_fixtures import make_flowers102, write_jpeg
from lightning.pytorch.callbacks import Callback
from scipy.io import loadmat, savemat

from ranking_reg.data import FGVRDataModule
from ranking_reg.data.registry import build_dataset
from ranking_reg.reporting.provenance_check import provenance_warnings
from ranking_reg.train import run
from ranking_reg.utils import provenance

KEYS = {
    "git_commit",
    "git_dirty",
    "config_hash",
    "data_fingerprint",
    "data_splits",
    "versions",
    "hardware",
    "started_at",
    "finished_at",
    "status",
    "seconds_per_train_step",
    "timed_train_steps",
    "warmup_steps",
    "unavailable",
}
PACKAGES = {"ranking_reg", "torch", "torchvision", "lightning", "pytorch-metric-learning", "timm"}


def _head() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    except FileNotFoundError:
        return None
    return out.stdout.decode().strip() if out.returncode == 0 else None


# -- a real run -----------------------------------------------------------------------------------


def test_train_run_writes_provenance(digits_checkpoint):
    run_dir, metrics = digits_checkpoint
    record = json.loads((run_dir / "provenance.json").read_text())
    assert KEYS <= set(record)
    assert record["status"] == "finished" and record["unavailable"] == {}
    started = datetime.fromisoformat(record["started_at"])
    assert started.utcoffset().total_seconds() == 0  # UTC
    assert datetime.fromisoformat(record["finished_at"]) >= started
    # 3 optimizer steps, 2 of warm-up: the third is timed
    assert record["warmup_steps"] == 2 and record["timed_train_steps"] == 1
    assert 0 < record["seconds_per_train_step"] < 60
    assert record["git_commit"] == _head() and isinstance(record["git_dirty"], bool)
    assert PACKAGES | {"numpy", "python"} <= set(record["versions"])
    assert record["versions"]["torch"] == torch.__version__.split("+")[0]
    hardware = record["hardware"]
    assert hardware["cpu_cores"] >= 1 and hardware["hostname"] and hardware["cpu_model"]
    assert hardware["gpu_count"] == torch.cuda.device_count()

    # the hash of the config the checkpoint stores; the digits' split sizes
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert record["config_hash"] == provenance.config_hash(ckpt["hyper_parameters"]["run_config"])
    sizes = {k: v["samples"] for k, v in record["data_splits"].items()}
    assert sizes == {"train": 1211, "val": 136, "test": 450}
    # metrics.json stays the metrics alone
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(metrics)


class _Boom(Callback):
    def on_train_start(self, trainer, pl_module):
        raise RuntimeError("boom at train start")


def test_failed_run_leaves_status_failed(tmp_path):
    cfg = compose_config([*TINY, "logger=none", "test=false"], output_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, extra_callbacks=[_Boom()])
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert record["status"] == "failed" and "boom at train start" in record["error"]
    assert record["finished_at"] >= record["started_at"]
    assert record["seconds_per_train_step"] is None and record["timed_train_steps"] == 0
    assert record["data_fingerprint"] and record["config_hash"]

    # the same run again in its folder (ckpt_path=auto after a crash): the failed attempt is kept
    with pytest.raises(RuntimeError, match="boom"):
        run(
            compose_config(
                [*TINY, "logger=none", "test=false", "ckpt_path=auto"], output_dir=tmp_path
            ),
            [_Boom()],
        )
    again = json.loads((tmp_path / "provenance.json").read_text())
    assert [a["status"] for a in again["previous_attempts"]] == ["failed"]
    earlier = again["previous_attempts"][0]
    assert (
        earlier["started_at"] == record["started_at"]
        and earlier["data_fingerprint"] == record["data_fingerprint"]
    )
    assert again["started_at"] >= record["finished_at"]


# -- config hash ----------------------------------------------------------------------------------


def test_config_hash_ignores_paths_and_display_only(tmp_path):
    base = provenance.config_hash(compose_config(TINY, output_dir=tmp_path / "a"))
    assert provenance.config_hash(compose_config(TINY, output_dir=tmp_path / "a")) == base
    same = [
        [],  # another output folder
        ["trainer.enable_progress_bar=true", "data.root=/elsewhere", "data.num_workers=3"],
    ]
    for extra in same:
        cfg = compose_config([*TINY, *extra], output_dir=tmp_path / "b")
        assert provenance.config_hash(cfg) == base, extra
    for extra in (["seed=1"], ["optimizer.lr=0.5"], ["regularizer.weight=0"]):
        cfg = compose_config([*TINY, *extra], output_dir=tmp_path / "a")
        assert provenance.config_hash(cfg) != base, extra
    hashed = provenance.hashed_config(compose_config(TINY, output_dir=tmp_path / "a"))
    assert "paths" not in hashed and "root" not in hashed["data"]
    assert "dirpath" not in hashed["callbacks"]["model_checkpoint"]
    assert "provenance" not in hashed["callbacks"]


# -- data fingerprint -----------------------------------------------------------------------------


def _fingerprint(root: Path) -> str:
    dataset = build_dataset("flowers102", str(root), "train")
    return provenance.split_fingerprint(dataset.samples, str(root))


def test_data_fingerprint_follows_file_sizes_and_labels(tmp_path):
    expected = make_flowers102(str(tmp_path / "a"))
    first = _fingerprint(tmp_path / "a")
    assert _fingerprint(tmp_path / "a") == first  # built twice
    # paths count relative to data.root: the same files elsewhere are the same data
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert _fingerprint(tmp_path / "b") == first

    path, _ = expected.splits["train"][0]
    write_jpeg(path.replace(str(tmp_path / "a"), str(tmp_path / "b")), size=(41, 30), seed=99)
    resized = _fingerprint(tmp_path / "b")
    assert resized != first

    labels_file = tmp_path / "a" / "flowers-102" / "imagelabels.mat"
    labels = loadmat(labels_file)["labels"]
    image_id = int(Path(path).stem.split("_")[1])
    labels[0, image_id - 1] = labels[0, image_id - 1] % labels.max() + 1  # another class
    savemat(labels_file, {"labels": labels.astype(np.uint8)})
    assert _fingerprint(tmp_path / "a") not in (first, resized)


def test_data_fingerprints_of_a_data_module(tmp_path):
    make_flowers102(str(tmp_path), per_class=6)

    def fingerprints(**options):
        datamodule = FGVRDataModule(
            "flowers102", str(tmp_path), batch_size=4, samples_per_class=2, **options
        )
        datamodule.setup("fit")
        return provenance.data_fingerprints(datamodule)

    first = fingerprints(val_fraction=0.5)
    assert first == fingerprints(val_fraction=0.5)
    assert {k: v["samples"] for k, v in first["data_splits"].items()} == {
        "train": 4,
        "val": 4,
        "test": 16,
    }
    no_val = fingerprints(val_fraction=0.0)  # no validation split
    assert no_val["data_splits"]["val"] is None
    assert no_val["data_splits"]["test"] == first["data_splits"]["test"]
    assert no_val["data_fingerprint"] != first["data_fingerprint"]


def test_embedded_samples_hash_names_and_labels():
    samples = [("sklearn-digits/0000", 0), ("sklearn-digits/0001", 1)]
    fingerprint = provenance.split_fingerprint(samples, "./data")
    assert provenance.split_fingerprint(list(samples), "/elsewhere") == fingerprint
    assert provenance.split_fingerprint([samples[0], ("sklearn-digits/0001", 2)]) != fingerprint
    assert provenance.split_fingerprint(samples[::-1]) != fingerprint  # dataset order counts


# -- degrading to null ----------------------------------------------------------------------------


def test_git_info_degrades_to_null(tmp_path, monkeypatch):
    outside = provenance.git_info(tmp_path)
    assert outside["git_commit"] is None and outside["git_dirty"] is None
    assert outside["unavailable"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    missing = provenance.git_info()
    assert missing["git_commit"] is None and missing["unavailable"] == "git is not installed"


def test_hardware_without_proc_cpuinfo(tmp_path):
    info = provenance.hardware(cpuinfo=tmp_path / "absent")
    assert "cpu_model" in info["unavailable"] and info["cpu_cores"] >= 1
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
    assert provenance._cpuinfo_model(x86) == "AMD EPYC 7763 64-Core Processor"
    assert provenance._cpuinfo_model("processor\t: 0\nHardware\t: BCM2835\n") == "BCM2835"


# -- the check of a table cell's runs -------------------------------------------------------------


def _run_dir(path: Path, record: dict | None, finished: bool = True) -> Path:
    path.mkdir(parents=True)
    if finished:
        (path / "metrics.json").write_text('{"test/acc": 0.5}\n')
    if record is not None:
        (path / "provenance.json").write_text(json.dumps(record))
    return path


def test_provenance_warnings_name_cells_runs_and_differences(tmp_path):
    same = {"git_commit": "a" * 40, "git_dirty": False, "data_fingerprint": "d" * 64}
    cell_a = tmp_path / "runs" / "data=flowers102"
    a0 = _run_dir(cell_a / "seed0", same)
    a1 = _run_dir(cell_a / "seed1", {**same, "data_fingerprint": "e" * 64})
    cell_b = tmp_path / "runs" / "regularizer=none"
    b0 = _run_dir(cell_b / "seed0", same)
    b1 = _run_dir(cell_b / "seed1", {**same, "git_dirty": True})
    old = _run_dir(tmp_path / "runs" / "old" / "seed0", None)
    unfinished = _run_dir(cell_b / "seed2", {**same, "git_commit": "f" * 40}, finished=False)
    lines = provenance_warnings(
        {
            "Flowers / triplet": [a0, a1, old],
            "Flowers / softmax": [b0, b1, unfinished, tmp_path / "never-ran"],
            "Flowers / center": [old, b0],
        }
    )
    data_line, code_line, none_line = lines
    assert data_line.startswith("cell Flowers / triplet: runs differ in data_fingerprint")
    assert "seed0" in data_line and "seed1" in data_line and "d" * 12 in data_line
    assert "e" * 12 in data_line and str(cell_a) in data_line
    assert code_line.startswith("cell Flowers / softmax: runs differ in git_commit/git_dirty")
    assert "(uncommitted changes) in seed1" in code_line and "f" * 12 not in code_line
    assert none_line.startswith("no provenance: 1 run(s)") and str(old) in none_line

    assert provenance_warnings({"Flowers / triplet": [a0, b0]}) == []
    assert provenance_warnings({"x": [unfinished]}, finished_only=False) == []
