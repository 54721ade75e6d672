"""Losses of the embedding head and their wiring as regularizers (Taha et al., WACV 2020, Eq. 3)."""

from ranking_reg.losses.center import CenterLoss
from ranking_reg.losses.regularizers import (
    CenterRegularizer,
    NoRegularizer,
    PMLRegularizer,
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
from ranking_reg.losses.triplet_center import TripletCenterLoss

__all__ = [
    "CenterLoss",
    "CenterRegularizer",
    "NoRegularizer",
    "PMLRegularizer",
    "RegularizerOutput",
    "TripletRegularizer",
    "SemiHardMiner",
    "TripletCenterLoss",
    "batch_hard_triplet_indices",
    "batch_hard_triplet_loss",
    "pairwise_squared_distances",
    "semihard_triplet_indices",
    "semihard_triplet_loss",
]
