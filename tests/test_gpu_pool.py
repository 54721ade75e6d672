"""The gpu_pool launcher: its scheduler on simulated devices, its devices option, and a multirun
through hydra.main whose jobs each see their own CUDA_VISIBLE_DEVICES (on CPU: devices=[0,1])."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import run_app_sweep
from hydra.core.hydra_config import HydraConfig

from ranking_reg.launchers import device_pool
from ranking_reg.launchers.device_pool import DevicePool, resolve_devices, run_on_devices
from ranking_reg.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "ranking_reg" / "conf"
TARGET = "hydra_plugins.ranking_reg_launchers.gpu_pool_launcher.GpuPoolLauncher"


class Recorder:
    """A start_job for simulated devices: sleeps, checks that its device is not in use, and
    records when each job ran where."""

    def __init__(self, durations: list[float], fail: set[int] = frozenset(), per_device: int = 1):
        self.durations, self.fail, self.per_device = durations, fail, per_device
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.calls: list[int] = []
        self.peak = 0

    def __call__(self, job: int, device: str) -> int:
        with self.lock:
            self.calls.append(job)
            self.running[device] = self.running.get(device, 0) + 1
            assert self.running[device] <= self.per_device, f"device {device} oversubscribed"
            self.peak = max(self.peak, sum(self.running.values()))
        try:
            time.sleep(self.durations[job])
            if job in self.fail:
                raise ValueError(f"job {job} fails on purpose")
            return job * 10
        finally:
            with self.lock:
                self.running[device] -= 1


def test_five_jobs_on_two_devices_each_device_runs_one_job_at_a_time() -> None:
    start = Recorder([0.6, 0.05, 0.1, 0.05, 0.1])
    outcomes = run_on_devices(list(range(5)), [0, 1], start)
    assert sorted(start.calls) == [0, 1, 2, 3, 4]  # every job once
    assert [o.value for o in outcomes] == [0, 10, 20, 30, 40]  # in job order
    assert all(o.ok for o in outcomes) and start.peak == 2
    for device in ("0", "1"):  # no two jobs overlap on one device
        spans = sorted((o.started, o.finished) for o in outcomes if o.device == device)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    # Job 2 starts on the device job 1 freed, while job 0 still holds the other one.
    assert outcomes[2].device == outcomes[1].device != outcomes[0].device
    assert outcomes[1].finished <= outcomes[2].started < outcomes[0].finished


def test_a_failing_job_frees_its_device_and_the_others_run() -> None:
    start = Recorder([0.01, 0.01, 0.01, 0.01], fail={1})
    outcomes = run_on_devices([0, 1, 2, 3], ["gpu-x"], start)
    assert sorted(start.calls) == [0, 1, 2, 3]
    assert [o.ok for o in outcomes] == [True, False, True, True]
    assert isinstance(outcomes[1].error, ValueError) and outcomes[3].value == 30
    assert {o.device for o in outcomes} == {"gpu-x"}


def test_jobs_per_device_shares_a_device() -> None:
    start = Recorder([0.1] * 5, per_device=2)
    outcomes = run_on_devices(list(range(5)), [3], start, jobs_per_device=2)
    assert start.peak == 2 and [o.value for o in outcomes] == [0, 10, 20, 30, 40]
    pool = DevicePool([0, 1], jobs_per_device=2)
    assert pool.slots == 4 and [pool.acquire() for _ in range(2)] == ["0", "1"]  # spread first
    assert run_on_devices([], [0], start) == []


def test_devices_option(monkeypatch) -> None:
    assert resolve_devices("auto", visible="2,3") == ["2", "3"]  # this process's GPUs
    assert resolve_devices("auto", visible="", count=lambda: 4) == ["0", "1", "2", "3"]
    assert resolve_devices([0, 1]) == ["0", "1"] and resolve_devices("0,2") == ["0", "2"]
    assert resolve_devices(["GPU-1a2b"]) == ["GPU-1a2b"]
    with pytest.raises(ConfigError, match=r"hydra\.launcher\.devices=auto found no GPU"):
        resolve_devices("auto", visible=None, count=lambda: 0)
    for bad in ([], [0, 0], None, [-1], ""):
        with pytest.raises(ConfigError, match=r"hydra\.launcher\.devices"):
            resolve_devices(bad, visible="")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(device_pool, "_count_gpus", lambda: 2)
    assert resolve_devices("auto") == ["0", "1"]


def test_hydra_finds_the_launcher_and_the_wheel_ships_its_plugin_package() -> None:
    from hydra.core.plugins import Plugins
    from setuptools import find_namespace_packages

    assert yaml.safe_load((CONF / "hydra/launcher/gpu_pool.yaml").read_text())["_target_"] == TARGET
    assert TARGET in Plugins.instance().class_name_to_class  # found by Hydra's plugin scan
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = find_namespace_packages(where=str(REPO), include=find["find"]["include"])
    assert "hydra_plugins.ranking_reg_launchers" in packages and "ranking_reg.launchers" in packages
    assert not (REPO / "hydra_plugins" / "__init__.py").exists()  # a namespace shared by plugins


def pinned_task(cfg) -> int:
    """Records the device and the time span of its job; two at once must overlap. seed=-1: the
    job's process dies at once (as when killed for memory)."""
    if cfg.seed == -1:
        os._exit(9)
    started = time.time()
    time.sleep(0.5)
    record = {
        "seed": cfg.seed,
        "pid": os.getpid(),
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "span": [started, time.time()],
    }
    Path(HydraConfig.get().runtime.output_dir, "job.json").write_text(json.dumps(record))
    return cfg.seed


def run_sweep(monkeypatch, tmp_path: Path, overrides: list[str]) -> None:
    """``app.py -m hydra/launcher=gpu_pool OVERRIDES`` in this process (conftest.run_app_sweep)."""
    run_app_sweep(
        monkeypatch, tmp_path, {"seed": 0}, ["hydra/launcher=gpu_pool", *overrides], pinned_task
    )


def test_devices_auto_without_a_gpu_is_an_error_naming_the_option(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(device_pool, "_count_gpus", lambda: 0)
    with pytest.raises(SystemExit):
        run_sweep(monkeypatch, tmp_path, ["seed=1,2", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert "hydra.launcher.devices=auto found no GPU" in capsys.readouterr().err


@pytest.mark.slow  # three spawned job processes at once (~1.5-3 s)
def test_a_sweep_runs_one_job_per_device_at_once(tmp_path: Path, monkeypatch, capsys) -> None:
    """Three jobs on three devices run at once, each on its own; job 2's process dies: the sweep
    fails with that job named, and the others have run to their end."""
    sweep = tmp_path / "sweep"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # the parent's value: no job inherits it
    overrides = ["hydra.launcher.devices=[0,1,2]", "seed=3,4,-1", f"hydra.sweep.dir={sweep}"]
    with pytest.raises(SystemExit):
        run_sweep(monkeypatch, tmp_path, overrides)
    assert "JobProcessDied: job 2 (seed=-1) on CUDA_VISIBLE_DEVICES=" in capsys.readouterr().err
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    jobs = [json.loads((sweep / str(n) / "job.json").read_text()) for n in (0, 1)]
    assert [j["seed"] for j in jobs] == [3, 4]
    assert len({j["pid"] for j in jobs} | {os.getpid()}) == 3  # each in its own process
    (a0, a1), (b0, b1) = (j["span"] for j in jobs)
    assert a0 < b1 and b0 < a1  # they ran at the same time
    pinned = []  # each job's device, as its .hydra/hydra.yaml records it (job 2's too)
    for n in (0, 1, 2):
        hydra_yaml = yaml.safe_load((sweep / str(n) / ".hydra" / "hydra.yaml").read_text())
        assert hydra_yaml["hydra"]["launcher"]["_target_"] == TARGET
        pinned.append(hydra_yaml["hydra"]["job"]["env_set"]["CUDA_VISIBLE_DEVICES"])
    assert [j["device"] for j in jobs] == pinned[:2]  # what each job's process saw
    assert sorted(pinned) == ["0", "1", "2"]  # each job its own GPU
