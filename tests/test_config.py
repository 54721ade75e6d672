"""Every config group option composes and instantiates; impossible values give one clear paragraph."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ranking_reg.losses.pml_regularizer import PMLRegularizer
from ranking_reg.losses.regularizers import CenterRegularizer, NoRegularizer, TripletRegularizer
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import ConfigError


def _options(group: str) -> list[str]:
    # files starting with "_" are shared bases of a group, not options
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_default_config_is_the_embedded_digits_run():
    cfg = compose_config([])
    assert cfg.data.name == "digits" and cfg.backbone.name == "small_cnn"
    assert cfg.regularizer.name == "triplet"
    assert cfg.miner._target_ == "ranking_reg.losses.SemiHardMiner"
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
    validate_config(cfg)
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
    validate_config(cfg)
    assert cfg.backbone.name == option
    assert cfg.backbone.input_size == (299 if option == "inception_v4" else 224)


@pytest.mark.parametrize("option", _options("regularizer"))
def test_every_regularizer_instantiates(option):
    cfg = compose_config([f"regularizer={option}"])
    validate_config(cfg)
    cfg.model.net.num_classes = 10  # what train.py fills in from the data
    regularizer = instantiate(cfg.regularizer)
    expected = {"none": NoRegularizer, "triplet": TripletRegularizer, "center": CenterRegularizer}
    assert isinstance(regularizer, expected.get(option, PMLRegularizer))  # the rest: PML losses
    assert regularizer.weight == cfg.regularizer.weight
    if option == "triplet":  # the miner= group is nested inside the regularizer
        assert type(regularizer.miner).__name__ == "SemiHardMiner"
    if option == "center":  # sized by the model's classes and embedding
        assert tuple(regularizer.center_loss.centers.shape) == (10, 256)
    if option in ("proxy_anchor", "triplet_center"):  # loss-owned parameters, sized alike
        (owned,) = regularizer.loss_parameters()
        assert tuple(owned.shape) == (10, 256)


def test_the_model_group_builds_the_module_from_objects():
    from ranking_reg.lightning import RankingRegModule
    from ranking_reg.models import TwoHeadNet

    cfg = compose_config(["miner=hard", "regularizer.weight=0.5", "optimizer=adamw"])
    cfg.model.net.num_classes = 7
    module = instantiate(cfg.model)
    assert isinstance(module, RankingRegModule) and isinstance(module.net, TwoHeadNet)
    assert module.num_classes == 7 and module.net.embedder.out_features == 256
    assert type(module.regularizer.miner).__name__ == "BatchHardMiner"
    assert module.regularizer.weight == 0.5
    optimizer = module.optimizer_factory(params=module.parameters())
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["lr"] == 0.001


@pytest.mark.parametrize("option", _options("miner"))
def test_every_miner_instantiates(option):
    from pytorch_metric_learning.miners import BaseMiner

    cfg = compose_config([f"miner={option}"])
    validate_config(cfg)
    assert isinstance(instantiate(cfg.miner), BaseMiner)


@pytest.mark.parametrize("optimizer", _options("optimizer"))
@pytest.mark.parametrize("scheduler", _options("scheduler"))
def test_every_optimizer_and_schedule_instantiates(optimizer, scheduler):
    cfg = compose_config([f"optimizer={optimizer}", f"scheduler={scheduler}"])
    validate_config(cfg)
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
    validate_config(cfg)
    assert cfg.trainer.use_distributed_sampler is False
    if cfg.trainer.accelerator in ("cpu", "auto") and cfg.trainer.devices == 1:
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("option", _options("debug"))
def test_every_debug_option_is_a_short_cpu_run(option):
    cfg = compose_config([f"debug={option}"])
    validate_config(cfg)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == 1
    assert "plots" not in cfg.callbacks


@pytest.mark.parametrize("option", ["csv", "tensorboard", "none"])
def test_logger_options_instantiate(option, tmp_path):
    cfg = compose_config([f"logger={option}"], output_dir=tmp_path)
    validate_config(cfg)
    loggers = [instantiate(v) for v in (cfg.logger or {}).values()]
    assert len(loggers) == (0 if option == "none" else 1)


@pytest.mark.parametrize("option", _options("callbacks"))
def test_callbacks_instantiate(option, tmp_path):
    cfg = compose_config([f"callbacks={option}"], output_dir=tmp_path)
    validate_config(cfg)
    callbacks = [instantiate(v) for v in cfg.callbacks.values()]
    assert callbacks


PAPER_STEPS = {"resnet50": (40000, 224), "densenet161": (40000, 224), "inception_v4": (80000, 299)}


@pytest.mark.parametrize(
    "option",
    ["digits_smoke", "flowers102_resnet50"]
    + [f"cars_{backbone}" for backbone in ("densenet161", "inception_v4")],
)
def test_experiment_presets_compose_with_the_papers_protocol(option):
    cfg = compose_config([f"experiment={option}"])
    validate_config(cfg)
    if option != "digits_smoke":
        steps, size = PAPER_STEPS[cfg.backbone.name]
        assert cfg.trainer.max_steps == steps and cfg.data.img_size == size
        assert cfg.data.batch_size == 32 and cfg.data.samples_per_class == 4
        assert cfg.data.class_sampling == "uniform" and cfg.data.val_fraction == 0


def test_every_paper_preset_is_its_dataset_on_its_backbones_protocol():
    """The thin <dataset>_<backbone> files (composing each costs Hydra ~0.3 s): each names the
    shared protocol of its backbone and its own dataset, both of which exist."""
    import yaml

    presets = [p for p in _options("experiment") if p != "digits_smoke"]
    assert len(presets) == 5 * 3
    for preset in presets:
        dataset, backbone = preset.split("_", 1)
        defaults = yaml.safe_load((CONF / "experiment" / f"{preset}.yaml").read_text())["defaults"]
        assert defaults == [f"_paper_{backbone}", {"override /data": dataset}], preset
        assert (CONF / "data" / f"{dataset}.yaml").is_file()
        assert (CONF / "experiment" / f"_paper_{backbone}.yaml").is_file()
        assert backbone in PAPER_STEPS


def test_missing_mandatory_values_are_named(tmp_path):
    cfg = compose_config(["data=csv"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="data.list_file"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "data=flowers102",
            "regularizer=center",
            "data.batch_size=8",
            "data.crop_scale=[0.5,1.0]",
            "trainer.max_epochs=1.5",
        ],
        [
            "miner=pml",
            "miner._target_=pytorch_metric_learning.miners.MultiSimilarityMiner",
            "+miner.epsilon=0.25",
            "data.imbalance_ratio=null",
        ],
        ["experiment=aircraft_resnet50", "trainer.max_steps=5"],
    ],
)
def test_the_test_helper_composes_what_hydra_composes(overrides):
    """compose_config caches group selections and applies values itself: it must equal Hydra."""
    from conftest import hydra_compose

    ours = OmegaConf.to_container(compose_config(overrides))
    assert ours == OmegaConf.to_container(hydra_compose(overrides))
