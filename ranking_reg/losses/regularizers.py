"""The embedding-head regularizers (``regularizer=none|triplet|center``), built by Hydra; any
pytorch-metric-learning loss (``regularizer=pml`` and its presets) is in
:mod:`ranking_reg.losses.pml_regularizer`.

This module only wires: the triplet rules live in :mod:`ranking_reg.losses.triplet`, center loss
in :mod:`ranking_reg.losses.center`. A regularizer maps (embeddings, labels) of a training batch
to its loss and, for triplet losses, the fraction of active (non-zero) triplets. Total loss
``L = L_softmax + weight * L_reg`` (Taha et al. 2020, Eq. 3); ``weight`` is λ.

Cross-device semantics (``cross_device=true``, DDP), the same for every regularizer: embeddings
and labels are gathered from every process with gradients kept for the local part, the loss is
computed on the global batch and multiplied by the world size, so that DDP's gradient averaging
yields exactly the gradient of the global-batch loss (what one process would compute on the
concatenated batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from ranking_reg.losses.center import CenterLoss
from ranking_reg.losses.triplet import (
    SemiHardMiner,
    batch_hard_triplet_loss,
    check_margin,
    semihard_triplet_loss,
)
from ranking_reg.utils import distributed
from ranking_reg.utils.errors import ConfigError


@dataclass
class RegularizerOutput:
    loss: torch.Tensor
    active_fraction: torch.Tensor | None = None


def global_batch(
    embeddings: torch.Tensor, labels: torch.Tensor, cross_device: bool
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The batch a regularizer computes on and the factor its loss is multiplied by.

    Under DDP with ``cross_device``: every process's embeddings (gradients into the local part)
    and labels, and the world size W (DDP averages the W local gradients). Otherwise the local
    batch and 1.
    """
    if not cross_device or distributed.world_size() == 1:
        return embeddings, labels, 1.0
    return (
        distributed.gather_with_local_grad(embeddings),
        distributed.gather_with_local_grad(labels),
        float(distributed.world_size()),
    )


class NoRegularizer(nn.Module):
    """The vanilla softmax baseline: contributes nothing."""

    def __init__(self, name: str = "none", weight: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.weight = float(weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> RegularizerOutput:
        return RegularizerOutput(loss=embeddings.sum() * 0.0)


def _fast_path_distance_ok(miner: BaseMiner) -> bool:
    """Batch-hard selection is the same for any Lp distance with p = 2 (any power, normalised
    or not: the embeddings are unit vectors); any other distance cannot go through the fast loss."""
    distance = getattr(miner, "distance", None)
    return isinstance(distance, LpDistance) and float(distance.p) == 2.0


class TripletRegularizer(nn.Module):
    """Triplet loss with the given miner on squared Euclidean distances.

    ``SemiHardMiner`` (TF's ``triplet_semihard_loss`` rule, the paper's default) and PML's
    ``BatchHardMiner`` run through the fast functional losses of :mod:`ranking_reg.losses.triplet`;
    any other PML miner selects (a, p, n) triplets (pairs are converted by PML) and the loss is
    the mean hinge ``max(d_ap - d_an + margin, 0)`` over them (PML's ``TripletMarginLoss`` with
    ``LpDistance(power=2)`` and ``MeanReducer``). ``margin="soft"`` (softplus, Hermans et al.)
    is defined for the batch-hard miner only.
    """

    def __init__(
        self,
        miner: BaseMiner | None = None,
        margin: float | str = 0.2,
        weight: float = 1.0,
        cross_device: bool = True,
        name: str = "triplet",
    ) -> None:
        super().__init__()
        miner = miner if miner is not None else SemiHardMiner()
        if not isinstance(miner, BaseMiner):
            raise ConfigError(
                f"regularizer.miner builds a {type(miner).__name__}, not a pytorch-metric-learning"
                " miner; use miner=semihard, miner=hard, or miner=pml with miner._target_ set to"
                " a class of pytorch_metric_learning.miners."
            )
        batch_hard = isinstance(miner, pml_miners.BatchHardMiner)
        if batch_hard and not _fast_path_distance_ok(miner):
            raise ConfigError(
                f"miner=hard with distance {type(miner.distance).__name__}: batch-hard mining"
                " runs on squared Euclidean distances of the embeddings (the paper's rule), so"
                " another distance would be ignored. Leave miner.distance unset, or use miner=pml"
                " with a miner that honours its distance."
            )
        check_margin(margin, allow_soft=batch_hard)  # soft margin: batch-hard only
        self.name = name
        self.weight = float(weight)
        self.miner = miner
        self.margin = margin
        self.cross_device = cross_device

    def _generic(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        anchors, positives, negatives = lmu.convert_to_triplets(
            self.miner(embeddings, labels), labels
        )
        if anchors.numel() == 0:
            return embeddings.sum().reshape(1) * 0.0
        x = embeddings.float()
        d_ap = (x[anchors] - x[positives]).pow(2).sum(1)
        d_an = (x[anchors] - x[negatives]).pow(2).sum(1)
        return torch.relu(d_ap - d_an + float(self.margin))

    def per_triplet(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The hinge of every selected triplet (one per anchor-positive pair / per anchor)."""
        if isinstance(self.miner, SemiHardMiner):
            return semihard_triplet_loss(embeddings, labels, self.margin, reduction="none")
        if isinstance(self.miner, pml_miners.BatchHardMiner):
            return batch_hard_triplet_loss(embeddings, labels, self.margin, reduction="none")
        return self._generic(embeddings, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> RegularizerOutput:
        embeddings, labels, scale = global_batch(embeddings, labels, self.cross_device)
        losses = self.per_triplet(embeddings, labels)
        if losses.numel() == 0:
            return RegularizerOutput(loss=embeddings.sum() * 0.0, active_fraction=None)
        active = (losses.detach() > 0).float().mean()
        return RegularizerOutput(loss=losses.mean() * scale, active_fraction=active)


class CenterRegularizer(nn.Module):
    """Center loss (Wen et al. 2016) on the embedding head; centres are checkpointed state.

    The loss of a step uses the centres before that step's update; the update uses the global
    batch under DDP, so centres stay identical on every process.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        weight: float = 0.003,
        alpha: float = 0.5,
        cross_device: bool = True,
        name: str = "center",
    ) -> None:
        super().__init__()
        self.name = name
        self.weight = float(weight)
        self.cross_device = cross_device
        self.center_loss = CenterLoss(num_classes, embedding_dim, alpha=alpha)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> RegularizerOutput:
        embeddings, labels, scale = global_batch(embeddings, labels, self.cross_device)
        loss = self.center_loss(embeddings, labels, update=False) * scale
        if self.training:
            if not self.cross_device and distributed.world_size() > 1:
                # per-device loss, but the centres must still see every process's samples
                embeddings = distributed.gather_with_local_grad(embeddings.detach())
                labels = distributed.gather_with_local_grad(labels)
            self.center_loss.update_centers(embeddings.detach(), labels)
        return RegularizerOutput(loss=loss)


# Imported last: it builds on RegularizerOutput and global_batch above (the package's
# __init__ imports this module first, so the cycle always resolves in this order).
from ranking_reg.losses.pml_regularizer import PMLRegularizer  # noqa: E402

Regularizer = NoRegularizer | TripletRegularizer | CenterRegularizer | PMLRegularizer

__all__ = [
    "CenterRegularizer",
    "NoRegularizer",
    "PMLRegularizer",
    "Regularizer",
    "RegularizerOutput",
    "TripletRegularizer",
    "global_batch",
]
