"""TwoHeadNet: one backbone, two heads on its last feature map (Taha et al., WACV 2020, Fig. 2).

- classification head: global average pooling -> fc(n_classes) -> logits (softmax cross-entropy);
- embedding head: flatten the map h (ResNet-50 at 224 px: 7x7x2048 = 100,352 values) -> fc(256)
  -> L2 normalisation -> the embedding the triplet loss ranks.

Both come out of one forward pass. ``embedding_source="pooled"`` takes the embedding from the
pooled vector instead (an ablation the paper does not run: it avoids the flatten fc's 25.7 M
weights at ResNet-50/224 px).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ranking_reg.models.backbones import Backbone
from ranking_reg.models.limits import EMBEDDING_SOURCES
from ranking_reg.utils.errors import ConfigError


class TwoHeadOutput(NamedTuple):
    logits: torch.Tensor  # B x n_classes
    embedding: torch.Tensor  # B x embedding_dim, unit L2 norm
    pooled: torch.Tensor  # B x C, the GAP features (retrieval baseline for softmax-only runs)


class TwoHeadNet(nn.Module):
    """Backbone -> (GAP -> fc logits, flatten -> fc -> L2-normalised embedding)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        embedding_dim: int = 256,
        embedding_source: str = "flatten",
    ) -> None:
        super().__init__()
        if embedding_source not in EMBEDDING_SOURCES:
            raise ConfigError(
                f"model.net.embedding_source={embedding_source} is unknown; use 'flatten' (the"
                " paper) or 'pooled'."
            )
        if embedding_dim < 1:
            raise ConfigError(
                f"model.net.embedding_dim={embedding_dim} must be a positive integer."
            )
        self.features = backbone.features
        self.embedding_source = embedding_source
        self.classifier = nn.Linear(backbone.channels, num_classes)
        in_dim = backbone.flat_dim if embedding_source == "flatten" else backbone.channels
        self.embedder = nn.Linear(in_dim, embedding_dim)

    def forward(self, images: torch.Tensor) -> TwoHeadOutput:
        feature_map = self.features(images)
        pooled = feature_map.mean(dim=(2, 3))
        logits = self.classifier(pooled)
        head_input = feature_map.flatten(1) if self.embedding_source == "flatten" else pooled
        # Normalise in float32: under bf16 autocast the norm of a 256-d vector loses digits.
        embedding = F.normalize(self.embedder(head_input).float(), p=2, dim=1)
        return TwoHeadOutput(logits=logits, embedding=embedding, pooled=pooled.float())
