"""Regularizer wiring: miners by name, the PML path, center loss state, cross-device mining."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import MeanReducer

from ranking_reg.losses import SemiHardMiner, batch_hard_triplet_loss, semihard_triplet_loss
from ranking_reg.losses.regularizers import (
    CenterRegularizer,
    NoRegularizer,
    TripletRegularizer,
    build_miner,
)
from ranking_reg.utils.errors import ConfigError


def _batch(seed=0, p=6, k=4, dim=16):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(p * k, dim, generator=generator), dim=1)
    labels = torch.arange(p).repeat_interleave(k)
    return embeddings, labels


def test_build_miner_by_name():
    assert isinstance(build_miner("semihard"), SemiHardMiner)
    assert isinstance(build_miner("hard"), pml_miners.BatchHardMiner)
    miner = build_miner("TripletMarginMiner", {"margin": 0.3, "type_of_triplets": "hard"})
    assert isinstance(miner, pml_miners.TripletMarginMiner) and miner.margin == 0.3
    assert isinstance(build_miner("MultiSimilarityMiner"), pml_miners.MultiSimilarityMiner)
    with pytest.raises(ConfigError, match="miner.name=Nope is not a miner.*MultiSimilarityMiner"):
        build_miner("Nope")
    with pytest.raises(ConfigError, match="miner.kwargs do not fit"):
        build_miner("BatchHardMiner", {"bogus": 1})


def test_semihard_and_hard_go_through_the_functional_losses():
    embeddings, labels = _batch()
    semi = TripletRegularizer(margin=0.2, miner=build_miner("semihard"))(embeddings, labels)
    assert semi.loss.item() == pytest.approx(semihard_triplet_loss(embeddings, labels, 0.2).item())
    per_pair = semihard_triplet_loss(embeddings, labels, 0.2, reduction="none")
    assert semi.active_fraction.item() == pytest.approx((per_pair > 0).float().mean().item())
    hard = TripletRegularizer(margin=0.2, miner=build_miner("hard"))(embeddings, labels)
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


def test_bad_weights_and_margins_are_config_errors():
    with pytest.raises(ConfigError, match="regularizer.weight=-1"):
        TripletRegularizer(weight=-1)
    with pytest.raises(ConfigError, match="regularizer.margin=-0.1"):
        TripletRegularizer(margin=-0.1)
    with pytest.raises(ConfigError, match="margin=soft"):
        TripletRegularizer(margin="soft", miner=build_miner("semihard"))
    assert TripletRegularizer(margin="soft", miner=build_miner("hard")).margin == "soft"


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
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, embeddings, labels, miner_name, queue):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        share = embeddings.shape[0] // world
        local = embeddings[rank * share : (rank + 1) * share].clone().requires_grad_(True)
        local_labels = labels[rank * share : (rank + 1) * share]
        reg = TripletRegularizer(margin=0.2, miner=build_miner(miner_name), cross_device=True)
        out = reg(local, local_labels)
        out.loss.backward()
        from ranking_reg.utils import distributed

        gathered = distributed.gather_with_local_grad(local.detach())
        gathered_labels = distributed.gather_with_local_grad(local_labels)
        triplets = [t.tolist() for t in reg.miner(gathered, gathered_labels)]
        queue.put((rank, out.loss.item(), local.grad.clone(), triplets))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("miner_name", ["semihard", "hard"])
def test_two_processes_mine_the_same_triplets_as_one_process(miner_name):
    embeddings, labels = _batch(seed=11, p=8, k=4, dim=8)
    # rank 0 gets classes 0-3, rank 1 classes 4-7 (whole classes per process, as PKBatchSampler)
    single = embeddings.clone().requires_grad_(True)
    reg = TripletRegularizer(margin=0.2, miner=build_miner(miner_name), cross_device=True)
    single_out = reg(single, labels)
    single_out.loss.backward()
    single_triplets = [t.tolist() for t in reg.miner(embeddings, labels)]

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = _free_port()
    processes = [
        context.Process(
            target=_ddp_worker, args=(r, 2, port, embeddings, labels, miner_name, queue)
        )
        for r in range(2)
    ]
    for process in processes:
        process.start()
    results = sorted([queue.get() for _ in processes], key=lambda r: r[0])
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for rank, loss, grad, triplets in results:
        # each process optimises world_size x the global loss; DDP's averaging undoes the factor
        assert loss / 2 == pytest.approx(single_out.loss.item(), rel=1e-6)
        assert torch.allclose(grad / 2, single.grad[rank * 16 : (rank + 1) * 16], atol=1e-6)
        assert triplets == single_triplets
