"""Shared helpers: compose the project's Hydra config in-process, run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

# pytest -n 2 runs two workers on a 2-core machine: one intra-op thread each, or torch's thread
# pools oversubscribe the cores and small ops get ~50x slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "ranking_reg" / "conf"
# Small enough to finish in seconds on 2 CPU cores.
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "callbacks=checkpoints",
]


def compose_config(overrides: list[str], output_dir: Path | None = None, name: str = "train"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
        return compose(name, overrides=list(overrides) + extra)


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


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
