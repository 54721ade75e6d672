"""Every config group option composes and instantiates; impossible values give one clear paragraph."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF, compose_config, run_cli
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ranking_reg.losses.regularizers import CenterRegularizer, NoRegularizer, TripletRegularizer
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import ConfigError, format_user_error


def _options(group: str) -> list[str]:
    # files starting with "_" are shared bases of a group, not options
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_default_config_is_the_embedded_digits_run():
    cfg = compose_config([])
    assert cfg.data.name == "digits" and cfg.backbone.name == "small_cnn"
    assert cfg.regularizer.name == "triplet" and cfg.miner.name == "semihard"
    assert cfg.regularizer.weight == 1.0 and cfg.regularizer.margin == 0.2
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0.9
    assert cfg.trainer.use_distributed_sampler is False
    validate_config(cfg)


@pytest.mark.parametrize("option", _options("data"))
def test_every_data_option_composes_and_instantiates(option, tmp_path):
    cfg = compose_config([f"data={option}", f"paths.data_dir={tmp_path}"], output_dir=tmp_path)
    data_cfg = cfg.data
    if OmegaConf.is_missing(data_cfg, "root"):
        data_cfg.root = str(tmp_path)
    if "list_file" in data_cfg.keys() and OmegaConf.is_missing(data_cfg, "list_file"):
        data_cfg.list_file = "list.csv"
    module = instantiate(data_cfg)
    assert module.name == data_cfg.name
    assert module.seed == cfg.seed  # the run seed drives P x K sampling and augmentation
    if option.endswith("_lt"):
        assert module.imbalance_ratio == 10
    else:
        assert module.imbalance_ratio is None


@pytest.mark.parametrize("option", _options("backbone"))
def test_every_backbone_option_composes(option):
    cfg = compose_config([f"backbone={option}"])
    assert cfg.backbone.name == option
    assert cfg.backbone.input_size == (299 if option == "inception_v4" else 224)


@pytest.mark.parametrize("option", _options("regularizer"))
def test_every_regularizer_instantiates(option):
    cfg = compose_config([f"regularizer={option}"])
    factory = instantiate(cfg.regularizer)
    regularizer = factory(miner=instantiate(cfg.miner), num_classes=10, embedding_dim=8)
    expected = {"none": NoRegularizer, "triplet": TripletRegularizer, "center": CenterRegularizer}
    assert isinstance(regularizer, expected[option])
    assert regularizer.weight == cfg.regularizer.weight


@pytest.mark.parametrize("option", _options("miner"))
def test_every_miner_instantiates(option):
    from pytorch_metric_learning.miners import BaseMiner

    cfg = compose_config([f"miner={option}"])
    assert isinstance(instantiate(cfg.miner), BaseMiner)


@pytest.mark.parametrize("optimizer", _options("optimizer"))
@pytest.mark.parametrize("scheduler", _options("scheduler"))
def test_every_optimizer_and_schedule_instantiates(optimizer, scheduler):
    cfg = compose_config([f"optimizer={optimizer}", f"scheduler={scheduler}"])
    parameter = torch.nn.Parameter(torch.zeros(1))
    opt = instantiate(cfg.optimizer)(params=[parameter])
    schedule = instantiate(cfg.scheduler)(opt, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(cfg.optimizer.lr)
    if scheduler == "poly":  # the paper: linear decay to 0 over the run
        assert lrs == pytest.approx([cfg.optimizer.lr * (1 - t / 10) for t in range(10)])
        assert opt.param_groups[0]["lr"] == 0.0


@pytest.mark.parametrize("option", _options("trainer"))
def test_every_trainer_option_composes(option, tmp_path):
    cfg = compose_config([f"trainer={option}"], output_dir=tmp_path)
    assert cfg.trainer.use_distributed_sampler is False
    if cfg.trainer.accelerator in ("cpu", "auto") and cfg.trainer.devices == 1:
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("option", ["csv", "tensorboard", "none"])
def test_logger_options_instantiate(option, tmp_path):
    cfg = compose_config([f"logger={option}"], output_dir=tmp_path)
    loggers = [instantiate(v) for v in (cfg.logger or {}).values()]
    assert len(loggers) == (0 if option == "none" else 1)


@pytest.mark.parametrize("option", _options("callbacks"))
def test_callbacks_instantiate(option, tmp_path):
    cfg = compose_config([f"callbacks={option}"], output_dir=tmp_path)
    callbacks = [instantiate(v) for v in cfg.callbacks.values()]
    assert callbacks


@pytest.mark.parametrize("option", _options("experiment"))
def test_every_experiment_preset_composes(option):
    cfg = compose_config([f"experiment={option}"])
    validate_config(cfg)
    if option.endswith("_resnet50"):
        assert cfg.backbone.name == "resnet50" and cfg.trainer.max_steps == 40000
        assert cfg.data.img_size == 224 and cfg.data.batch_size == 32


def test_missing_mandatory_values_are_named(tmp_path):
    cfg = compose_config(["data=csv"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="data.list_file"):
        validate_config(cfg)


BAD_CONFIGS = [
    (["regularizer.weight=-0.5"], "regularizer.weight=-0.5"),
    (["regularizer.margin=-0.1"], "regularizer.margin=-0.1"),
    (["data.samples_per_class=64"], "data.samples_per_class=64 is larger than data.batch_size=32"),
    (["data.batch_size=30"], "data.batch_size=30 is not a multiple of data.samples_per_class=4"),
    (["data.imbalance_ratio=0.5"], "data.imbalance_ratio=0.5"),
    (["regularizer.margin=soft"], "only miner=hard takes margin=soft"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS)
def test_impossible_values_are_config_errors(overrides, message):
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError) as raised:
        validate_config(cfg)
    assert message in str(raised.value)
    paragraph = format_user_error(raised.value)
    assert paragraph.startswith("ranking_reg configuration error:") and "\n\n" not in paragraph


@pytest.mark.slow
def test_cli_bad_values_end_in_one_paragraph_without_traceback(tmp_path):
    result = run_cli("ranking_reg.train", "regularizer.weight=-1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ranking_reg configuration error: regularizer.weight=-1" in result.stderr
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_cli_unknown_miner_names_the_option(tmp_path):
    unknown_group = run_cli("ranking_reg.train", "miner=nope", f"hydra.run.dir={tmp_path}")
    assert unknown_group.returncode != 0 and "Traceback" not in unknown_group.stderr
    assert "miner/nope" in unknown_group.stderr and "semihard" in unknown_group.stderr
    unknown_class = run_cli(
        "ranking_reg.train", "miner=pml", "miner.name=Nope", f"hydra.run.dir={tmp_path}"
    )
    assert unknown_class.returncode == 2 and "Traceback" not in unknown_class.stderr
    assert "miner.name=Nope is not a miner" in unknown_class.stderr
