"""The LightningModule: a TwoHeadNet trained with L = L_softmax + λ · L_reg (Taha et al. 2020, Eq. 3).

Built from objects (the ``model`` config group composes them with Hydra): the network, the
regularizer (with its miner inside), the optimizer and scheduler as partials, and the evaluator.
The module never reads the run config. The resolved run config travels in every checkpoint
(``hyper_parameters["run_config"]``), so :meth:`RankingRegModule.load_from_checkpoint` rebuilds
the model a checkpoint was trained with, without fetching or opening pretrained weights.

Training logs ``train/loss``, ``train/ce``, ``train/reg``, ``train/active_triplets`` (fraction of
selected triplets with a non-zero hinge). Validation and test hand every batch to the
:class:`~ranking_reg.metrics.Evaluator`, log ``{stage}/<metric>`` from it, and hand the gathered
arrays to callbacks that define ``on_evaluation_end`` (pictures).

The test may have several loaders (the data module's ``test_streams``: the test split, the
training split as the kNN gallery, the validation split that chooses the fusion's alpha); each
batch goes to the evaluator under its loader's stream. Validation epochs during fitting have one
loader and compute no kNN classification metrics (an extra pass over the training split every
epoch would cost more than the validation itself); only the test does.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ranking_reg.losses.regularizers import Regularizer
from ranking_reg.metrics.evaluator import Evaluator, notify_evaluation_end
from ranking_reg.models.two_head import TwoHeadNet, TwoHeadOutput
from ranking_reg.utils import distributed

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]
RUN_CONFIG_KEY = "run_config"


class RankingRegModule(L.LightningModule):
    """Both heads, both losses, the evaluator, the optimizer and its per-step schedule.

    ``optimizer(params)`` and ``scheduler(optimizer, total_steps=...)`` are factories (Hydra
    ``_partial_`` configs); ``seed`` seeds the per-epoch augmentation draws (exact resume).
    """

    def __init__(
        self,
        net: TwoHeadNet,
        regularizer: Regularizer,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        evaluator: Evaluator | None = None,
        seed: int = 0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["net", "regularizer", "optimizer", "scheduler", "evaluator"], logger=False
        )
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        # Kept out of the module tree so the compiled wrapper does not duplicate state_dict keys.
        object.__setattr__(self, "_forward", torch.compile(self.net) if compile else self.net)
        self.regularizer = regularizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.evaluator = evaluator if evaluator is not None else Evaluator(seed=seed)
        self.seed = int(seed)
        self.channels_last = channels_last
        self._test_streams: tuple[str, ...] = ("query",)  # set per test epoch

    @property
    def num_classes(self) -> int:
        return self.net.classifier.out_features

    # -- checkpoints ------------------------------------------------------------------------------
    def remember_run_config(self, run_config: dict[str, Any]) -> None:
        """Store the resolved run config in this module's checkpoints (rebuilds the model)."""
        self.hparams[RUN_CONFIG_KEY] = run_config

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], strict: bool = True) -> RankingRegModule:
        """The module a loaded checkpoint was trained as, with its weights.

        The network is rebuilt from the stored ``model`` config with the backbone's pretrained
        weights switched off: the trained weights come from the state dict.
        """
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        run_config = checkpoint["hyper_parameters"][RUN_CONFIG_KEY]
        model_config = OmegaConf.create(run_config["model"])
        model_config.net.backbone.pretrained = False
        model_config.net.backbone.weights_file = None
        module = instantiate(model_config)
        module.load_state_dict(checkpoint["state_dict"], strict=strict)
        module.remember_run_config(run_config)
        return module

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> RankingRegModule:
        """Lightning's classmethod, for checkpoints of this project (the net is rebuilt from
        the stored config, so no constructor arguments are needed)."""
        from ranking_reg.lightning.checkpoint_io import read_checkpoint

        checkpoint = read_checkpoint(checkpoint_path, map_location=map_location or "cpu")
        return cls.from_checkpoint(checkpoint, strict=True if strict is None else strict)

    # -- forward / training -----------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> TwoHeadOutput:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._forward(images)

    def on_train_epoch_start(self) -> None:
        # Augmentation and dropout draws depend only on (seed, epoch), so a run resumed from an
        # epoch-end checkpoint replays exactly what the uninterrupted run did.
        epoch_seed = (self.seed * 1_000_003 + self.current_epoch) % 2**31
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
    def setup(self, stage: str) -> None:
        # shot accuracy (many/medium/few) is defined for a long-tailed train split only
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        long_tailed = getattr(datamodule, "imbalance_ratio", None) is not None
        if long_tailed and hasattr(datamodule, "train_class_counts"):
            self.evaluator.train_class_counts = list(datamodule.train_class_counts)
        # hierarchy metrics (top1@<level>, ...) when the data names a class hierarchy
        self.evaluator.configure_hierarchy(getattr(datamodule, "class_hierarchy", None))

    def _collect(self, batch: Any, stream: str = "query") -> None:
        images, labels, positions = batch
        output = self(images)
        self.evaluator.update(
            output.logits, output.embedding, output.pooled, labels, positions, stream=stream
        )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, self._test_streams[dataloader_idx])

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_test_epoch_start(self) -> None:
        # trainer.test(datamodule=...): its loaders are its test_streams; loaders given
        # directly (no data module) are the evaluated split
        datamodule = getattr(self.trainer, "datamodule", None)
        self._test_streams = tuple(getattr(datamodule, "test_streams", None) or ("query",))
        self.evaluator.reset(self._test_streams)

    def _evaluate(self, stage: str) -> None:
        if self.evaluator.empty:
            return
        result = self.evaluator.compute(stage, self.num_classes)
        # Every process computed the same values from the gathered split: no sync needed.
        for name, value in result.metrics.items():
            self.log(f"{stage}/{name}", float(value), sync_dist=False)
        notify_evaluation_end(self.trainer, self, result)

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """The optimizer (and per-step schedule) of every parameter.

        Parameters the regularizer's loss owns (``regularizer.loss_parameters()``: PML proxies,
        SoftTriple and triplet-center centres, ArcFace weights) get a second param group named
        ``regularizer`` with lr = ``regularizer.param_lr_scale`` x the optimizer's lr (default
        100: PML's and the Proxy-Anchor paper's practice of a much larger lr for proxies) and
        weight decay ``regularizer.param_weight_decay`` (default 0: decay would pull class
        centres/proxies towards the origin). The schedule scales both groups alike.
        """
        owned_fn = getattr(self.regularizer, "loss_parameters", None)
        owned = list(owned_fn()) if callable(owned_fn) else []
        if not owned:
            optimizer = self.optimizer_factory(params=self.parameters())
        else:
            owned_ids = {id(p) for p in owned}
            rest = [p for p in self.parameters() if id(p) not in owned_ids]
            groups = [{"params": rest, "name": "model"}, {"params": owned, "name": "regularizer"}]
            optimizer = self.optimizer_factory(params=groups)
            # set before the scheduler is built: LambdaLR takes each group's lr as its base lr
            group = optimizer.param_groups[1]
            group["lr"] = optimizer.defaults["lr"] * float(self.regularizer.param_lr_scale)
            if "weight_decay" in optimizer.defaults:
                group["weight_decay"] = float(self.regularizer.param_weight_decay)
        if self.scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
