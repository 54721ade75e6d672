"""The package as a user installs it: the public API and the files a wheel must carry."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

import ranking_reg


def test_the_public_api_is_importable_from_the_package_root():
    from ranking_reg.data import FGVRDataModule, PKBatchSampler, build_dataset
    from ranking_reg.losses import (
        CenterLoss,
        SemiHardMiner,
        batch_hard_triplet_loss,
        semihard_triplet_loss,
    )
    from ranking_reg.metrics import retrieval_metrics
    from ranking_reg.models import TwoHeadNet

    expected = {
        "TwoHeadNet": TwoHeadNet,
        "semihard_triplet_loss": semihard_triplet_loss,
        "batch_hard_triplet_loss": batch_hard_triplet_loss,
        "SemiHardMiner": SemiHardMiner,
        "CenterLoss": CenterLoss,
        "retrieval_metrics": retrieval_metrics,
        "PKBatchSampler": PKBatchSampler,
        "FGVRDataModule": FGVRDataModule,
        "build_dataset": build_dataset,
    }
    for name, value in expected.items():
        assert getattr(ranking_reg, name) is value, name
        assert name in ranking_reg.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ranking_reg.nope  # noqa: B018


def test_importing_the_package_does_not_import_torch():
    code = "import sys, ranking_reg; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_no_source_file_is_over_400_lines():
    long = {
        str(path.relative_to(REPO)): n
        for path in (REPO / "ranking_reg").rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}


IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


@pytest.mark.slow
def test_the_wheel_carries_the_configs_specs_and_console_scripts(tmp_path):
    """Built from pyproject.toml by pip (with the venv's setuptools: no build environment)."""
    source = tmp_path / "source"  # a copy: an in-place build would leave build/ in the repo
    shutil.copytree(REPO / "ranking_reg", source / "ranking_reg", ignore=IGNORED)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*command, "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("ranking_reg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    configs = ("train.yaml", "eval.yaml", "predict.yaml", "index.yaml", "export.yaml")
    for config in (*configs, "model/two_head.yaml", "debug/fast.yaml"):
        assert f"ranking_reg/conf/{config}" in names, config
    for spec in ("classification", "retrieval", "imbalanced", "lambda_ablation"):
        assert f"ranking_reg/reporting/specs/{spec}.yaml" in names, spec
    entry = ("rr-train", "rr-evaluate", "rr-reproduce", "rr-tables", "rr-predict", "rr-index")
    for script in (*entry, "rr-export"):
        assert f"{script} = ranking_reg." in scripts, script
    assert not [n for n in names if n.startswith(("tests/", "experiments/"))]
