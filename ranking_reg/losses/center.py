"""Center loss (Wen et al., ECCV 2016) on the embedding head, as the paper's authors implement it."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ranking_reg.losses.triplet import _check_inputs
from ranking_reg.utils.errors import ConfigError


class CenterLoss(torch.nn.Module):
    """Center loss (Wen et al., ECCV 2016), as the paper's authors implement it.

    ``L = 1/2 Σ_i ||x_i - c_{y_i}||²`` over the batch with ``reduction="sum"`` (the default: this
    is ``tf.nn.l2_loss(features - centers_batch)`` in the authors' ``ranking/center_loss.py``,
    used with λ = 0.003), or ``1/2 · mean_i ||x_i - c_{y_i}||²`` with ``reduction="mean"``.
    Gradients flow only into x; the centres are a buffer (saved in checkpoints, never trained
    by the optimizer), initialised N(0, 1) like the authors' ``random_normal_initializer``.

    Centre update (Wen et al., Eq. 4), applied only in training mode and without gradient:
    ``Δc_j = Σ_{i: y_i = j} (c_j - x_i) / (1 + n_j)``, ``c_j ← c_j - α Δc_j``, with n_j the
    number of samples of class j in the batch. The loss of a step uses the centres *before*
    that step's update. :meth:`update_centers` is public so that a DDP caller can run
    ``forward(..., update=False)`` and then update with the globally gathered batch: every
    process then applies the identical update and the centres stay identical.
    """

    centers: Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        alpha: float = 0.5,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> None:
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ConfigError(
                f"CenterLoss needs num_classes >= 1 and embedding_dim >= 1, got {num_classes} "
                f"and {embedding_dim}."
            )
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"CenterLoss reduction must be 'sum' or 'mean', got {reduction!r}.")
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.reduction = reduction
        self.register_buffer("centers", torch.randn(num_classes, embedding_dim))

    def _validated(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings in the centres' dtype (autocast off) and labels as long, both checked."""
        labels = _check_inputs(embeddings, labels).to(device=self.centers.device, dtype=torch.long)
        if embeddings.shape[1] != self.centers.shape[1]:
            raise ConfigError(
                f"CenterLoss was built with embedding_dim={self.centers.shape[1]} but got "
                f"{embeddings.shape[1]}-d embeddings: build it with the model's embedding size."
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ConfigError(
                f"CenterLoss got class labels in [{int(labels.min())}, {int(labels.max())}] but "
                f"was built for num_classes={self.num_classes}: build it with the dataset's number "
                "of classes (labels must be 0..num_classes-1)."
            )
        return embeddings.to(self.centers.dtype), labels

    def forward(self, embeddings: Tensor, labels: Tensor, *, update: bool = True) -> Tensor:
        """The loss with the current centres; then, if ``update`` and training, the update."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x, labels = self._validated(embeddings, labels)
            per_sample = 0.5 * (x - self.centers[labels]).pow(2).sum(dim=1)
            loss = per_sample.sum() if self.reduction == "sum" else per_sample.mean()
        if update and self.training:
            self._apply_update(x.detach(), labels)
        return loss

    @torch.no_grad()
    def update_centers(self, embeddings: Tensor, labels: Tensor) -> None:
        """Wen et al.'s centre update with this batch (pass the gathered batch under DDP)."""
        self._apply_update(*self._validated(embeddings.detach(), labels))

    @torch.no_grad()
    def _apply_update(self, x: Tensor, labels: Tensor) -> None:
        # Per-class sums as a one-hot matmul rather than index_add_: index_add_ uses atomics on
        # CUDA (non-deterministic summation order), which would let DDP replicas drift apart.
        one_hot = F.one_hot(labels, self.num_classes).to(x.dtype)  # B × C
        counts = one_hot.sum(dim=0)
        delta = counts[:, None] * self.centers - one_hot.T @ x  # Σ_{i: y_i = j} (c_j - x_i)
        self.centers.sub_(self.alpha * delta / (1.0 + counts)[:, None])
