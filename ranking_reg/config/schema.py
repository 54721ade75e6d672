"""The schema of the run config: every documented key with its type, range and what it accepts.

One declarative table, :data:`SCHEMA`, maps a dotted key (``trainer.max_epochs``) to a
:class:`Rule`. :func:`check_schema` looks each key up in a composed config and raises a
:class:`ConfigError` for the first value outside its rule, in one sentence naming the key, what it
accepts and what it got::

    trainer.max_epochs=1.5: expects an integer >= -1 (-1 = no limit); got a float.

The table holds the rules of single keys only (types and ranges, in the vocabulary of
:mod:`ranking_reg.config.rules`); a rule that needs several keys together lives with the code
that owns those keys (the P x K batch in ``FGVRDataModule``, ``margin=soft`` with the miner in
``TripletRegularizer``). A key absent from the composed config is skipped: configs differ between
runs (``evaluate`` has no regularizer, digits no ``data.level``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Container, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ranking_reg.config.rules import (
    Rule,
    any_of,
    boolean,
    choice,
    integer,
    is_int,
    is_number,
    number,
    string,
)
from ranking_reg.config.rules import check_value as check_rule
from ranking_reg.data.choices import AUGMENTS, CLASS_SAMPLING, GALLERIES
from ranking_reg.data.class_subset import CLASS_SUBSETS
from ranking_reg.data.parsers.aircraft import LEVELS as AIRCRAFT_LEVELS
from ranking_reg.models.limits import EMBEDDING_SOURCES, MIN_IMG_SIZE
from ranking_reg.utils.errors import ConfigError

__all__ = ["SCHEMA", "check_schema", "check_value"]


def _crop_scale(value: Any) -> bool:
    return len(value) == 2 and all(is_number(v) for v in value) and 0 < value[0] <= value[1] <= 1


def _unit_numbers(value: Any) -> bool:
    return len(value) > 0 and all(is_number(v) and 0 <= v <= 1 for v in value)


def _positive_ints(value: Any) -> bool:
    return all(is_int(k) and k >= 1 for k in value)


def _device_ids(value: Any) -> bool:
    if isinstance(value, str):  # Lightning's "0,1" / "2" / "-1" forms
        parts = [p.strip() for p in value.split(",") if p.strip()]
        return bool(parts) and all(p.lstrip("-").isdigit() for p in parts)
    return bool(value) and all(is_int(v) and v >= 0 for v in value)


@functools.lru_cache(maxsize=1)
def _lightning_precisions() -> tuple[Any, ...]:
    """Every ``Trainer(precision=...)`` value Lightning accepts (its own list when importable)."""
    try:
        from typing import get_args

        from lightning.fabric.connector import _PRECISION_INPUT

        values: list[Any] = []
        for literal in get_args(_PRECISION_INPUT):
            values += list(get_args(literal))
        if values:
            return tuple(values)
    except (ImportError, TypeError):  # a Lightning that renamed its private alias
        pass
    return ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", 16, 32, 64)


BATCH_LIMIT = any_of(
    integer(0),
    number(0, 1),
    accepts="an integer >= 0 (batches) or a float in [0, 1] (a fraction of the batches)",
)
SEED = integer(0, 2**32 - 1)
EMBEDDING_DIM = integer(1)
# Values shared with the objects that own them, so the two checks cannot disagree.
EMBEDDING_SOURCE = choice(
    *EMBEDDING_SOURCES, note="flatten: the paper's head on the feature map; pooled: on GAP"
)

SCHEMA: dict[str, Rule] = {
    # -- top level (train.yaml, eval.yaml)
    "seed": SEED,
    "ckpt_path": string("a checkpoint path or auto", null="start a new run"),
    "test": boolean("run the test split after fitting"),
    "monitor": string("a logged metric name such as val/acc"),
    "test_ckpt": choice("auto", "best", "last", note="which weights the test scores"),
    "metrics.ks": Rule(
        "a non-empty list of integers >= 1 (Recall@K; the paper: 1, 4, 8, 16)",
        lambda v: isinstance(v, (list, tuple)) and len(v) > 0,
        _positive_ints,
    ),
    # kNN classification at test time (evaluate: null = the checkpoint's setting)
    "metrics.knn.gallery": choice(
        *GALLERIES, note="train: the training split is the kNN gallery; none: no kNN metrics"
    ),
    "metrics.knn.ks": Rule(
        "a non-empty list of integers >= 1 (test/knn_acc@k), or null in evaluate (the"
        " checkpoint's)",
        lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) > 0),
        lambda v: v is None or _positive_ints(v),
    ),
    "metrics.knn.fuse_alpha": number(
        0,
        1,
        note="the softmax + kNN fusion weight without a validation split",
        null="evaluate: the checkpoint's",
    ),
    "metrics.knn.fuse_grid": Rule(
        "a non-empty list of numbers in [0, 1] (the alphas tried on the validation split), or"
        " null in evaluate (the checkpoint's)",
        lambda v: v is None or isinstance(v, (list, tuple)),
        lambda v: v is None or _unit_numbers(v),
    ),
    # -- data (conf/data/*.yaml)
    "data.name": string("a dataset name"),
    "data.root": string("a folder path", null="only for data=digits"),
    "data.batch_size": integer(1, note="P x K images"),
    "data.samples_per_class": integer(1, note="K images of each class in a batch; the paper: 4"),
    "data.img_size": integer(MIN_IMG_SIZE, note="pixels"),
    "data.resize_size": integer(8, note="pixels", null="img_size * 256 / 224"),
    "data.eval_batch_size": integer(1, null="2 x data.batch_size"),
    "data.num_workers": integer(0, note="0 = load in the main process"),
    "data.pin_memory": boolean(),
    "data.persistent_workers": boolean(),
    "data.imbalance_ratio": number(
        1, note="largest / smallest train class", null="the balanced split"
    ),
    "data.val_fraction": number(
        0,
        1,
        hi_open=True,
        note="the share of train held out for validation; 0 = no validation split",
    ),
    "data.split_seed": SEED,
    "data.seed": SEED,
    "data.flip": boolean(),
    "data.crop_scale": Rule(
        "a list [min, max] of numbers with 0 < min <= max <= 1",
        lambda v: isinstance(v, (list, tuple)),
        _crop_scale,
    ),
    "data.augment": choice(
        *AUGMENTS,
        note="rrc: RandomResizedCrop; resize_crop: the authors' square resize + crop;"
        " inception: TF-slim's",
    ),
    "data.class_sampling": choice(
        *CLASS_SAMPLING,
        note="uniform: every class equally often, the authors'; proportional: by class size",
    ),
    "data.many_shot": integer(0, note="train images per class above which a class is many-shot"),
    "data.few_shot": integer(0, note="train images per class below which a class is few-shot"),
    "data.classes": choice(
        *CLASS_SUBSETS,
        note="first_half: class ids [0, C//2), second_half: [C//2, C), relabelled from 0",
    ),
    "data.gallery": choice(*GALLERIES, note="set by metrics.knn.gallery"),
    "data.skip_corrupt": boolean(),
    "data.decode_size": integer(8, note="pixels of reduced-scale JPEG decoding", null="off"),
    "data.cache_size": integer(
        1, note="shorter side in pixels of the prepared image cache", null="off"
    ),
    "data.cache_dir": string("a folder path", null="<data.root>/.rr_cache/<dataset>-<cache_size>"),
    "data.normalize_on_device": boolean(
        note="true: workers hand uint8 images over, float + ImageNet normalisation on the device"
    ),
    "data.level": choice(*AIRCRAFT_LEVELS, note="aircraft's label granularity"),
    "data.crop_banner": boolean(),
    "data.use_bbox": boolean(),
    "data.list_file": string("a CSV file path", null=""),
    "data.test_fraction": number(0, 1, hi_open=True, note="the per-class test share"),
    # -- backbone
    "backbone.name": string("a backbone name"),
    "backbone.model_tag": string("a timm weight tag", null="the network's default"),
    "backbone.pretrained": boolean(),
    "backbone.weights_file": string("a weights file path", null="timm's cache"),
    "backbone.input_size": integer(8, note="pixels"),
    "backbone.img_size": integer(MIN_IMG_SIZE, note="pixels; follows data.img_size"),
    # -- regularizer
    "regularizer.name": string("a regularizer label"),
    "regularizer.weight": number(0, note="λ; the paper: 1 for triplet, 0.003 for center loss"),
    "regularizer.margin": any_of(
        number(0),
        choice("soft"),
        accepts='a number >= 0 (the paper: 0.2) or "soft" (softplus, hard miner only)',
    ),
    "regularizer.alpha": number(0, 1, note="the centre update rate"),
    "regularizer.cross_device": boolean(),
    # regularizer=pml and its presets (ranking_reg/losses/pml_regularizer.py)
    "regularizer.memory_size": integer(
        1, note="embeddings in PML's CrossBatchMemory, >= the global batch", null="no memory"
    ),
    "regularizer.param_lr_scale": number(
        0, lo_open=True, note="lr of the loss's own parameters (proxies, centres) / optimizer.lr"
    ),
    "regularizer.param_weight_decay": number(0, note="for the loss's own parameters"),
    # -- model (conf/model/two_head.yaml: the net's keys under model.net)
    "model.net.num_classes": integer(1, null="taken from the data"),
    "model.net.embedding_dim": EMBEDDING_DIM,
    "model.net.embedding_source": EMBEDDING_SOURCE,
    "model.channels_last": boolean(),
    "model.compile": boolean(),
    # -- optimizer, scheduler
    "optimizer.lr": number(0, lo_open=True),
    "optimizer.momentum": number(0, 1, hi_open=True),
    "optimizer.weight_decay": number(0),
    "scheduler.power": number(0, lo_open=True),
    "scheduler.warmup_steps": integer(0),
    # -- trainer (Lightning Trainer arguments)
    "trainer.max_epochs": integer(-1, note="-1 = no limit"),
    "trainer.max_steps": integer(-1, note="-1 = no limit"),
    "trainer.limit_train_batches": BATCH_LIMIT,
    "trainer.limit_val_batches": BATCH_LIMIT,
    "trainer.limit_test_batches": BATCH_LIMIT,
    "trainer.check_val_every_n_epoch": integer(1, null="validate by steps only"),
    "trainer.log_every_n_steps": integer(1),
    "trainer.num_sanity_val_steps": integer(-1, note="-1 = the whole validation split"),
    "trainer.accelerator": choice("cpu", "gpu", "cuda", "mps", "tpu", "auto"),
    # Lightning's own list, read when a precision is checked (importing Lightning takes seconds)
    "trainer.precision": Rule(
        "a Lightning precision such as 32-true, bf16-mixed, 16-mixed, 64-true (or 16, 32, 64)",
        lambda v: isinstance(v, (str, int)) and not isinstance(v, bool),
        lambda v: v in _lightning_precisions(),
    ),
    "trainer.devices": any_of(
        Rule("", is_int, lambda v: v >= 1 or v == -1),
        choice("auto"),
        Rule("", lambda v: isinstance(v, (list, str)), _device_ids),
        accepts='a number of devices >= 1, -1 (all), "auto", or a list of device ids',
    ),
    "trainer.num_nodes": integer(1),
    "trainer.strategy": string("a strategy name such as auto or ddp"),
    "trainer.deterministic": any_of(boolean(), choice("warn"), accepts='true, false or "warn"'),
    "trainer.benchmark": boolean(null="Lightning's default"),
    "trainer.sync_batchnorm": boolean(),
    "trainer.use_distributed_sampler": boolean(),
    "trainer.enable_progress_bar": boolean(),
    "trainer.enable_model_summary": boolean(),
    "trainer.enable_checkpointing": boolean(),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.gradient_clip_val": number(0, null="no clipping"),
    # -- pictures (callbacks=[default] or plots); the other callbacks.plots.* keys are checked
    # by PlotOptions when the callback is built
    "callbacks.plots.n_worst_queries": integer(
        0, note="rows of the worst-query grid, lowest AP@R first; 0 = no such grid"
    ),
    # -- W&B (logger=wandb): how long a run waits for the server before going offline / at the end
    "logger.wandb.init_timeout": number(0, lo_open=True, note="seconds, then the run goes offline"),
    "logger.wandb.finish_timeout": number(0, note="seconds; 0 = wait as long as it takes"),
}

_ABSENT = object()
# the config groups the schema knows (a task may compose only some of them)
_GROUPS = {key.split(".")[0] for key in SCHEMA if "." in key}


def check_value(key: str, value: Any, rule: Rule | None = None) -> None:
    """ConfigError naming ``key`` when ``value`` is outside its rule (default ``SCHEMA[key]``)."""
    check_rule(key, value, rule or SCHEMA[key])


def _lookup(cfg: DictConfig, key: str) -> Any:
    """The resolved value of ``key``, or ``_ABSENT`` when the composed config has no such key.

    A value that points into a group this task does not compose (``data.img_size:
    ${backbone.input_size}`` under ``evaluate``, which takes the size from the checkpoint) is
    treated as absent; any other interpolation that does not resolve is a ConfigError.
    """
    parent_key, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_key, default=_ABSENT) if parent_key else cfg
    except OmegaConfBaseException:
        return _ABSENT  # the group itself is an unresolvable interpolation: its owner reports it
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return _ABSENT
    if OmegaConf.is_missing(parent, leaf):
        return _ABSENT  # reported by the ``???`` check, with the command to give it
    try:
        return parent[leaf]
    except OmegaConfBaseException as error:
        raw = parent._get_node(leaf)._value()
        roots = re.findall(r"\$\{\.*([A-Za-z_][\w-]*)", str(raw))
        if roots and any(root in _GROUPS and root not in cfg for root in roots):
            return _ABSENT
        raise ConfigError(
            f"{key}={raw} cannot be resolved ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}); give {key} a value."
        ) from None


def check_schema(
    cfg: DictConfig,
    schema: Sequence[tuple[str, Rule]] | None = None,
    skip: Container[str] = (),
) -> None:
    """Check every key of ``schema`` (default: :data:`SCHEMA`) present in ``cfg``, in order;
    keys in ``skip`` are not checked."""
    for key, rule in schema if schema is not None else SCHEMA.items():
        if key in skip:
            continue
        value = _lookup(cfg, key)
        if value is not _ABSENT:
            check_value(key, value, rule)
