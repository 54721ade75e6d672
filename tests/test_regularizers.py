"""Regularizer wiring: miners from the config, the PML path, center loss state, cross-device terms."""

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, run_gloo_workers
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.reducers import MeanReducer

from ranking_reg.losses import SemiHardMiner, batch_hard_triplet_loss, semihard_triplet_loss
from ranking_reg.losses.regularizers import (
    CenterRegularizer,
    NoRegularizer,
    TripletRegularizer,
)
from ranking_reg.utils.errors import ConfigError
from ranking_reg.utils.hydra_utils import build


def _batch(seed=0, p=6, k=4, dim=16):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(p * k, dim, generator=generator), dim=1)
    labels = torch.arange(p).repeat_interleave(k)
    return embeddings, labels


def _miner(*overrides):
    """The miner a run builds for ``overrides`` (composed and instantiated by Hydra)."""
    cfg = compose_config(list(overrides))
    return build(cfg.miner, "miner")


def test_miner_options_build_their_miner_from_the_config():
    assert isinstance(_miner("miner=semihard"), SemiHardMiner)
    assert isinstance(_miner("miner=hard"), pml_miners.BatchHardMiner)
    default_pml = _miner("miner=pml", "+miner.margin=0.3", "+miner.type_of_triplets=hard")
    assert isinstance(default_pml, pml_miners.TripletMarginMiner)
    assert default_pml.margin == 0.3 and default_pml.type_of_triplets == "hard"
    other = _miner(
        "miner=pml",
        "miner._target_=pytorch_metric_learning.miners.MultiSimilarityMiner",
        "+miner.epsilon=0.25",
    )
    assert isinstance(other, pml_miners.MultiSimilarityMiner) and other.epsilon == 0.25


def test_a_miner_that_cannot_be_built_names_the_group():
    with pytest.raises(ConfigError, match="^miner: could not build it.*Nope"):
        _miner("miner=pml", "miner._target_=pytorch_metric_learning.miners.Nope")
    with pytest.raises(ConfigError, match="^miner: could not build it.*bogus"):
        _miner("miner=hard", "+miner.bogus=1")


def test_the_regularizer_refuses_what_its_fast_path_cannot_honour():
    cosine_hard = pml_miners.BatchHardMiner(distance=CosineSimilarity())
    with pytest.raises(ConfigError, match="miner=hard with distance CosineSimilarity"):
        TripletRegularizer(miner=cosine_hard)
    with pytest.raises(
        ConfigError, match="regularizer.margin=soft: this miner takes a number >= 0"
    ):
        TripletRegularizer(margin="soft", miner=SemiHardMiner())
    with pytest.raises(ConfigError, match="not a pytorch-metric-learning miner"):
        TripletRegularizer(miner=torch.nn.Identity())
    euclid_hard = pml_miners.BatchHardMiner(distance=LpDistance(power=2))
    assert TripletRegularizer(margin="soft", miner=euclid_hard).margin == "soft"


def test_semihard_and_hard_go_through_the_functional_losses():
    embeddings, labels = _batch()
    semi = TripletRegularizer(margin=0.2, miner=SemiHardMiner())(embeddings, labels)
    assert semi.loss.item() == pytest.approx(semihard_triplet_loss(embeddings, labels, 0.2).item())
    per_pair = semihard_triplet_loss(embeddings, labels, 0.2, reduction="none")
    assert semi.active_fraction.item() == pytest.approx((per_pair > 0).float().mean().item())
    hard = TripletRegularizer(margin=0.2, miner=pml_miners.BatchHardMiner())(embeddings, labels)
    assert hard.loss.item() == pytest.approx(
        batch_hard_triplet_loss(embeddings, labels, 0.2).item()
    )


def test_generic_pml_miner_equals_pml_triplet_margin_loss_with_mean_reducer():
    embeddings, labels = _batch(seed=4)
    miner = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="all")
    ours = TripletRegularizer(margin=0.2, miner=miner)(embeddings, labels).loss
    reference = pml_losses.TripletMarginLoss(
        margin=0.2, distance=LpDistance(power=2), reducer=MeanReducer()
    )(embeddings, labels, miner(embeddings, labels))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_no_regularizer_is_zero_but_connected():
    embeddings, labels = _batch()
    embeddings.requires_grad_(True)
    out = NoRegularizer()(embeddings, labels)
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.count_nonzero(embeddings.grad) == 0


def test_center_regularizer_updates_centres_in_training_only_and_checkpoints_them():
    embeddings, labels = _batch(p=3, k=2, dim=4)
    reg = CenterRegularizer(weight=0.003, alpha=0.5, num_classes=3, embedding_dim=4)
    before = reg.center_loss.centers.clone()
    reg.eval()
    reg(embeddings, labels)
    assert torch.equal(before, reg.center_loss.centers)
    reg.train()
    out = reg(embeddings, labels)
    expected_loss = 0.5 * (embeddings - before[labels]).pow(2).sum()
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    # Wen et al.: c_j <- c_j - alpha * sum_i (c_j - x_i) / (1 + n_j); here n_j = 2
    for j in range(3):
        members = embeddings[labels == j]
        delta = (before[j] - members).sum(0) / 3.0
        assert torch.allclose(reg.center_loss.centers[j], before[j] - 0.5 * delta, atol=1e-6)
    assert "center_loss.centers" in reg.state_dict()


# -- cross-device mining: two gloo processes vs one process on the concatenated batch -------------
def _regularizer(kind: str):
    torch.manual_seed(0)  # the same initial centres in every process
    if kind == "center":
        return CenterRegularizer(num_classes=8, embedding_dim=8, weight=0.003, cross_device=True)
    miner = SemiHardMiner() if kind == "semihard" else pml_miners.BatchHardMiner()
    return TripletRegularizer(margin=0.2, miner=miner, cross_device=True)


KINDS = ("semihard", "hard", "center")


def _ddp_compute(rank, world, embeddings, labels):
    """One process's loss, gradient and state of every KINDS regularizer on its share."""
    from ranking_reg.utils import distributed

    share = embeddings.shape[0] // world
    local_labels = labels[rank * share : (rank + 1) * share]
    results = {}
    for kind in KINDS:
        local = embeddings[rank * share : (rank + 1) * share].clone().requires_grad_(True)
        reg = _regularizer(kind).train()
        out = reg(local, local_labels)
        out.loss.backward()
        gathered = distributed.gather_with_local_grad(local.detach())
        gathered_labels = distributed.gather_with_local_grad(local_labels)
        if kind == "center":
            state = reg.center_loss.centers.tolist()
        else:
            state = [t.tolist() for t in reg.miner(gathered, gathered_labels)]
        results[kind] = (out.loss.item(), local.grad.tolist(), state)
    return results


@pytest.mark.slow
def test_two_processes_compute_the_global_batch_terms_of_one_process():
    """Triplet (both miners) and center terms under DDP equal one process on the whole batch."""
    embeddings, labels = _batch(seed=11, p=8, k=4, dim=8)
    # rank 0 gets classes 0-3, rank 1 classes 4-7 (whole classes per process, as PKBatchSampler)
    results = run_gloo_workers(_ddp_compute, 2, embeddings, labels)
    for kind in KINDS:
        single = embeddings.clone().requires_grad_(True)
        reg = _regularizer(kind).train()
        single_out = reg(single, labels)
        single_out.loss.backward()
        if kind == "center":
            single_state = reg.center_loss.centers.tolist()
        else:
            single_state = [t.tolist() for t in reg.miner(embeddings, labels)]
        for rank, by_kind in results:
            loss, grad, state = by_kind[kind]
            # each process optimises world_size x the global loss; DDP's averaging undoes it
            assert loss / 2 == pytest.approx(single_out.loss.item(), rel=1e-6), kind
            local_grad = single.grad[rank * 16 : (rank + 1) * 16]
            assert torch.allclose(torch.tensor(grad) / 2, local_grad, atol=1e-6), kind
            if kind == "center":
                assert torch.allclose(torch.tensor(state), torch.tensor(single_state), atol=1e-6)
            else:
                assert state == single_state, kind
