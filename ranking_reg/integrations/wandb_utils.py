"""Weights & Biases glue for ``logger=wandb``: run naming, sweep grouping, offline mode, finishing.

``conf/logger/wandb.yaml`` configures the logger (``wandb_logger.ResilientWandbLogger``, a
Lightning ``WandbLogger``) through OmegaConf resolvers registered here (``register_resolvers()``,
called by ``train.py`` before Hydra composes):

- ``${rr_run_name:}``: ``<data>-<backbone>-<regularizer>-s<seed>``, e.g.
  ``flowers102-resnet50-semihard-λ1-s0`` (``run_name``);
- ``${rr_run_group:}``: the multirun sweep, so that all jobs of one ``-m`` sweep form one W&B
  group; null for a single run (``run_group``);
- ``${rr_run_tags:}``: ``data:…``, ``backbone:…``, ``regularizer:…``, ``miner:…``
  (``run_tags``);
- ``${rr_wandb_offline:}``: offline unless an API key is configured (``wandb_offline``), so a
  run never prompts for a login; ``wandb sync <run dir>/wandb/offline-run-*`` uploads later;
- ``${rr_config:}``: the resolved run config (all of it but the ``logger`` node itself);
- ``${rr_resumed_checkpoint:}``: the checkpoint a training run resumes from, whose W&B run id
  the logger reuses (``resumed_checkpoint``).

The logger module adds the offline fallback, the bounded waits and the run id kept across resumes.

In a multirun all jobs share one process, and ``WandbLogger`` reuses a live ``wandb.run``: every
job must end with ``finish_wandb()`` (in a ``finally``), or all jobs log into the first run.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from ranking_reg.utils.hydra_utils import resolved_config

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.wandb.ai"
GROUP_ENV = "RR_WANDB_GROUP"
MAX_GROUP_CHARS = 128  # W&B's limit on a group name


def _select(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None) if OmegaConf.is_config(cfg) else None


def _number(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


# miner classes with a short name of their own (the miner= group options)
MINER_LABELS = {"SemiHardMiner": "semihard", "BatchHardMiner": "hard"}


def miner_label(cfg: DictConfig) -> str | None:
    """``semihard``, ``hard``, or the PML miner's class name, from ``miner._target_``."""
    target = _select(cfg, "miner._target_")
    if target is None:
        return None
    name = str(target).rsplit(".", 1)[-1]
    return MINER_LABELS.get(name, name)


def regularizer_label(cfg: DictConfig) -> str:
    """``softmax`` (no regularizer), ``<miner>-λ<w>`` (triplet), ``<name>-λ<w>`` (others)."""
    name = _select(cfg, "regularizer.name")
    if name in (None, "none"):
        return "softmax"
    weight = _number(_select(cfg, "regularizer.weight"))
    if name == "triplet":
        return f"{miner_label(cfg) or 'triplet'}-λ{weight}"
    return f"{name}-λ{weight}"


def run_name(cfg: DictConfig) -> str:
    """``<data>[-lt<ratio>]-<backbone>-<regularizer_label>-s<seed>``; missing keys are left out.

    ``lt<ratio>`` marks the long-tailed (imbalanced) train split.
    """
    parts = []
    data = _select(cfg, "data.name")
    if data is not None:
        ratio = _select(cfg, "data.imbalance_ratio")
        parts.append(f"{data}-lt{_number(ratio)}" if ratio is not None else str(data))
    backbone = _select(cfg, "backbone.name")
    if backbone is not None:
        parts.append(str(backbone))
    parts.append(regularizer_label(cfg))
    seed = _select(cfg, "seed")
    if seed is not None:
        parts.append(f"s{seed}")
    return "-".join(parts)


def run_tags(cfg: DictConfig) -> list[str]:
    """Filterable W&B tags: ``data:``, ``backbone:``, ``regularizer:``, ``miner:`` (triplet only),
    plus ``imbalanced`` for a long-tailed train split."""
    tags = []
    for key, label in (("data.name", "data"), ("backbone.name", "backbone")):
        value = _select(cfg, key)
        if value is not None:
            tags.append(f"{label}:{value}")
    regularizer = _select(cfg, "regularizer.name")
    if regularizer is not None:
        tags.append(f"regularizer:{regularizer}")
    miner = miner_label(cfg)
    if regularizer == "triplet" and miner is not None:
        tags.append(f"miner:{miner}")
    if _select(cfg, "data.imbalance_ratio") is not None:
        tags.append("imbalanced")
    return [tag[:64] for tag in tags]  # W&B's limit on a tag


def sweep_group_name(
    sweep_dir: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None
) -> str:
    """The W&B group of a sweep: its output dir, relative to ``cwd`` when inside it.

    Every job of a Hydra multirun shares ``hydra.sweep.dir`` (Hydra copies the resolver cache,
    so ``${now:…}`` there is the sweep's start time in every job); two sweeps never share it.
    Kept to W&B's 128 characters by dropping leading path components.
    """
    path = Path(sweep_dir)
    if cwd is not None and path.is_absolute():
        try:
            path = path.relative_to(Path(cwd))
        except ValueError:
            pass
    name = path.as_posix()
    if len(name) > MAX_GROUP_CHARS:
        name = name[-MAX_GROUP_CHARS:].split("/", 1)[-1]
    return name


def run_group(hydra_cfg: Any = None) -> str | None:
    """The sweep group of the current job (``sweep_group_name``), or None outside a multirun.

    ``$RR_WANDB_GROUP`` wins when set (to group runs started by separate commands).
    ``hydra_cfg`` defaults to ``HydraConfig.get()``; without Hydra there is no group.
    """
    if os.environ.get(GROUP_ENV):
        return os.environ[GROUP_ENV]
    if hydra_cfg is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
    mode = _select(hydra_cfg, "mode")
    if mode is None or getattr(mode, "name", str(mode)) != "MULTIRUN":
        return None
    sweep_dir = _select(hydra_cfg, "sweep.dir")
    if sweep_dir is None:
        return None
    return sweep_group_name(str(sweep_dir), _select(hydra_cfg, "runtime.cwd"))


def has_api_key(host: str | None = None) -> bool:
    """True when W&B can authenticate without a prompt: ``$WANDB_API_KEY``, or a netrc entry
    (``$NETRC`` or ``~/.netrc``, as ``wandb login`` writes it) for the API host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = host or os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST
    hostname = urlparse(host).hostname or host
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(hostname) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_offline() -> bool:
    """Whether the run logs offline: ``$WANDB_MODE`` when it says ``online``/``offline``, else
    offline exactly when no API key is configured (``has_api_key``).

    Offline runs never prompt and never touch the network; upload them later with
    ``wandb sync``.
    """
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun"):
        return True
    if mode in ("online", "run"):
        return False
    return not has_api_key()


def resumed_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint a training run resumes from (``ckpt_path``), or None.

    Only ``task_name=train`` resumes: evaluate and predict also take a ``ckpt_path``, but they
    are W&B runs of their own, not a continuation of the training run. ``ckpt_path=auto``
    resumes in the same folder, where the logger finds the id in ``wandb_run_id.txt``.
    """
    if _select(cfg, "task_name") != "train":
        return None
    path = _select(cfg, "ckpt_path")
    return None if path in (None, "", "auto") else str(path)


def register_resolvers() -> None:
    """Register the ``rr_*`` resolvers of ``conf/logger/wandb.yaml`` (idempotent).

    Also sets ``WANDB_SILENT`` (unless set) so W&B writes no banners into the training log.
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    resolvers = {
        "rr_run_name": lambda *, _root_: run_name(_root_),
        "rr_run_tags": lambda *, _root_: run_tags(_root_),
        "rr_run_group": lambda: run_group(),
        "rr_wandb_offline": lambda: wandb_offline(),
        "rr_config": lambda *, _root_: resolved_config(_root_),
        "rr_resumed_checkpoint": lambda *, _root_: resumed_checkpoint(_root_),
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


def finish_wandb(exit_code: int | None = None) -> None:
    """Finish the live W&B run, if any (call it in ``train.py``'s ``finally``).

    A non-zero ``exit_code`` marks the run failed. For an offline run, logs where it was saved
    and the ``wandb sync`` command that uploads it. A run of ``ResilientWandbLogger`` waits at
    most its ``finish_timeout`` for the last uploads (server gone mid-run): then this warns with
    the ``wandb sync --include-online`` command that uploads the rest from the run's local
    transaction log, and returns. Does not import wandb when no run used it.
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    offline = bool(getattr(run.settings, "_offline", False))
    sync_dir = getattr(run.settings, "sync_dir", None)
    try:
        run.finish(exit_code=exit_code)
    except TimeoutError:  # finish_timeout_raises (set by ResilientWandbLogger)
        log.warning(
            "W&B could not upload the end of the run within finish_timeout=%gs; it is saved"
            " in %s. Upload the rest later with: wandb sync --include-online %s",
            run.settings.finish_timeout,
            sync_dir,
            sync_dir,
        )
        return
    if offline and sync_dir:
        log.info("W&B run saved offline in %s; upload it with: wandb sync %s", sync_dir, sync_dir)
