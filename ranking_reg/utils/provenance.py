"""What a run ran on: pure helpers behind ``provenance.json`` (the ProvenanceWriter callback).

- :func:`git_info`: the commit of the ranking_reg checkout that ran and whether its tracked files
  had uncommitted changes (``git`` subprocess, short timeout);
- :func:`config_hash`: sha256 of the resolved run config as canonical JSON, less the keys in
  :data:`EXCLUDED_CONFIG_KEYS` (where files go, logging, progress bars: nothing that changes a
  result);
- :func:`split_fingerprint` / :func:`data_fingerprints`: sha256 of each split's sample list
  (path relative to ``data.root``, file size, label; in dataset order) and of the three together;
- :func:`package_versions`, :func:`hardware`: library versions, CPU/GPU/host.

Provenance is informational: :func:`git_info` and :func:`hardware` return None for what they
cannot find, with the reason (``unavailable``), instead of raising; the callback calls every
helper through :func:`safely`, so a missing ``git``, an unreadable ``/proc`` or an odd dataset
never fails a run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 10.0

# Dotted keys of the run config left out of config_hash ("*" matches one key). They say where
# files go or what is displayed/logged, never what is computed:
EXCLUDED_CONFIG_KEYS = (
    "paths",  # root/data/log/output folders
    "logger",  # where metrics are logged (already absent from the stored run config)
    "hydra",
    "hydra_overrides",  # the command line: its effect is the config itself
    "ckpt_path",  # resuming continues the same configuration
    "data.root",  # where the dataset lies; the data fingerprint covers its content
    "data.num_workers",  # per-sample seeds make batches independent of the worker count
    "data.pin_memory",
    "data.persistent_workers",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "callbacks.*.dirpath",  # checkpoint folders
    "callbacks.*.output_dir",
    "callbacks.*.plots_dir",
    "callbacks.plots",  # pictures
    "callbacks.lr_monitor",  # logging
    "callbacks.results",  # per_class.json
    "callbacks.provenance",  # this file
)

PACKAGES = (
    "ranking_reg",
    "torch",
    "torchvision",
    "lightning",
    "pytorch-metric-learning",
    "timm",
    "numpy",
)


def utc_now() -> str:
    """The current time, ISO 8601 in UTC (``2025-01-31T12:00:00.123456+00:00``)."""
    return datetime.now(timezone.utc).isoformat()


def _sha256_json(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- git ------------------------------------------------------------------------------------------


def _git(folder: Path, *args: str) -> str:
    """stdout of ``git -C folder args`` (stripped); raises on a failure or a timeout."""
    result = subprocess.run(
        ["git", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        check=True,
        # status must not take the index lock: a concurrent git command in the checkout would fail
        env=dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C"),
    )
    return result.stdout.strip()


def git_info(package_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"git_commit", "git_dirty", "git_root", "unavailable"}`` of the checkout holding
    ``package_dir`` (default: the installed ranking_reg package).

    The package must be tracked by that repository: an installed copy that merely lies below some
    other checkout (a virtual environment inside a repository) gets None. ``git_dirty`` counts
    tracked files only (staged or not); untracked files (outputs, datasets, notes) are left out.
    """
    if package_dir is None:
        import ranking_reg

        package_dir = Path(ranking_reg.__file__).resolve().parent
    folder = Path(package_dir)
    out: dict[str, Any] = {"git_commit": None, "git_dirty": None, "git_root": None}
    try:
        if not _git(folder, "ls-files", "--", "__init__.py"):
            out["unavailable"] = f"{folder} is not tracked by a git repository"
            return out
        out["git_root"] = _git(folder, "rev-parse", "--show-toplevel")
        out["git_commit"] = _git(folder, "rev-parse", "HEAD")
        status = _git(Path(out["git_root"]), "status", "--porcelain", "--untracked-files=no")
        out["git_dirty"] = bool(status)
    except FileNotFoundError:
        out["unavailable"] = "git is not installed"
    except subprocess.TimeoutExpired:
        out["unavailable"] = f"git took over {GIT_TIMEOUT_S:.0f} s"
    except subprocess.CalledProcessError as error:
        reason = " ".join((error.stderr or "").split())[:200]
        out["unavailable"] = f"not a git checkout ({reason or f'exit status {error.returncode}'})"
    except OSError as error:
        out["unavailable"] = f"git could not run ({error})"
    return out


# -- config ---------------------------------------------------------------------------------------


def _drop(node: Any, parts: list[str]) -> None:
    """Remove the dotted key ``parts`` ("*" matching any one key) from nested dicts, in place."""
    if not isinstance(node, dict) or not parts:
        return
    head, rest = parts[0], parts[1:]
    for key in [k for k in node if fnmatch.fnmatchcase(str(k), head)]:
        if rest:
            _drop(node[key], rest)
        else:
            del node[key]


def hashed_config(run_config: Any) -> dict[str, Any]:
    """The part of the run config that :func:`config_hash` hashes (plain containers).

    ``run_config`` is the resolved dict train.py stores with the model, or a DictConfig (then
    resolved here, as train.py does).
    """
    from omegaconf import DictConfig

    if isinstance(run_config, DictConfig):
        from ranking_reg.utils.hydra_utils import resolved_config

        run_config = resolved_config(run_config)
    config = json.loads(json.dumps(run_config, default=str))  # a deep copy of plain values
    for key in EXCLUDED_CONFIG_KEYS:
        _drop(config, key.split("."))
    return config


def config_hash(run_config: Any) -> str:
    """sha256 of the result-changing run config (:func:`hashed_config`) as canonical JSON
    (sorted keys, no whitespace)."""
    return _sha256_json(hashed_config(run_config))


# -- data -----------------------------------------------------------------------------------------


def _sample_entry(path: str, label: int, root: str | None) -> list[Any]:
    """``[name, size, label]``: the path relative to ``root`` when the file lies below it (else
    as listed), its size in bytes (None: no such file, e.g. an embedded sample's name)."""
    name = str(path)
    try:
        size: int | None = os.stat(name).st_size
    except OSError:
        size = None
    if root is not None and size is not None:
        relative = os.path.relpath(os.path.abspath(name), os.path.abspath(root))
        if not relative.startswith(os.pardir):
            name = relative.replace(os.sep, "/")
    return [name, size, int(label)]


def split_fingerprint(samples: Iterable[tuple[str, int]], root: str | None = None) -> str:
    """sha256 of a split's ``(path, label)`` samples, in order: one JSON line
    ``[path relative to root, file size, label]`` each (embedded data: ``[name, null, label]``)."""
    digest = hashlib.sha256()
    for path, label in samples:
        line = json.dumps(_sample_entry(path, label, root), separators=(",", ":"))
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def data_fingerprints(datamodule: Any) -> dict[str, Any]:
    """``{"data_fingerprint": combined sha256, "data_splits": {split: {"sha256", "samples"}}}``
    of a set-up data module (``train_dataset``/``val_dataset``/``test_dataset`` with ``samples``;
    a split that does not exist is None). The combined hash covers the three split hashes."""
    root = getattr(datamodule, "root", None)
    root = None if root is None else str(root)
    splits: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        dataset = getattr(datamodule, f"{split}_dataset", None)
        samples = getattr(dataset, "samples", None)
        if samples is None:
            splits[split] = None
            continue
        splits[split] = {"sha256": split_fingerprint(samples, root), "samples": len(samples)}
    if splits["train"] is None and splits["test"] is None:
        raise ValueError(f"{type(datamodule).__name__} has no set-up train or test dataset")
    combined = {k: None if v is None else v["sha256"] for k, v in splits.items()}
    return {"data_fingerprint": _sha256_json(combined), "data_splits": splits}


# -- software and hardware ------------------------------------------------------------------------


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None: not installed), and ``python``."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpuinfo_model(text: str) -> str | None:
    """The CPU model named by /proc/cpuinfo (x86 ``model name``; ARM ``Hardware``/``Model``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "hardware", "model", "cpu model", "processor"):
        if key in fields and not fields[key].isdigit():
            return fields[key]
    return None


def _meminfo_gib(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    return None


def hardware(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model and cores, memory, GPUs (names, count; the CUDA and cuDNN versions when one is
    available) and host name."""
    unavailable: dict[str, str] = {}
    info: dict[str, Any] = {"hostname": socket.gethostname(), "platform": platform.platform()}
    try:
        info["cpu_model"] = _cpuinfo_model(Path(cpuinfo).read_text(errors="replace"))
    except OSError as error:
        info["cpu_model"] = None
        unavailable["cpu_model"] = f"{cpuinfo}: {error.strerror or error}"
    if info["cpu_model"] is None:
        info["cpu_model"] = platform.processor() or platform.machine() or None
    info["cpu_cores"] = os.cpu_count()
    try:
        info["cpu_cores_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS/Windows
        info["cpu_cores_usable"] = info["cpu_cores"]
    try:
        info["memory_gib"] = _meminfo_gib(Path("/proc/meminfo").read_text())
    except OSError:
        info["memory_gib"] = None
    info.update(_gpus(unavailable))
    if unavailable:
        info["unavailable"] = unavailable
    return info


def _gpus(unavailable: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"gpu_count": 0, "gpu_names": [], "cuda": None, "cudnn": None}
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda"] = torch.version.cuda
            count = torch.cuda.device_count()
            out["gpu_count"] = count
            out["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(count)]
            out["cudnn"] = torch.backends.cudnn.version()
    except Exception as error:  # a broken driver must not fail the run
        unavailable["gpu"] = f"{type(error).__name__}: {error}"
    return out


def safely(collect: Any, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """``(collect(*args), None)``, or ``(None, reason)`` when it raises: provenance is never
    worth a failed run."""
    try:
        return collect(*args, **kwargs), None
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"
