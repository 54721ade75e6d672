"""The embedding-head regularizers as configured (``regularizer=none|triplet|center``, ``miner=``).

This module only wires: the triplet rules live in :mod:`ranking_reg.losses`. A regularizer maps
(embeddings, labels) of a training batch to its loss and, for triplet losses, the fraction of
active (non-zero) triplets. Total loss ``L = L_softmax + weight * L_reg`` (Taha et al. 2020, Eq. 3).

Cross-device mining (``cross_device=true``, DDP): embeddings and labels are gathered from every
process with gradients kept for the local part, the loss is computed on the global batch, and it
is multiplied by the world size so that DDP's gradient averaging yields exactly the gradient of
the global-batch loss (what one process would compute on the concatenated batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from ranking_reg.losses import (
    CenterLoss,
    SemiHardMiner,
    batch_hard_triplet_loss,
    semihard_triplet_loss,
)
from ranking_reg.utils import distributed
from ranking_reg.utils.errors import ConfigError


@dataclass
class RegularizerOutput:
    loss: torch.Tensor
    active_fraction: torch.Tensor | None = None


def build_miner(name: str, kwargs: dict[str, Any] | None = None) -> BaseMiner:
    """``semihard`` (ours, TF's rule), ``hard`` (batch-hard) or any PML miner class by name."""
    kwargs = dict(kwargs or {})
    if name == "semihard":
        return SemiHardMiner(**kwargs)
    if name == "hard":
        return pml_miners.BatchHardMiner(**kwargs)
    miner_class = getattr(pml_miners, name, None)
    if not (isinstance(miner_class, type) and issubclass(miner_class, BaseMiner)):
        available = sorted(
            n
            for n, c in vars(pml_miners).items()
            if isinstance(c, type) and issubclass(c, BaseMiner) and not n.startswith("Base")
        )
        raise ConfigError(
            f"miner.name={name} is not a miner. Use miner=semihard, miner=hard, or miner=pml with"
            f" miner.name one of pytorch-metric-learning's: {', '.join(available)}."
        )
    try:
        return miner_class(**kwargs)
    except TypeError as error:
        raise ConfigError(f"miner.kwargs do not fit {name}: {error}.") from None


def _check_weight(name: str, weight: float) -> float:
    if weight < 0:
        raise ConfigError(
            f"regularizer.weight={weight} is negative; the regularizer weight λ must be >= 0"
            f" (the paper uses 1.0 for triplet losses; {name})."
        )
    return float(weight)


class NoRegularizer(nn.Module):
    """The vanilla softmax baseline: contributes nothing."""

    def __init__(self, name: str = "none", weight: float = 0.0, **context: Any) -> None:
        super().__init__()
        self.name = name
        self.weight = _check_weight(name, weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> RegularizerOutput:
        return RegularizerOutput(loss=embeddings.sum() * 0.0)


class TripletRegularizer(nn.Module):
    """Triplet loss with the configured miner on squared Euclidean distances.

    ``SemiHardMiner`` and PML's ``BatchHardMiner`` run through the fast functional losses; any
    other PML miner selects (a, p, n) triplets (pairs are converted by PML) and the loss is the
    mean hinge ``max(d_ap - d_an + margin, 0)`` over them (PML's ``TripletMarginLoss`` with
    ``LpDistance(power=2)`` and ``MeanReducer``).
    """

    def __init__(
        self,
        name: str = "triplet",
        weight: float = 1.0,
        margin: float | str = 0.2,
        cross_device: bool = True,
        miner: BaseMiner | None = None,
        **context: Any,
    ) -> None:
        super().__init__()
        self.name = name
        self.weight = _check_weight(name, weight)
        self.miner = miner if miner is not None else SemiHardMiner()
        soft = isinstance(self.miner, pml_miners.BatchHardMiner)
        if isinstance(margin, str):
            if not (margin == "soft" and soft):
                raise ConfigError(
                    f"regularizer.margin={margin}: only the hard miner takes margin=soft; give a"
                    " number >= 0 (the paper: 0.2)."
                )
        elif margin < 0:
            raise ConfigError(
                f"regularizer.margin={margin} is negative; the triplet margin must be >= 0"
                " (the paper: 0.2)."
            )
        self.margin = margin
        self.cross_device = cross_device

    def _generic(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        indices = lmu.convert_to_triplets(self.miner(embeddings, labels), labels)
        anchors, positives, negatives = indices
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
        scale = 1.0
        if self.cross_device and distributed.world_size() > 1:
            embeddings = distributed.gather_with_local_grad(embeddings)
            labels = distributed.gather_with_local_grad(labels)
            scale = float(distributed.world_size())
        losses = self.per_triplet(embeddings, labels)
        if losses.numel() == 0:
            return RegularizerOutput(loss=embeddings.sum() * 0.0, active_fraction=None)
        active = (losses.detach() > 0).float().mean()
        return RegularizerOutput(loss=losses.mean() * scale, active_fraction=active)


class CenterRegularizer(nn.Module):
    """Center loss (Wen et al. 2016) on the embedding head; centres are checkpointed state.

    Under DDP the centre update uses the globally gathered batch, so centres stay identical on
    every process (the loss itself uses the local batch; DDP averages its gradients).
    """

    def __init__(
        self,
        name: str = "center",
        weight: float = 0.003,
        alpha: float = 0.5,
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__()
        if num_classes is None or embedding_dim is None:
            raise ValueError("CenterRegularizer needs num_classes and embedding_dim")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(
                f"regularizer.alpha={alpha}: the centre update rate must be in [0, 1]."
            )
        self.name = name
        self.weight = _check_weight(name, weight)
        self.center_loss = CenterLoss(num_classes, embedding_dim, alpha=alpha)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> RegularizerOutput:
        loss = self.center_loss(embeddings, labels, update=False)
        if self.training:
            gathered_x, gathered_y = embeddings.detach(), labels
            if distributed.world_size() > 1:
                gathered_x = distributed.gather_with_local_grad(gathered_x)
                gathered_y = distributed.gather_with_local_grad(labels)
            self.center_loss.update_centers(gathered_x, gathered_y)
        return RegularizerOutput(loss=loss)


__all__ = [
    "CenterRegularizer",
    "NoRegularizer",
    "RegularizerOutput",
    "TripletRegularizer",
    "build_miner",
]
