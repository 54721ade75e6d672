"""Stop a diverging run at the first non-finite loss, with what to try instead of garbage metrics.

Lightning keeps training on a NaN loss (its ``detect_anomaly`` finds where a NaN appears in the
backward pass, at several times the cost, and ``EarlyStopping(check_finite=True)`` only looks at
a validation metric at the end of an epoch). :class:`NonFiniteLossGuard` checks the training
loss after every optimizer step and raises :class:`NonFiniteLossError`, a user error: the entry
point prints one paragraph and exits with status 2. The last optimizer step of an epoch can
turn the weights non-finite with a finite loss; the weights are checked once more before
validation and at the end of every training epoch, so neither evaluates nor saves them. No checkpoint is written after the bad step
(Lightning runs checkpoint callbacks after the others and the exception ends the loop first), so
``checkpoints/last.ckpt`` stays the last good one. ``trainer.detect_anomaly=true`` is still there
to find the operation that produced the NaN.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from ranking_reg.utils.errors import UserError


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


def _value(x: Any) -> float | None:
    if torch.is_tensor(x) and x.numel() == 1:
        return float(x.detach().float().cpu())
    return float(x) if isinstance(x, (int, float)) else None


class NonFiniteLossGuard(L.Callback):
    """Raise :class:`NonFiniteLossError` at the first training step whose loss is not finite."""

    def __init__(self) -> None:
        self._lr: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the learning rate of the step about to run (the schedule moves it after the step)
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        self._lr = float(groups[0]["lr"]) if groups else None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = _value(loss)
        if value is None or math.isfinite(value):
            return
        raise NonFiniteLossError(self.message(trainer, value, lr=self._lr))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._check_weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_weights(trainer, pl_module)

    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(self.message(trainer, math.nan, weights=bad, lr=self._lr))

    @staticmethod
    def message(
        trainer: L.Trainer, loss: float, weights: list[str] | None = None, lr: float | None = None
    ) -> str:
        terms = {
            key.split("/", 1)[1]: _value(value)
            for key, value in trainer.callback_metrics.items()
            if key in ("train/ce", "train/reg")
        }
        described = ", ".join(f"{k} {v:.4g}" for k, v in terms.items() if v is not None)
        rate = f"{lr:.4g}" if lr is not None else "unknown"
        what = f"the training loss became {loss}"
        if weights:
            what = f"{len(weights)} weight tensor(s) became NaN or infinite (first: {weights[0]})"
        return (
            f"{what} at step {trainer.global_step} (epoch"
            f" {trainer.current_epoch}){f': {described}' if described else ''}, with learning"
            f" rate {rate}. The run was stopped; checkpoints/last.ckpt, if an epoch completed,"
            " is the last good one. Try a lower optimizer.lr, a smaller regularizer.weight,"
            " gradient clipping (trainer.gradient_clip_val=1.0), or trainer.precision=32 when"
            " training in 16 bits; trainer.detect_anomaly=true finds the operation that"
            " produced it."
        )
