"""Shared helpers: compose the project's Hydra config in-process, run the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

# pytest -n 2 runs two workers on a 2-core machine: one intra-op thread each, or torch's thread
# pools oversubscribe the cores and small ops get ~50x slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "ranking_reg" / "conf"
# Small enough to finish in seconds on 2 CPU cores.
# The shared debug config (ranking_reg/conf/debug/fast.yaml): seconds on 2 CPU cores.
TINY = ["debug=fast"]


# Config groups (and hydra.*) select files: those overrides need Hydra's compose (~0.3 s each).
_GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()} | {"hydra"}


def _selects_files(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]
    return key.split("/", 1)[0].split(".", 1)[0] in _GROUPS and "." not in key


@functools.lru_cache(maxsize=128)
def _composed(name: str, selections: tuple[str, ...]) -> DictConfig:
    with _yaml_read_once(), initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(selections))


@contextlib.contextmanager
def _yaml_read_once():
    """Hydra reads and parses a config file each time a compose needs it; within the test
    session the files do not change, so each is parsed once (a quarter of a compose's time)."""
    from hydra._internal.core_plugins.file_config_source import FileConfigSource

    original = FileConfigSource.load_config

    def load_config(self, config_path):
        key = (self.path, config_path)
        if key not in _PARSED:
            _PARSED[key] = original(self, config_path)
        return copy.deepcopy(_PARSED[key])

    FileConfigSource.load_config = load_config
    try:
        yield
    finally:
        FileConfigSource.load_config = original


_PARSED: dict = {}


def hydra_compose(overrides: list[str], name: str = "train") -> DictConfig:
    """Hydra's own compose, uncached (the reference compose_config is tested against)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def compose_config(overrides: list[str], output_dir: Path | None = None, name: str = "train"):
    """The config ``python -m ranking_reg.<name> OVERRIDES`` composes.

    Group selections (``data=flowers102``) go through Hydra's compose, cached per selection;
    value overrides (``data.batch_size=8``, ``+miner.epsilon=0.1``, ``~key``) are parsed by
    Hydra's override parser and applied to a copy, as Hydra applies them after the defaults
    list. tests/test_config.py checks this equals Hydra's compose.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = list(overrides)
    if output_dir is not None:
        overrides.append(f"paths.output_dir={output_dir}")
    selections = tuple(o for o in overrides if _selects_files(o))
    cfg = copy.deepcopy(_composed(name, selections))
    values = [o for o in overrides if not _selects_files(o)]
    for override in OverridesParser.create().parse_overrides(values):
        key = override.key_or_group
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            with open_dict(cfg):
                node = OmegaConf.select(cfg, parent) if parent else cfg
                del node[leaf]
        elif override.is_add():
            with open_dict(cfg):
                OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
        else:
            if not _has_key(cfg, key):
                raise KeyError(f"Could not override '{key}': no such key in the config")
            OmegaConf.update(cfg, key, override.value(), merge=False)
    return cfg


def _has_key(cfg: DictConfig, key: str) -> bool:
    """Whether dotted ``key`` exists (values are not resolved, ``???`` counts as present)."""
    node = cfg
    for part in key.split("."):
        if not OmegaConf.is_dict(node) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 600):
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0", WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pytest_collection_modifyitems(config, items):
    """Long tests first: pytest -n 2 then fills the cores with the short ones, instead of
    finishing on one long test while the other core idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(autouse=True)
def _fresh_wandb_singleton():
    """W&B keeps process-wide settings (its singleton) from the first ``wandb.init``; a test
    that changes the environment (no key, another WANDB_DIR) must not leak them into the next."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and hasattr(wandb, "teardown"):
        wandb.teardown()


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """One tiny trained digits run shared by every test that needs a checkpoint of ours:
    ``(run dir, its metrics)``; ``run dir/checkpoints`` holds ``last.ckpt`` and ``best-*.ckpt``.
    Read-only for the tests (copy it before editing)."""
    from ranking_reg.train import run

    out = tmp_path_factory.mktemp("digits_checkpoint")
    overrides = [*TINY, "trainer.limit_train_batches=3", "logger=none"]
    return out, run(compose_config(overrides, output_dir=out))


def run_app_sweep(monkeypatch, tmp_path: Path, app: dict, overrides: list[str], task) -> None:
    """``python app.py -m OVERRIDES`` for an app whose config (``app``, stored in Hydra's
    ConfigStore) searches the project's conf/, in this process, through hydra.main: launchers
    and sweepers run as from the command line, without an interpreter start-up."""
    import hydra
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    ConfigStore.instance().store(name="sweep_app", node=app)
    main = hydra.main(version_base="1.3", config_path=str(CONF), config_name="sweep_app")
    argv = ["sweep_app", "-m", *overrides, "hydra/job_logging=disabled"]
    argv += ["hydra/hydra_logging=disabled"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    try:
        main(task)()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None


def _gloo_worker(compute, rank: int, world: int, port: int, args: tuple, queue, done) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        # plain lists, not tensors: a tensor put on the queue lives in this process's shared
        # memory, which may be gone by the time the parent reads it
        queue.put((rank, compute(rank, world, *args)))
        done.wait(timeout=60)
    finally:
        dist.destroy_process_group()


def run_gloo_workers(compute, world: int, *args) -> list[tuple[int, object]]:
    """``world`` forked processes in one gloo process group, each returning
    ``compute(rank, world, *args)`` (plain Python values); their (rank, result) by rank."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("fork")  # the workers start without importing torch again
    queue, done = context.SimpleQueue(), context.Event()
    processes = [
        context.Process(target=_gloo_worker, args=(compute, r, world, port, args, queue, done))
        for r in range(world)
    ]
    for process in processes:
        process.start()
    results = sorted([queue.get() for _ in processes], key=lambda r: r[0])
    done.set()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return results
