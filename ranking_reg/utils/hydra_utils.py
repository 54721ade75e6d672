"""Hydra helpers shared by the entry points: building objects with clear errors, the resolved
run config, and which command-line overrides the user gave."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ranking_reg.utils.errors import ConfigError, find_user_error


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(node)``; a failure is a :class:`ConfigError` naming ``key`` (the config
    group) unless a UserError of ours caused it, which is raised as it is."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = find_user_error(error)
        if cause is not None:
            raise cause from None
        detail = " ".join(str(error).split())
        raise ConfigError(
            f"{key}: could not build it from the config ({detail}). Check the {key} options"
            f" (python -m ranking_reg.train --cfg job prints them)."
        ) from None


def task_overrides() -> list[str]:
    """The command-line overrides of the running Hydra app ([] outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def resolved_config(root: DictConfig, exclude: tuple[str, ...] = ("logger",)) -> dict[str, Any]:
    """The run config with interpolations resolved, as plain containers, minus ``exclude``.

    ``logger`` is left out because this is what the logger itself is configured with (resolving
    it would recurse); ``hydra_overrides`` records the command-line overrides when Hydra runs.
    """
    out: dict[str, Any] = {}
    for key in root.keys():
        if key in exclude:
            continue
        if OmegaConf.is_missing(root, key):
            out[str(key)] = "???"
            continue
        value = root[key]
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        out[str(key)] = value
    overrides = task_overrides()
    if overrides:
        out["hydra_overrides"] = overrides
    return out
