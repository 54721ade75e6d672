"""Losses of the embedding head and their wiring as regularizers (Taha et al., WACV 2020, Eq. 3)."""

from ranking_reg.losses.center import CenterLoss
from ranking_reg.losses.regularizers import (
    CenterRegularizer,
    NoRegularizer,
    RegularizerOutput,
    TripletRegularizer,
)
from ranking_reg.losses.triplet import (
    SemiHardMiner,
    batch_hard_triplet_indices,
    batch_hard_triplet_loss,
    pairwise_squared_distances,
    semihard_triplet_indices,
    semihard_triplet_loss,
)

__all__ = [
    "CenterLoss",
    "CenterRegularizer",
    "NoRegularizer",
    "RegularizerOutput",
    "TripletRegularizer",
    "SemiHardMiner",
    "batch_hard_triplet_indices",
    "batch_hard_triplet_loss",
    "pairwise_squared_distances",
    "semihard_triplet_indices",
    "semihard_triplet_loss",
]
