"""Triplet-center loss (He et al., "Triplet-Center Loss for Multi-View 3D Object Retrieval",
CVPR 2018, Eq. 3), as a pytorch-metric-learning loss with learned centres."""

from __future__ import annotations

import math

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from torch import Tensor, nn

from ranking_reg.utils.errors import ConfigError


class TripletCenterLoss(BaseMetricLossFunction):
    """Triplet-center loss (He et al., CVPR 2018, Eq. 3).

    ``L_tc = (1/M) Σ_i max(D(f_i, c_{y_i}) + m - min_{j ≠ y_i} D(f_i, c_j), 0)`` over the M
    samples of the batch, with D the squared Euclidean distance (the default distance,
    ``LpDistance(p=2, power=2)`` on unnormalised vectors) and one learned centre ``c_j`` per
    class (an ``nn.Parameter`` trained by the optimizer with the network, unlike center loss's
    moving-average update). Each sample is pulled towards its class centre and pushed until its
    nearest other centre is ``m`` further away.

    A PML loss (``BaseMetricLossFunction``) so that it plugs into
    :class:`~ranking_reg.losses.pml_regularizer.PMLRegularizer` like PML's proxy losses and takes
    their options: another ``distance`` (a similarity such as ``CosineSimilarity`` flips the
    hinge through ``distance.margin`` and ``distance.smallest_dist``, as PML's losses do),
    ``reducer`` (default ``MeanReducer``: the paper's 1/M), ``embedding_regularizer``. Miner
    indices and reference embeddings are ignored: every sample is compared with every centre.

    The centres start N(0, 1/d) (d = embedding size): norm ≈ 1, the scale of the L2-normalised
    embeddings of this project; the paper does not specify an initialisation.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.2, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 2 or embedding_size < 1:
            raise ConfigError(
                f"TripletCenterLoss needs num_classes >= 2 (a nearest other centre) and"
                f" embedding_size >= 1, got {num_classes} and {embedding_size}."
            )
        if not math.isfinite(float(margin)) or float(margin) < 0:
            raise ConfigError(
                f"TripletCenterLoss margin={margin}: expects a number >= 0 (the hinge margin m"
                " on the distance; this project's preset: 0.2 on squared Euclidean distances)."
            )
        self.num_classes = int(num_classes)
        self.margin = float(margin)
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_size) / embedding_size**0.5)
        self.add_to_recordable_attributes(list_of_names=["num_classes", "margin"], is_stat=False)

    def get_default_distance(self) -> LpDistance:
        return LpDistance(normalize_embeddings=False, p=2, power=2)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices_tuple: object,
        ref_emb: Tensor,
        ref_labels: Tensor,
    ) -> dict:
        c_f.labels_required(labels)
        labels = labels.to(embeddings.device).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ConfigError(
                f"TripletCenterLoss got class labels in [{int(labels.min())},"
                f" {int(labels.max())}] but was built for num_classes={self.num_classes}: build"
                " it with the dataset's number of classes (labels 0..num_classes-1)."
            )
        centers = c_f.to_device(self.centers, device=embeddings.device, dtype=embeddings.dtype)
        dist = self.distance(embeddings, centers)  # M × C
        own = torch.nn.functional.one_hot(labels, self.num_classes).bool()
        d_pos = dist[own]  # D(f_i, c_{y_i}), in sample order (one True per row)
        # the nearest other centre: mask the own class with the value that never wins
        excluded = float("-inf") if self.distance.is_inverted else float("inf")
        d_neg = self.distance.smallest_dist(dist.masked_fill(own, excluded), dim=1).values
        losses = torch.relu(self.distance.margin(d_pos, d_neg) + self.margin)
        return {
            "loss": {
                "losses": losses,
                "indices": c_f.torch_arange_from_size(embeddings),
                "reduction_type": "element",
            }
        }


__all__ = ["TripletCenterLoss"]
