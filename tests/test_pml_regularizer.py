"""regularizer=pml and its presets: any PML loss, loss-owned parameters (optimizer group,
checkpoint), CrossBatchMemory, the active fraction, errors, and the DDP gradients."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config, run_gloo_workers
from lightning.pytorch.callbacks import Callback
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import LpDistance

from ranking_reg.lightning.checkpoint_io import read_checkpoint
from ranking_reg.lightning.module import RankingRegModule
from ranking_reg.losses import PMLRegularizer, TripletCenterLoss, pml_regularizer
from ranking_reg.train import build_module
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import ConfigError
from ranking_reg.utils.hydra_utils import build

PRESETS = (
    "multi_similarity",
    "proxy_anchor",
    "supcon",
    "contrastive",
    "xbm_triplet",
    "triplet_center",
)
# presets whose loss owns parameters: (state_dict key, shape for digits' 10 classes, 256-d)
OWNED = {
    "proxy_anchor": ("regularizer.loss.proxies", (10, 256)),
    "triplet_center": ("regularizer.loss.centers", (10, 256)),
}


def _batch(seed=0, p=4, k=4, dim=8):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(p * k, dim, generator=generator), dim=1)
    return embeddings, torch.arange(p).repeat_interleave(k)


@pytest.fixture(scope="module")
def digits():
    """The set-up digits data module of the tiny config (shared: its setup is the slow part)."""
    cfg = compose_config([*TINY, "logger=none"])
    L.seed_everything(0)
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    return datamodule


class _Probe(Callback):
    """Per step: the regularizer loss, and whether the backbone and loss-owned params got grads."""

    def __init__(self):
        self.reg, self.backbone_grad, self.owned_grad = [], [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.reg.append(float(trainer.callback_metrics["train/reg"]))

    def on_after_backward(self, trainer, module):
        norms = [p.grad.abs().sum() for p in module.net.features.parameters() if p.grad is not None]
        self.backbone_grad.append(float(sum(norms)))
        owned = getattr(module.regularizer, "loss_parameters", list)()
        self.owned_grad.append([float(p.grad.abs().sum()) for p in owned])


def _fit(datamodule, overrides, tmp_path, steps=3):
    """A few training steps of the tiny config with ``overrides`` (no validation, no test)."""
    cfg = compose_config([*TINY, "logger=none", *overrides], output_dir=tmp_path)
    L.seed_everything(0)
    module = build_module(cfg, datamodule)
    probe = _Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
    return module, trainer, probe


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_trains_with_gradients_into_the_backbone(digits, preset, tmp_path):
    module, trainer, probe = _fit(digits, [f"regularizer={preset}"], tmp_path)
    reg = module.regularizer
    assert isinstance(reg, PMLRegularizer) and reg.name == preset
    assert len(probe.reg) == 3 and all(torch.isfinite(torch.tensor(probe.reg)))
    assert all(g > 0 for g in probe.backbone_grad)
    optimizer = trainer.optimizers[0]
    if preset in OWNED:
        key, shape = OWNED[preset]
        # their own group, at 100 x the backbone's lr (same schedule), without weight decay
        model_group, owned_group = optimizer.param_groups
        assert owned_group["name"] == "regularizer"
        assert [tuple(p.shape) for p in owned_group["params"]] == [shape]
        assert all(id(p) not in map(id, model_group["params"]) for p in owned_group["params"])
        assert owned_group["lr"] == pytest.approx(100 * model_group["lr"])
        assert owned_group["weight_decay"] == 0.0
        assert all(g > 0 for step in probe.owned_grad for g in step)
        assert tuple(module.state_dict()[key].shape) == shape
    else:
        assert len(optimizer.param_groups) == 1 and reg.loss_parameters() == []


def test_loss_parameters_are_checkpointed_and_restored(digits, tmp_path):
    module, trainer, _ = _fit(digits, ["regularizer=proxy_anchor"], tmp_path)
    trained = module.regularizer.base_loss.proxies.detach().clone()
    path = tmp_path / "proxy.ckpt"
    trainer.save_checkpoint(path)
    restored = RankingRegModule.from_checkpoint(read_checkpoint(path))
    proxies = restored.regularizer.base_loss.proxies
    assert isinstance(proxies, torch.nn.Parameter) and torch.equal(proxies, trained)
    # not the freshly initialised proxies: the three steps moved them
    cfg = compose_config([*TINY, "regularizer=proxy_anchor"], output_dir=tmp_path)
    fresh = build_module(cfg, digits)
    assert not torch.equal(fresh.regularizer.base_loss.proxies, trained)


@pytest.mark.parametrize("scheduler", ["poly", "cosine", "constant"])
def test_schedulers_scale_both_param_groups(digits, scheduler, tmp_path):
    overrides = [*TINY, "regularizer=triplet_center", f"scheduler={scheduler}"]
    cfg = compose_config(overrides, output_dir=tmp_path)
    module = build_module(cfg, digits)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)  # what the schedule needs
    config = module.configure_optimizers()
    optimizer, scheduler_ = config["optimizer"], config["lr_scheduler"]["scheduler"]
    base = cfg.optimizer.lr
    for step in range(4):
        factor = scheduler_.lr_lambdas[0](step)
        model_lr, owned_lr = (g["lr"] for g in optimizer.param_groups)
        assert model_lr == pytest.approx(base * factor)
        assert owned_lr == pytest.approx(100 * base * factor)
        optimizer.step()
        scheduler_.step()
    if scheduler != "constant":
        assert optimizer.param_groups[1]["lr"] < 100 * base


def test_generic_preset_takes_any_pml_loss_and_fills_proxy_arguments(digits, tmp_path):
    target = "regularizer.loss._target_=pytorch_metric_learning.losses"
    module, _, probe = _fit(
        digits, ["regularizer=pml", f"{target}.MultiSimilarityLoss"], tmp_path, steps=2
    )
    assert isinstance(module.regularizer.base_loss, pml_losses.MultiSimilarityLoss)
    assert module.regularizer.name == "pml" and all(g > 0 for g in probe.backbone_grad)
    # a proxy loss through the same generic preset: num_classes / embedding_size from the model
    module, trainer, probe = _fit(
        digits,
        ["regularizer=pml", f"{target}.SoftTripleLoss", "+regularizer.loss.la=20"],
        tmp_path,
        steps=2,
    )
    loss = module.regularizer.base_loss
    assert isinstance(loss, pml_losses.SoftTripleLoss)
    assert tuple(loss.fc.shape) == (256, 10 * loss.centers_per_class)
    assert len(trainer.optimizers[0].param_groups) == 2
    assert all(g > 0 for step in probe.owned_grad for g in step)


def test_cross_batch_memory_holds_more_than_one_batch(digits, tmp_path):
    module, _, probe = _fit(digits, ["regularizer=xbm_triplet"], tmp_path, steps=4)
    memory = module.regularizer.loss
    assert isinstance(memory, pml_losses.CrossBatchMemory) and memory.memory_size == 512
    # 4 steps of 32 digits: 128 embeddings queued, not yet wrapped around
    assert memory.queue_idx == 128 and not memory.has_been_filled
    stored = memory.embedding_memory[:128]
    assert torch.allclose(stored.norm(dim=1), torch.ones(128), atol=1e-5)  # unit embeddings
    assert torch.count_nonzero(memory.embedding_memory[128:]) == 0
    assert all(g > 0 for g in probe.backbone_grad)
    # the ring position travels with the memory through the state_dict (exact resume)
    copy_ = PMLRegularizer(pml_losses.TripletMarginLoss(), memory_size=512, embedding_dim=256)
    copy_.load_state_dict(module.regularizer.state_dict())
    assert copy_.loss.queue_idx == 128 and not copy_.loss.has_been_filled
    assert torch.equal(copy_.loss.embedding_memory, memory.embedding_memory)


def test_active_fraction_is_the_share_of_non_zero_triplet_terms():
    embeddings, labels = _batch(seed=3)
    distance = LpDistance(power=2)
    miner = pml_miners.TripletMarginMiner(margin=0.5, type_of_triplets="all", distance=distance)
    loss = pml_losses.TripletMarginLoss(margin=0.5, distance=LpDistance(power=2))
    out = PMLRegularizer(loss, miner=miner)(embeddings, labels)
    a, p, n = miner(embeddings, labels)
    d = torch.cdist(embeddings, embeddings).pow(2)
    hinge = torch.relu(d[a, p] - d[a, n] + 0.5)
    assert out.active_fraction.item() == pytest.approx((hinge > 0).float().mean().item())
    # PML's AvgNonZeroReducer: the mean over the active triplets
    assert out.loss.item() == pytest.approx(hinge[hinge > 0].mean().item(), rel=1e-5)
    # per-sample and proxy losses have no tuple set to be active in
    assert PMLRegularizer(pml_losses.SupConLoss())(embeddings, labels).active_fraction is None


def test_a_target_that_is_not_a_pml_loss_is_one_clear_paragraph():
    cfg = compose_config(["regularizer=pml", "regularizer.loss._target_=torch.nn.MSELoss"])
    cfg.model.net.num_classes = 10
    with pytest.raises(ConfigError, match="torch.nn.modules.loss.MSELoss, which is not a py"):
        build(cfg.model.regularizer, "regularizer")
    misspelled = "regularizer.loss._target_=pytorch_metric_learning.losses.MultiSimilarityLos"
    with pytest.raises(ConfigError, match=r"^regularizer\.loss\._target_=.*MultiSimilarityLos"):
        validate_config(compose_config(["regularizer=pml", misspelled]))
    with pytest.raises(ConfigError, match="CrossBatchMemory works with the pair and triplet"):
        PMLRegularizer(pml_losses.ProxyAnchorLoss(10, 8), memory_size=64, embedding_dim=8)
    with pytest.raises(ConfigError, match="not a pytorch-metric-learning miner"):
        PMLRegularizer(pml_losses.SupConLoss(), miner=torch.nn.Identity())
    memory = PMLRegularizer(pml_losses.ContrastiveLoss(), memory_size=8, embedding_dim=8)
    with pytest.raises(ConfigError, match="memory_size=8 is smaller than the batch of 16"):
        memory(*_batch())


# -- DDP: two gloo processes on a split batch vs one process on the whole batch ------------------
DDP_KINDS = ("proxy_anchor", "triplet_center", "xbm")


def _ddp_regularizer(kind: str) -> PMLRegularizer:
    torch.manual_seed(0)  # the same initial proxies / centres in every process
    if kind == "proxy_anchor":
        return PMLRegularizer(pml_losses.ProxyAnchorLoss(num_classes=8, embedding_size=8))
    if kind == "triplet_center":
        return PMLRegularizer(TripletCenterLoss(num_classes=8, embedding_size=8, margin=1.0))
    loss = pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
    return PMLRegularizer(loss, memory_size=64, embedding_dim=8)


def _ddp_step(kind, embeddings, labels, average=None):
    """One forward/backward; ``average`` all-reduces the parameter gradients as DDP does."""
    reg = _ddp_regularizer(kind).train()
    embeddings = embeddings.clone().requires_grad_(True)
    out = reg(embeddings, labels)
    out.loss.backward()
    owned = [p.grad.clone() for p in reg.loss_parameters()]
    if average is not None:
        owned = [average(g) for g in owned]
    memory = reg.loss.embedding_memory[: reg.loss.queue_idx] if kind == "xbm" else None
    return out.loss.detach(), embeddings.grad, owned, memory


def _ddp_compute(rank, world, embeddings, labels):
    """One process's step of every DDP_KINDS regularizer on its share of the batch."""
    import torch.distributed as dist

    def average(grad):
        dist.all_reduce(grad)
        return grad / world

    share = embeddings.shape[0] // world
    part = slice(rank * share, (rank + 1) * share)
    results = {}
    for kind in DDP_KINDS:
        loss, grad, owned, memory = _ddp_step(kind, embeddings[part], labels[part], average)
        results[kind] = (
            loss.item(),
            grad.tolist(),
            [g.tolist() for g in owned],
            None if memory is None else memory.tolist(),
        )
    return results


def test_the_loss_parameter_correction_survives_a_deepcopy(monkeypatch):
    """Tensor hooks are lost by deepcopy/pickle (ddp_spawn); the regularizer puts them back."""
    embeddings, labels = _batch(seed=6, p=8, k=2, dim=8)
    reference = _ddp_regularizer("proxy_anchor")
    reference(embeddings, labels).loss.backward()
    copied = copy.deepcopy(_ddp_regularizer("proxy_anchor"))
    # as on one of W = 2 processes: the global batch, its loss x 2
    monkeypatch.setattr(pml_regularizer, "global_batch", lambda e, y, cross: (e, y, 2.0))
    copied(embeddings, labels).loss.backward()
    assert torch.allclose(copied.loss.proxies.grad, reference.loss.proxies.grad, atol=1e-6)


@pytest.mark.slow
def test_two_processes_give_the_loss_parameters_and_embeddings_their_one_process_gradient():
    embeddings, labels = _batch(seed=5, p=8, k=4, dim=8)
    results = run_gloo_workers(_ddp_compute, 2, embeddings, labels)
    for kind in DDP_KINDS:
        loss, grad, owned, memory = _ddp_step(kind, embeddings, labels)
        for rank, by_kind in results:
            ddp_loss, ddp_grad, ddp_owned, ddp_memory = by_kind[kind]
            assert ddp_loss / 2 == pytest.approx(loss.item(), rel=1e-5), kind
            # the embeddings: W x their share of the global gradient (DDP averages it away)
            local = grad[rank * 16 : (rank + 1) * 16]
            assert torch.allclose(torch.tensor(ddp_grad) / 2, local, atol=1e-6), kind
            # the loss's own parameters, after DDP's averaging: exactly the global gradient
            assert len(ddp_owned) == len(owned) == (0 if kind == "xbm" else 1)
            for ddp_g, g in zip(ddp_owned, owned, strict=True):
                assert g.abs().sum() > 0
                assert torch.allclose(torch.tensor(ddp_g), g, atol=1e-6), kind
            if kind == "xbm":  # every process enqueued the whole global batch, in rank order
                assert torch.allclose(torch.tensor(ddp_memory), memory, atol=1e-7)
