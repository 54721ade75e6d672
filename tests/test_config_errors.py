"""Wrong values of documented keys end in one paragraph naming the key and what it accepts.

In-process and fast: compose the real config, call ``validate_config`` (or build the real data
module / parser), catch the UserError. One subprocess test proves the CLI wiring (exit 2, no
traceback).
"""

from __future__ import annotations

import warnings

import dataset_fixtures as fx
import pytest
import torch
from conftest import CONF, compose_config, run_cli
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ranking_reg.config.schema import SCHEMA
from ranking_reg.data import FGVRDataModule
from ranking_reg.data.registry import build_dataset
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import (
    ConfigError,
    DataError,
    UserError,
    find_user_error,
    format_user_error,
)


def _options(group: str) -> list[str]:
    # files starting with "_" are shared bases (or evaluate's placeholder), not options
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def config_error(overrides: list[str], name: str = "train") -> str:
    """The one-paragraph message validate_config gives for ``overrides``."""
    cfg = compose_config(overrides, name=name)
    with pytest.raises(ConfigError) as raised:
        validate_config(cfg)
    return one_paragraph(raised.value)


def one_paragraph(error: UserError) -> str:
    paragraph = format_user_error(error)
    assert "\n\n" not in paragraph and "Traceback" not in paragraph
    return " ".join(paragraph.split())


# -- the cases that used to end in tracebacks --------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "regularizer.weight=abc",
            "regularizer.weight=abc: expects a number >= 0 (λ; the paper: 1 for triplet, 0.003"
            " for center loss); got a string.",
        ),
        ("seed=-1", "seed=-1: expects an integer in [0, 4294967295]; got -1."),
        (
            "trainer.max_epochs=-5",
            "trainer.max_epochs=-5: expects an integer >= -1 (-1 = no limit); got -5.",
        ),
        (
            "trainer.max_epochs=1.5",
            "trainer.max_epochs=1.5: expects an integer >= -1 (-1 = no limit); got a float.",
        ),
    ],
)
def test_former_tracebacks_are_one_paragraph(override, message):
    paragraph = config_error([override])
    assert paragraph == f"ranking_reg configuration error: {message}"


# -- one bad value per rule family -------------------------------------------------------------

BAD_VALUES = [
    # (overrides, key=value as named, what it accepts, what it got)
    (["data.batch_size=0"], "data.batch_size=0", "an integer >= 1", "got 0"),
    (["data.batch_size=true"], "data.batch_size=true", "an integer >= 1", "got a boolean"),
    (["data.num_workers=2.0"], "data.num_workers=2.0", "an integer >= 0", "got a float"),
    (["data.img_size=4"], "data.img_size=4", "an integer >= 8", "got 4"),
    (["data.resize_size=x"], "data.resize_size=x", "an integer >= 8", "got a string"),
    (["data.pin_memory=1"], "data.pin_memory=1", "true or false", "got an integer"),
    (["data.imbalance_ratio=0.5"], "data.imbalance_ratio=0.5", "a number >= 1", "got 0.5"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0", "a number in [0, 1)", "got 1.0"),
    (["data.crop_scale=[0.9,0.1]"], "data.crop_scale=[0.9, 0.1]", "0 < min <= max <= 1", "got"),
    (["data.crop_scale=0.5"], "data.crop_scale=0.5", "a list [min, max]", "got a float"),
    (
        ["data=aircraft", "data.level=model"],
        "data.level=model",
        "variant|family|manufacturer",
        "got model",
    ),
    (["data=aircraft", "data.use_bbox=0"], "data.use_bbox=0", "true or false", "got an integer"),
    (["data=aircraft", "data.decode_size=0"], "data.decode_size=0", "an integer >= 8", "got 0"),
    (["data=aircraft", "data.cache_size=0"], "data.cache_size=0", "an integer >= 1", "got 0"),
    (["data.normalize_on_device=2"], "data.normalize_on_device=2", "true or false", "got"),
    (
        ["logger=wandb", "logger.wandb.init_timeout=0"],
        "logger.wandb.init_timeout=0",
        "a number > 0",
        "got 0",
    ),
    (
        ["data=folder", "data.root=/x", "data.test_fraction=1"],
        "data.test_fraction=1",
        "a number in [0, 1)",
        "got 1",
    ),
    (["backbone.pretrained=maybe"], "backbone.pretrained=maybe", "true or false", "got a string"),
    (["regularizer.weight=inf"], "regularizer.weight=inf", "a number >= 0", "got inf"),
    (["regularizer.weight=null"], "regularizer.weight=null", "a number >= 0", "got null"),
    (["regularizer.margin=-0.1"], "regularizer.margin=-0.1", '"soft"', "got -0.1"),
    (["regularizer.margin=hard"], "regularizer.margin=hard", "a number >= 0", "got hard"),
    (["regularizer.margin=true"], "regularizer.margin=true", '"soft"', "got a boolean"),
    (
        ["regularizer=center", "regularizer.alpha=1.5"],
        "regularizer.alpha=1.5",
        "in [0, 1]",
        "got 1.5",
    ),
    (
        ["regularizer.cross_device=no"],
        "regularizer.cross_device=no",
        "true or false",
        "got a string",
    ),
    (["model.net.embedding_dim=0"], "model.net.embedding_dim=0", "an integer >= 1", "got 0"),
    (
        ["model.net.embedding_source=gap"],
        "model.net.embedding_source=gap",
        "flatten|pooled",
        "got gap",
    ),
    (["model.channels_last=1"], "model.channels_last=1", "true or false", "got an integer"),
    (["optimizer.lr=0"], "optimizer.lr=0", "a number > 0", "got 0"),
    (["optimizer.momentum=1"], "optimizer.momentum=1", "a number in [0, 1)", "got 1"),
    (["optimizer.weight_decay=-1e-4"], "optimizer.weight_decay=-0.0001", "a number >= 0", "got"),
    (["scheduler.power=0"], "scheduler.power=0", "a number > 0", "got 0"),
    (
        ["scheduler=cosine", "scheduler.warmup_steps=-1"],
        "scheduler.warmup_steps=-1",
        "an integer >= 0",
        "got -1",
    ),
    (["trainer.max_epochs=true"], "trainer.max_epochs=true", "an integer >= -1", "got a boolean"),
    (
        ["trainer.limit_train_batches=1.5"],
        "trainer.limit_train_batches=1.5",
        "a float in [0, 1]",
        "got 1.5",
    ),
    (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches=-1", "an integer >= 0", "got -1"),
    (
        ["trainer.limit_test_batches=all"],
        "trainer.limit_test_batches=all",
        "an integer >= 0",
        "got a string",
    ),
    (
        ["trainer.check_val_every_n_epoch=0"],
        "trainer.check_val_every_n_epoch=0",
        "an integer >= 1",
        "got 0",
    ),
    (
        ["trainer.num_sanity_val_steps=-2"],
        "trainer.num_sanity_val_steps=-2",
        "an integer >= -1",
        "got -2",
    ),
    (
        ["trainer.accelerator=gpux"],
        "trainer.accelerator=gpux",
        "cpu|gpu|cuda|mps|tpu|auto",
        "got gpux",
    ),
    (["trainer.precision=bf16-mix"], "trainer.precision=bf16-mix", "bf16-mixed", "got bf16-mix"),
    (["trainer.devices=0"], "trainer.devices=0", '"auto", or a list of device ids', "got 0"),
    (["trainer.devices=[-2]"], "trainer.devices=[-2]", "a list of device ids", "got [-2]"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0", "an integer >= 1", "got 0"),
    (["trainer.deterministic=maybe"], "trainer.deterministic=maybe", '"warn"', "got maybe"),
    (["ckpt_path=5"], "ckpt_path=5", "a checkpoint path", "got an integer"),
    (["test=1"], "test=1", "true or false", "got an integer"),
    (["ckpt_path=''"], "ckpt_path=''", "a checkpoint path", "got ''"),
]


@pytest.mark.parametrize(("overrides", "named", "accepts", "got"), BAD_VALUES)
def test_bad_value_names_the_key_and_what_it_accepts(overrides, named, accepts, got):
    paragraph = config_error(overrides)
    assert paragraph.startswith(f"ranking_reg configuration error: {named}: expects ")
    assert accepts in paragraph and got in paragraph.rsplit(";", 1)[1]


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_epochs=-1",
        "trainer.limit_train_batches=4",
        "trainer.limit_train_batches=0.25",
        "trainer.check_val_every_n_epoch=null",
        "trainer.devices=-1",
        "trainer.devices=auto",
        "trainer.devices=[0,1]",
        "trainer.devices='0,1'",
        "trainer.precision=bf16-mixed",
        "trainer.precision=16",
        "trainer.deterministic=warn",
        "regularizer.weight=0",
        "regularizer.weight=2",  # an integer is a number
        "regularizer.margin=0",
        "data.imbalance_ratio=1",
        "data.resize_size=null",
        "seed=4294967295",
    ],
)
def test_edge_values_inside_the_rules_pass(override):
    validate_config(compose_config([override]))


def test_schema_covers_every_documented_key():
    documented = """seed ckpt_path test monitor
        data.batch_size data.samples_per_class data.img_size data.resize_size data.eval_batch_size
        data.num_workers data.pin_memory data.persistent_workers data.imbalance_ratio
        data.val_fraction data.split_seed data.flip data.crop_scale data.many_shot data.few_shot
        data.skip_corrupt data.decode_size data.level data.crop_banner data.use_bbox
        data.list_file data.test_fraction data.root data.augment data.class_sampling
        test_ckpt metrics.ks metrics.knn.gallery metrics.knn.ks metrics.knn.fuse_alpha
        metrics.knn.fuse_grid data.classes data.cache_size data.cache_dir data.normalize_on_device
        logger.wandb.init_timeout logger.wandb.finish_timeout
        backbone.pretrained backbone.weights_file backbone.input_size
        regularizer.weight regularizer.margin regularizer.alpha regularizer.cross_device
        model.net.embedding_dim model.net.embedding_source model.channels_last model.compile
        optimizer.lr optimizer.momentum optimizer.weight_decay
        scheduler.power scheduler.warmup_steps
        trainer.max_epochs trainer.max_steps trainer.limit_train_batches trainer.limit_val_batches
        trainer.limit_test_batches trainer.check_val_every_n_epoch trainer.log_every_n_steps
        trainer.num_sanity_val_steps trainer.accelerator trainer.precision trainer.devices
        trainer.num_nodes""".split()
    assert set(documented) <= set(SCHEMA)
    assert all(rule.accepts for rule in SCHEMA.values())


def test_absent_keys_are_skipped():
    validate_config(OmegaConf.create({"seed": 0, "data": {"batch_size": 8}}))


# -- every shipped option is valid ---------------------------------------------------------------


# Every option of every group is composed and validated in tests/test_config.py (one compose
# per option for the whole suite).


def test_evaluate_config_passes_with_the_checkpoints_data():
    # data=_checkpoint: null keys mean "the checkpoint's value"; given ones are checked
    validate_config(compose_config(["ckpt_path=last.ckpt"], name="eval"))
    validate_config(compose_config(["ckpt_path=last.ckpt", "data=aircraft"], name="eval"))
    paragraph = config_error(["ckpt_path=x", "data.batch_size=3.5"], name="eval")
    assert "data.batch_size=3.5: expects an integer >= 1" in paragraph


def test_missing_value_names_the_key_and_the_command():
    assert "ckpt_path must be given" in config_error([], name="eval")
    assert "python -m ranking_reg.evaluate ckpt_path=..." in config_error([], name="eval")
    assert "python -m ranking_reg.train data.list_file=..." in config_error(["data=csv"])


# -- rules of several keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.samples_per_class=64"],
            "data.samples_per_class=64 is larger than data.batch_size=32",
        ),
        (
            ["data.batch_size=30"],
            "data.batch_size=30 is not a multiple of data.samples_per_class=4",
        ),
    ],
)
def test_pk_batch_shape_is_the_data_modules_rule(overrides, message):
    cfg = compose_config(overrides)
    validate_config(cfg)  # not the schema's: checked once, where the data module is built
    with pytest.raises(Exception) as raised:  # Hydra's instantiate wraps it
        instantiate(cfg.data)
    error = find_user_error(raised.value)
    assert isinstance(error, ConfigError) and message in one_paragraph(error)


def test_triplet_needs_two_classes_per_batch():
    paragraph = config_error(["data.batch_size=4", "data.samples_per_class=4"])
    assert "one class per batch" in paragraph and "data.batch_size=8" in paragraph
    validate_config(compose_config(["regularizer=none", "data.batch_size=4"]))
    validate_config(compose_config(["regularizer=center", "data.batch_size=4"]))


def test_soft_margin_with_the_miner_is_left_to_the_regularizer():
    # regularizer.margin=soft is a valid value; whether the miner takes it is
    # TripletRegularizer's rule, checked once, when it is built
    validate_config(compose_config(["regularizer.margin=soft"]))
    validate_config(compose_config(["regularizer.margin=soft", "miner=hard"]))


# -- unknown miners -------------------------------------------------------------------------------


def test_unknown_miner_option_lists_the_options():
    with pytest.raises(HydraException) as raised:
        compose_config(["miner=nope"])
    assert "miner/nope" in str(raised.value) and "semihard" in str(raised.value)


def test_unknown_miner_class_names_the_key():
    paragraph = config_error(["miner._target_=pytorch_metric_learning.miners.Nope"])
    assert (
        "miner._target_=pytorch_metric_learning.miners.Nope: expects the import path" in paragraph
    )
    assert "has no 'Nope'" in paragraph
    paragraph = config_error(["miner._target_=no_such_package.Miner"])
    assert "no_such_package" in paragraph


# -- the data module and the parsers --------------------------------------------------------------


def test_digits_need_no_root():
    module = FGVRDataModule(name="digits", num_workers=0)
    module.setup("fit")
    assert module.num_classes == 10 and len(module.test_dataset) == 450


def test_image_dataset_without_root_names_data_root():
    module = FGVRDataModule(name="flowers102", num_workers=0)
    with pytest.raises(ConfigError) as raised:
        module.setup("fit")
    assert "data=flowers102 reads its images under data.root" in one_paragraph(raised.value)


def test_non_utf8_list_file_names_the_file_and_the_encoding(tmp_path):
    image = fx.write_jpeg(str(tmp_path / "a.jpg"))
    list_file = tmp_path / "latin1.csv"
    list_file.write_bytes(f"path,label\n{image},caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError) as raised:
        build_dataset("csv", str(tmp_path), "train", list_file="latin1.csv")
    paragraph = one_paragraph(raised.value)
    assert str(list_file) in paragraph and "is not UTF-8 text: line 2" in paragraph


def test_utf8_list_file_with_a_byte_order_mark_reads(tmp_path):
    images = [fx.write_jpeg(str(tmp_path / f"{i}.jpg"), seed=i) for i in range(4)]
    rows = [(images[0], "café", "train"), (images[1], "thé", "train")]
    rows += [(images[2], "café", "test"), (images[3], "thé", "test")]
    text = "path,label,split\n" + "".join(",".join(r) + "\n" for r in rows)
    (tmp_path / "bom.csv").write_bytes(text.encode("utf-8-sig"))
    train = build_dataset("csv", str(tmp_path), "train", list_file="bom.csv")
    assert train.classes == ["café", "thé"] and len(train) == 2


def test_pin_memory_only_with_a_gpu(monkeypatch):
    module = FGVRDataModule(name="digits", num_workers=0, pin_memory=True)
    module.setup("fit")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when pinning without an accelerator
        loader = module.val_dataloader()
        next(iter(loader))
    assert loader.pin_memory is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert module.val_dataloader().pin_memory is True


# -- the CLI wiring -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_bad_value_exits_2_with_one_paragraph(tmp_path):
    result = run_cli("ranking_reg.train", "regularizer.weight=abc", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    paragraph = result.stderr.strip()
    assert paragraph.startswith("ranking_reg configuration error: regularizer.weight=abc: expects")
    assert "\n\n" not in paragraph and "got a string." in paragraph
    assert not (tmp_path / "metrics.json").exists()
