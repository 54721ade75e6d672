"""Start-up validation of a run config: impossible values end in one clear paragraph.

Hydra already rejects unknown group options (``miner=foo``) with the list of available ones; this
checks the values inside the groups before any data is read or any model is built.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ranking_reg.utils.errors import ConfigError

REGULARIZERS = ("none", "triplet", "center")


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


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first impossible option of ``cfg``."""
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} must be given (the chosen config leaves it as ???), e.g."
            f" python -m ranking_reg.train {missing[0]}=..."
        )
    regularizer = cfg.regularizer
    if regularizer.name not in REGULARIZERS:
        raise ConfigError(
            f"regularizer.name={regularizer.name} is unknown; use regularizer=none, triplet or center."
        )
    if regularizer.weight is None or regularizer.weight < 0:
        raise ConfigError(
            f"regularizer.weight={regularizer.weight}: the weight λ of the regularizer must be a"
            " number >= 0 (the paper: 1.0 for triplet losses, 0.003 for center loss)."
        )
    margin = regularizer.get("margin")
    if regularizer.name == "triplet":
        if isinstance(margin, str):
            if margin != "soft" or cfg.miner.name != "hard":
                raise ConfigError(
                    f"regularizer.margin={margin}: only miner=hard takes margin=soft; otherwise"
                    " give a number >= 0 (the paper: 0.2)."
                )
        elif margin is None or margin < 0:
            raise ConfigError(
                f"regularizer.margin={margin}: the triplet margin must be a number >= 0 (the"
                " paper: 0.2 on squared distances of L2-normalised embeddings)."
            )
    data = cfg.data
    batch, k = data.batch_size, data.samples_per_class
    if not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"data.samples_per_class={k} must be a positive integer (K, the paper: 4)."
        )
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"data.batch_size={batch} must be a positive integer.")
    if k > batch:
        raise ConfigError(
            f"data.samples_per_class={k} is larger than data.batch_size={batch}: a batch holds"
            f" P classes x K images, so K must be at most the batch size (the paper: 32 = 8 x 4)."
        )
    if batch % k != 0:
        raise ConfigError(
            f"data.batch_size={batch} is not a multiple of data.samples_per_class={k}: a batch"
            f" holds P classes x K images; use e.g. data.batch_size={max(k, batch - batch % k)}."
        )
    if regularizer.name == "triplet" and batch // k < 2:
        raise ConfigError(
            f"data.batch_size={batch} with data.samples_per_class={k} gives one class per batch:"
            " a triplet needs a negative from a second class; use a batch of at least 2 x K."
        )
    ratio = data.get("imbalance_ratio")
    if ratio is not None and ratio < 1:
        raise ConfigError(
            f"data.imbalance_ratio={ratio} must be >= 1 (largest / smallest class), or null."
        )
    if data.img_size < 8:
        raise ConfigError(f"data.img_size={data.img_size} is too small; use at least 8 pixels.")
