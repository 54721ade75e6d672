"""W&B logging: run naming and grouping, offline mode, one finished run per multirun job,
images from the PlotCallback, and the dashboard spec. Everything runs offline in tmp_path."""

from __future__ import annotations

import glob
import json
import os
import struct
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ranking_reg.integrations import wandb_utils
from ranking_reg.integrations.wandb_utils import (
    finish_wandb,
    has_api_key,
    register_resolvers,
    run_group,
    run_name,
    run_tags,
    sweep_group_name,
    wandb_offline,
)

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[1] / "ranking_reg" / "conf"


def cfg(**over):
    base = {
        "task_name": "train",
        "seed": 0,
        "data": {"name": "flowers102", "imbalance_ratio": None},
        "backbone": {"name": "resnet50"},
        "regularizer": {"name": "triplet", "weight": 1.0},
        "miner": {"_target_": "ranking_reg.losses.SemiHardMiner"},
    }
    return OmegaConf.merge(base, over)


# -- naming -------------------------------------------------------------------------------------
def test_run_name_from_the_overrides():
    assert run_name(cfg()) == "flowers102-resnet50-semihard-λ1-s0"
    assert run_name(
        cfg(
            regularizer={"weight": 0.2},
            miner={"_target_": "pytorch_metric_learning.miners.BatchHardMiner"},
            seed=3,
        )
    ) == ("flowers102-resnet50-hard-λ0.2-s3")
    assert run_name(cfg(regularizer={"name": "none"})) == "flowers102-resnet50-softmax-s0"
    assert run_name(cfg(regularizer={"name": "center", "weight": 0.003})) == (
        "flowers102-resnet50-center-λ0.003-s0"
    )
    assert (
        run_name(cfg(data={"imbalance_ratio": 100})) == "flowers102-lt100-resnet50-semihard-λ1-s0"
    )
    assert run_name(OmegaConf.create({"regularizer": {"name": "none"}})) == "softmax"


def test_run_tags():
    assert run_tags(cfg()) == [
        "data:flowers102",
        "backbone:resnet50",
        "regularizer:triplet",
        "miner:semihard",
    ]
    # the miner only matters for the triplet regularizer
    assert run_tags(cfg(regularizer={"name": "none"}, data={"imbalance_ratio": 10})) == [
        "data:flowers102",
        "backbone:resnet50",
        "regularizer:none",
        "imbalanced",
    ]


def test_sweep_group_name():
    assert sweep_group_name("./logs/train/multiruns/2025-01-02_03-04-05_123456") == (
        "logs/train/multiruns/2025-01-02_03-04-05_123456"
    )
    assert sweep_group_name("/home/u/proj/logs/x", cwd="/home/u/proj") == "logs/x"
    assert sweep_group_name("/scratch/x", cwd="/home/u/proj") == "/scratch/x"
    long = "/".join(["d" * 30] * 6)
    name = sweep_group_name(long)
    assert len(name) <= 128 and long.endswith(name) and not name.startswith("/")


@pytest.fixture
def hydra_config():
    """Sets Hydra's job config singleton (a real HydraConf) and clears it afterwards."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    def set_mode(mode: RunMode, sweep_dir: str = "multirun/2025-01-02/03-04-05"):
        root = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
        root.hydra.mode = mode
        root.hydra.sweep.dir = sweep_dir
        root.hydra.runtime.cwd = "/work"
        root.hydra.overrides.task = ["seed=1"]
        HydraConfig.instance().set_config(root)

    yield set_mode
    HydraConfig.instance().cfg = None


def test_run_group_is_the_sweep_in_a_multirun_only(hydra_config, monkeypatch):
    from hydra.types import RunMode

    monkeypatch.delenv(wandb_utils.GROUP_ENV, raising=False)
    assert run_group() is None  # no Hydra at all
    hydra_config(RunMode.RUN)
    assert run_group() is None
    hydra_config(RunMode.MULTIRUN, "/work/multirun/2025-01-02/03-04-05")
    assert run_group() == "multirun/2025-01-02/03-04-05"
    monkeypatch.setenv(wandb_utils.GROUP_ENV, "table2")
    assert run_group() == "table2"


# -- offline mode -------------------------------------------------------------------------------
@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    import matplotlib

    # keep matplotlib's font cache where it is (a new HOME would rebuild it: seconds)
    monkeypatch.setenv("MPLCONFIGDIR", matplotlib.get_configdir())
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    # set, then delete: the undo then removes whatever W&B writes here (WandbLogger sets it)
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.delenv("WANDB_MODE")
    return home


def test_offline_unless_an_api_key_is_configured(no_credentials, monkeypatch):
    assert not has_api_key() and wandb_offline()
    netrc = no_credentials / ".netrc"
    netrc.write_text("machine example.org\n  login user\n  password x\n")
    assert wandb_offline()
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert has_api_key() and not wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline()
    netrc.unlink()
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not wandb_offline()  # explicitly asked for
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert not wandb_offline()
    monkeypatch.delenv("WANDB_API_KEY")
    other = no_credentials / "other_netrc"
    other.write_text("machine wandb.mycorp.com\n  login user\n  password x\n")
    monkeypatch.setenv("NETRC", str(other))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.mycorp.com")
    assert has_api_key()


@pytest.fixture
def wandb_tmp(tmp_path, no_credentials, monkeypatch):
    """W&B writes only under tmp_path, offline, silently; no run is left live."""
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        path = tmp_path / name.lower()
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv(wandb_utils.GROUP_ENV, raising=False)
    yield tmp_path
    finish_wandb()


def wandb_records(run_dir: str) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` file (what `wandb sync` uploads).

    The file is a 7-byte header (":W&B", magic, version) followed by LevelDB-log records in
    32 KiB blocks: crc32 (4 bytes), length (2), type (1: full, 2: first, 3: middle, 4: last).
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    records, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def run_summary(run_dir: str, timeout: float = 20.0) -> dict:
    """Group, name, tags, config, logged values (per key, in order) and exit code of an offline
    run. W&B's service process may still be writing the file when ``finish()`` returns on a busy
    machine: wait for the exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(run_dir)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out: dict = {"history": {}, "exit_code": None}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"] = record.run.run_group
            out["name"] = record.run.display_name
            out["tags"] = list(record.run.tags)
            out["config"] = {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                path = [item.key] if item.key else list(item.nested_key)
                node = row
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                node[path[-1]] = json.loads(item.value_json)
            for key, value in row.items():
                out["history"].setdefault(key, []).append(value)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def offline_runs(root: Path) -> list[str]:
    return sorted(glob.glob(str(root / "**" / "offline-run-*"), recursive=True))


def test_two_jobs_in_one_process_become_two_finished_runs_in_one_group(wandb_tmp):
    from lightning.pytorch.loggers import WandbLogger

    group = sweep_group_name("multirun/2025-01-02/03-04-05")
    ids = []
    for job in range(2):
        logger = WandbLogger(
            project="ranking_reg",
            save_dir=str(wandb_tmp / f"job{job}"),
            offline=True,
            group=group,
            name=f"job{job}",
            tags=["data:digits"],
        )
        try:
            assert logger.experiment.group == group
            ids.append(logger.experiment.id)
            logger.log_metrics({"job": job}, step=0)
            if job == 0:
                # The trap: a second logger while the run is live logs into the same run.
                assert WandbLogger(project="ranking_reg", offline=True).experiment.id == ids[0]
        finally:
            finish_wandb()
        import wandb

        assert wandb.run is None
    assert ids[0] != ids[1]
    runs = offline_runs(wandb_tmp)
    assert len(runs) == 2
    for job, run_dir in enumerate(runs):
        assert Path(run_dir).is_relative_to(wandb_tmp / f"job{job}" / "wandb")
        summary = run_summary(run_dir)
        assert summary["group"] == group and summary["name"] == f"job{job}"
        assert summary["history"]["job"] == [job]  # its own metric only
        assert summary["exit_code"] == 0  # finished


def test_finish_wandb_without_wandb_or_run_is_a_no_op(monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    finish_wandb()
    assert "wandb" not in sys.modules


# -- the config: conf/logger/wandb.yaml ---------------------------------------------------------
def compose_train(tmp_path, overrides):
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path / 'run'}", *overrides])


def test_logger_config_instantiates_a_named_tagged_offline_run(wandb_tmp):
    from hydra.utils import instantiate

    (wandb_tmp / "run").mkdir()
    overrides = ["logger=[csv,wandb]", "data=flowers102", "backbone=resnet50", "seed=2"]
    config = compose_train(wandb_tmp, overrides)
    assert set(config.logger) == {"csv", "wandb"}
    assert config.logger.wandb.entity is None and config.logger.wandb.offline is True
    # the id of the W&B run goes into every checkpoint: the trainer gets the callback that saves it
    from ranking_reg.lightning.trainer import build_trainer

    callbacks = build_trainer(config).callbacks
    assert sum(type(c).__name__ == "WandbRunIdCallback" for c in callbacks) == 1
    logger = instantiate(config.logger.wandb)
    run = logger.experiment
    try:
        # the offline fallback's logger; the run id is kept in the run folder
        assert type(logger).__name__ == "ResilientWandbLogger" and not logger.fell_back_offline
        assert (wandb_tmp / "run" / "wandb_run_id.txt").read_text() == f"{run.id}\n"
        assert run.name == "flowers102-resnet50-semihard-λ1-s2"
        assert run.group in (None, "")  # a single run
        assert sorted(run.tags) == sorted(run_tags(config))
        assert run.settings._offline and run.project == "ranking_reg"
        assert run.config["data"]["name"] == "flowers102" and run.config["seed"] == 2
        assert run.config["regularizer"]["weight"] == 1.0
        assert "logger" not in run.config  # no recursion into the logger's own node
        assert Path(run.dir).is_relative_to(wandb_tmp / "run" / "wandb")
    finally:
        finish_wandb()


def test_hydra_multirun_jobs_are_separate_runs_in_one_group(wandb_tmp, monkeypatch):
    """An in-process `-m` sweep (Hydra's basic launcher runs the jobs one after the other in
    this process, the case where W&B runs leak) with the real conf/logger/wandb.yaml."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    conf = wandb_tmp / "conf"
    (conf / "logger").mkdir(parents=True)
    (conf / "logger" / "wandb.yaml").write_text((CONF / "logger" / "wandb.yaml").read_text())
    (conf / "app.yaml").write_text(
        "defaults: [_self_, {logger: wandb}]\n"
        "task_name: train\nseed: 0\n"
        "data: {name: digits, imbalance_ratio: null}\nbackbone: {name: small_cnn}\n"
        "regularizer: {name: triplet, weight: 1.0}\nminer: {_target_: ranking_reg.losses.SemiHardMiner}\n"
        "paths: {output_dir: '${hydra:runtime.output_dir}'}\n"
    )
    sweep_dir = wandb_tmp / "multirun" / "sweep"

    @hydra.main(config_path=str(conf), config_name="app", version_base="1.3")
    def job(config):
        try:
            logger = instantiate(config.logger.wandb)
            logger.log_metrics({"seed": config.seed}, step=0)
        finally:
            finish_wandb()

    register_resolvers()
    argv = [
        "app",
        "-m",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(wandb_tmp)
    try:
        job()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    runs = offline_runs(sweep_dir)
    assert len(runs) == 2
    summaries = [run_summary(r) for r in runs]
    assert {s["group"] for s in summaries} == {"multirun/sweep"}
    assert sorted(s["name"] for s in summaries) == [
        "digits-small_cnn-semihard-λ1-s0",
        "digits-small_cnn-semihard-λ1-s1",
    ]
    for run_dir, s in zip(runs, summaries, strict=True):
        seed = int(s["name"][-1])
        assert Path(run_dir).is_relative_to(sweep_dir / str(seed))  # the job's own output dir
        assert s["history"]["seed"] == [seed] and s["exit_code"] == 0
        assert s["config"]["hydra_overrides"] == [f"seed={seed}"]


# -- pictures in W&B ----------------------------------------------------------------------------
def test_plot_callback_logs_pictures_to_wandb(wandb_tmp):
    from lightning.pytorch.loggers import WandbLogger
    from test_plots import TinyData, TinyModule, tiny_trainer

    from ranking_reg.lightning.plot_callback import PLOT_NAMES, PlotCallback

    logger = WandbLogger(project="ranking_reg", save_dir=str(wandb_tmp), offline=True)
    callback = PlotCallback(str(wandb_tmp / "plots"), n_queries=4, n_neighbors=3, thumb_size=16)
    trainer = tiny_trainer(wandb_tmp, callback, logger=logger)
    try:
        trainer.fit(TinyModule(), datamodule=TinyData())
        run_dir = logger.experiment.dir
    finally:
        finish_wandb()
    media = sorted(Path(run_dir, "media", "images", "val").glob("*.png"))
    assert sorted({p.name.rsplit("_", 2)[0] for p in media}) == sorted(PLOT_NAMES)
    (summary_dir,) = offline_runs(wandb_tmp)
    logged = run_summary(summary_dir)["history"]
    for name in PLOT_NAMES:
        (entry,) = logged[f"val/{name}"]
        # Lightning's log_image logs a list: one image, its file under the run's media folder
        assert entry["_type"] == "images/separated" and entry["count"] == 1
        (filename,) = entry["filenames"]
        assert (
            filename.startswith(f"media/images/val/{name}_") and Path(run_dir, filename).is_file()
        )
    assert logged["trainer/global_step"]  # logged at the trainer's step


# -- dashboard ----------------------------------------------------------------------------------
def test_dashboard_spec_has_the_sweep_panels():
    from ranking_reg.integrations.dashboard import build_workspace, workspace_spec

    spec = workspace_spec(build_workspace("ranking_reg", "me", group="multirun/sweep"))
    assert spec["entity"] == "me" and spec["project"] == "ranking_reg"
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    panels = {s["name"]: s["panels"] for s in sections}
    sweep = panels["λ sweep: test metrics against λ"]
    scatter = {
        p["config"]["yAxis"]: p["config"]["xAxis"] for p in sweep if p["viewType"] == "Scatter Plot"
    }
    assert scatter == {
        "summary:test/acc": "config:regularizer.value.weight",
        "summary:test/macro_acc": "config:regularizer.value.weight",
        "summary:test/recall@1": "config:regularizer.value.weight",
    }
    curves = panels["softmax vs triplet: learning curves"]
    lines = {tuple(p["config"]["metrics"]): p["config"] for p in curves}
    assert set(lines) == {("val/acc",), ("val/recall@1",), ("train/loss",)}
    for config in lines.values():
        assert config["groupBy"] == "regularizer.value.name" and config["groupAgg"] == "mean"
        assert config["xAxis"] == "trainer/global_step"
    media = [p["config"]["mediaKeys"] for p in panels["pictures (plots callback)"]]
    assert ["val/retrieval_grid"] in media and ["test/confusion_matrix"] in media
    text = json.dumps(spec)
    assert '"name": "group", "op": "=", "value": "multirun/sweep"' in text.replace("}", "")
    # without a group: no run filter
    assert "multirun/sweep" not in json.dumps(workspace_spec(build_workspace("p", "me")))


def test_dashboard_refuses_without_login(no_credentials, capsys):
    from ranking_reg.integrations import dashboard

    with pytest.raises(SystemExit) as exit_info:
        dashboard.main(["--project", "p", "--entity", "me"])
    assert exit_info.value.code == 2
    assert "wandb login" in capsys.readouterr().err
