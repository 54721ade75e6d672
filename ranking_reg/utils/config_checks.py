"""Start-up validation of a run config: impossible values end in one clear paragraph.

``validate_config(cfg)`` runs at the top of ``train`` and ``evaluate``, before any data is read or
any model is built. It checks, in this order:

1. keys left as ``???`` (the chosen config needs a value), named with the command that gives one;
2. the type and range of every documented key present in ``cfg``: the table in
   :mod:`ranking_reg.config.schema` (one rule per key, checked nowhere else);
3. every ``_target_`` imports (``miner._target_=pytorch_metric_learning.miners.Nope`` is named);
4. the one rule that spans config groups: a triplet regularizer needs at least two classes per
   P x K batch (``data.batch_size`` / ``data.samples_per_class`` >= 2).

Rules of several keys of one owner live with that owner and run when it is built, right after
this: the P x K batch shape in ``FGVRDataModule``, ``regularizer.margin=soft`` with the hard miner
in ``TripletRegularizer``. Hydra itself rejects an unknown group option (``data=foo``) with the
list of available ones.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ranking_reg.config.schema import check_schema
from ranking_reg.config.targets import check_targets
from ranking_reg.utils.errors import ConfigError

# task_name -> the command that runs it (for the ``???`` message)
_ENTRY_POINTS = {
    "train": "ranking_reg.train",
    "eval": "ranking_reg.evaluate",
    "predict": "ranking_reg.predict",
    "index": "ranking_reg.index",
}


def _missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys left as ``???``, found without resolving any interpolation."""
    found: list[str] = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            found.append(path)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_interpolation():
            found += _missing_keys(child, f"{path}.")
    return found


def _from_checkpoint(cfg: DictConfig) -> set[str]:
    """``evaluate``'s default data (``data=_checkpoint``, no ``name``) is the checkpoint's: there a
    null key means "the checkpoint's value", so only the keys given a value are checked."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or "name" in data:
        return set()
    return {f"data.{key}" for key in data if data._get_node(key)._is_none()}


def _is_triplet(regularizer: object) -> bool:
    if not isinstance(regularizer, DictConfig):
        return False
    target = str(regularizer.get("_target_") or "")
    return target.rsplit(".", 1)[-1] == "TripletRegularizer" or regularizer.get("name") == "triplet"


def _check_triplet_batch(cfg: DictConfig) -> None:
    """A triplet needs a negative from a second class: P = batch / K must be >= 2."""
    data = cfg.get("data")
    if not _is_triplet(cfg.get("regularizer")) or not isinstance(data, DictConfig):
        return
    batch, k = data.get("batch_size"), data.get("samples_per_class")
    if not (isinstance(batch, int) and isinstance(k, int)) or k > batch or batch % k:
        return  # the shape of the batch itself is FGVRDataModule's rule
    if batch // k < 2:
        raise ConfigError(
            f"data.batch_size={batch} with data.samples_per_class={k} gives one class per batch:"
            " a triplet needs a negative from a second class; use a batch of at least 2 x K"
            f" (data.batch_size={2 * k}) or another regularizer."
        )


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first impossible option of ``cfg``."""
    missing = _missing_keys(cfg)
    if missing:
        entry = _ENTRY_POINTS.get(str(cfg.get("task_name")), "ranking_reg.train")
        raise ConfigError(
            f"{', '.join(missing)} must be given (the chosen config leaves it as ???), e.g."
            f" python -m {entry} {missing[0]}=..."
        )
    check_schema(cfg, skip=_from_checkpoint(cfg))
    check_targets(cfg)
    _check_triplet_batch(cfg)
