"""The LightningModule: a TwoHeadNet trained with L = L_softmax + λ · L_reg (Taha et al. 2020, Eq. 3).

Training logs ``train/loss``, ``train/ce``, ``train/reg``, ``train/active_triplets`` (fraction of
selected triplets with a non-zero hinge) and the lr (LearningRateMonitor). Validation and test
collect logits, embeddings and pooled features of the whole split (gathered across processes,
each sample exactly once) and log

- ``{stage}/acc``, ``{stage}/macro_acc`` (torchmetrics, via :mod:`ranking_reg.metrics`),
- ``{stage}/recall@k``, ``{stage}/nmi``, ``{stage}/map@r`` of the embedding head,
- ``{stage}/pooled_recall@1``, ``{stage}/pooled_nmi``, ``{stage}/pooled_map@r`` of the GAP
  features, so a softmax-only run still reports the quality of its embedding,
- ``{stage}/many_acc`` etc. when the train split is long-tailed.

After each evaluation epoch ``self.eval_outputs`` holds the gathered tensors for callbacks (plots).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ranking_reg.models.backbones import build_backbone
from ranking_reg.models.two_head import TwoHeadNet, TwoHeadOutput
from ranking_reg.utils import distributed

RECALL_KS = (1, 2, 4, 8)


def _config(cfg: DictConfig | dict) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)


class RankingRegModule(L.LightningModule):
    """Both heads, both losses, evaluation metrics, optimizer and schedule from the run config.

    ``cfg`` is the whole resolved run config (saved as hyper-parameters, so a checkpoint rebuilds
    its own model); ``num_classes`` comes from the data.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        num_classes: int,
        train_class_counts: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = _config(cfg)
        self.config = config
        backbone = build_backbone(
            config.backbone.name,
            img_size=config.data.img_size,
            pretrained=config.backbone.pretrained,
            model_tag=config.backbone.get("model_tag"),
            weights_file=config.backbone.get("weights_file"),
        )
        self.net = TwoHeadNet(
            backbone,
            num_classes=num_classes,
            embedding_dim=config.model.embedding_dim,
            embedding_source=config.model.embedding_source,
        )
        if config.model.get("channels_last"):
            self.net = self.net.to(memory_format=torch.channels_last)
        # Kept out of the module tree so the compiled wrapper does not duplicate state_dict keys.
        compiled = torch.compile(self.net) if config.model.get("compile") else self.net
        object.__setattr__(self, "_forward", compiled)
        miner = instantiate(config.miner) if config.regularizer.name == "triplet" else None
        self.regularizer = instantiate(config.regularizer)(
            miner=miner, num_classes=num_classes, embedding_dim=config.model.embedding_dim
        )
        self.num_classes = num_classes
        self.train_class_counts = train_class_counts
        self.eval_outputs: dict[str, Any] | None = None
        self._collected: list[dict[str, torch.Tensor]] = []

    # -- forward / training -----------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> TwoHeadOutput:
        if self.config.model.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        return self._forward(images)

    def on_train_epoch_start(self) -> None:
        # Augmentation and dropout draws depend only on (seed, epoch), so a run resumed from an
        # epoch-end checkpoint replays exactly what the uninterrupted run did.
        epoch_seed = (int(self.config.seed) * 1_000_003 + self.current_epoch) % 2**31
        torch.manual_seed(epoch_seed + distributed.rank())
        np.random.seed(epoch_seed)
        random.seed(epoch_seed)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels, _ = batch
        output = self(images)
        ce = F.cross_entropy(output.logits, labels)
        reg = self.regularizer(output.embedding, labels)
        loss = ce + self.regularizer.weight * reg.loss
        size = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/ce", ce, batch_size=size)
        self.log("train/reg", reg.loss.detach(), batch_size=size)
        if reg.active_fraction is not None:
            self.log("train/active_triplets", reg.active_fraction, batch_size=size)
        return loss

    # -- evaluation -------------------------------------------------------------------------------
    def _collect(self, batch: Any) -> None:
        images, labels, positions = batch
        output = self(images)
        self._collected.append(
            {
                "logits": output.logits.float().detach(),
                "embeddings": output.embedding.detach(),
                "pooled": output.pooled.detach(),
                "labels": labels.detach(),
                "positions": positions.detach(),
            }
        )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_start(self) -> None:
        self._collected = []

    def on_test_epoch_start(self) -> None:
        self._collected = []

    def _gathered(self) -> dict[str, torch.Tensor]:
        """Concatenate this process's batches, gather all processes, order by sample position."""
        keys = ("logits", "embeddings", "pooled", "labels", "positions")
        local = {k: torch.cat([c[k] for c in self._collected]) for k in keys}
        self._collected = []
        merged = {k: distributed.gather_uneven(v).cpu() for k, v in local.items()}
        order = torch.argsort(merged["positions"])
        return {k: v[order] for k, v in merged.items()}

    def _evaluate(self, stage: str) -> None:
        from ranking_reg.metrics import classification_metrics, retrieval_metrics, shot_accuracy

        outputs = self._gathered()
        metrics: dict[str, float] = {}
        metrics.update(
            classification_metrics(outputs["logits"], outputs["labels"], self.num_classes)
        )
        seed = int(self.config.seed)
        metrics.update(
            retrieval_metrics(outputs["embeddings"], outputs["labels"], ks=RECALL_KS, seed=seed)
        )
        pooled = retrieval_metrics(outputs["pooled"], outputs["labels"], ks=(1,), seed=seed)
        metrics.update({f"pooled_{k}": v for k, v in pooled.items()})
        if self.config.data.get("imbalance_ratio") and self.train_class_counts is not None:
            metrics.update(
                shot_accuracy(
                    outputs["logits"],
                    outputs["labels"],
                    self.train_class_counts,
                    many=self.config.data.get("many_shot", 100),
                    few=self.config.data.get("few_shot", 20),
                )
            )
        # Every process computed the same values from the gathered split: no sync needed.
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", float(value), sync_dist=False)
        self.eval_outputs = {
            "stage": stage,
            "embeddings": outputs["embeddings"],
            "labels": outputs["labels"],
            "logits": outputs["logits"],
            "indices": outputs["positions"],
        }

    def on_validation_epoch_end(self) -> None:
        if self._collected:
            self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        if self._collected:
            self._evaluate("test")

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.config.optimizer)(params=self.parameters())
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(self.config.scheduler)(optimizer, total_steps=total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
