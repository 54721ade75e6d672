"""Every ``_target_`` of a run config must import, e.g. an unknown miner class
(``miner._target_=pytorch_metric_learning.miners.Nope``) is named before anything is built."""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig, ListConfig

from ranking_reg.config.rules import describe, kind
from ranking_reg.utils.errors import ConfigError


def locate(path: str) -> Any:
    """The object at the import path ``module.Name`` (what ``_target_`` names), or ImportError /
    AttributeError saying which part is not there."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if missing and (module_name == missing or module_name.startswith(missing + ".")):
                continue  # not a module: the rest is an attribute path
            raise  # the module exists but needs one that is not installed
        for attribute in parts[end:]:
            if not hasattr(found, attribute):
                raise AttributeError(f"{module_name} has no {attribute!r}")
            found = getattr(found, attribute)
            module_name = f"{module_name}.{attribute}"
        return found
    raise ModuleNotFoundError(f"no module named {parts[0]!r}", name=parts[0])


def _target_keys(node: DictConfig | ListConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every ``_target_`` outside interpolations and ``hydra``."""
    found: list[tuple[str, Any]] = []
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if prefix == "" and key == "hydra":
            continue
        child = node._get_node(key)
        if child is None or child._is_interpolation() or child._is_missing():
            continue
        if key == "_target_":
            found.append((f"{prefix}{key}", child._value()))
        elif isinstance(child, (DictConfig, ListConfig)):
            found += _target_keys(child, f"{prefix}{key}.")
    return found


def check_targets(cfg: DictConfig) -> None:
    """ConfigError naming the first ``_target_`` that does not import (``miner._target_=...Nope``)."""
    for key, target in _target_keys(cfg):
        accepts = "expects the import path of a class or function (package.module.Name)"
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{key}={describe(target)}: {accepts}; got {kind(target)}.")
        try:
            locate(target)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"{key}={target}: {accepts}; {error}.") from None
