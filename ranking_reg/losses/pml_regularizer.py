"""Any pytorch-metric-learning loss as the embedding-head regularizer (``regularizer=pml`` and
the presets ``multi_similarity``, ``proxy_anchor``, ``supcon``, ``contrastive``, ``xbm_triplet``,
``triplet_center``; docs/REGULARIZERS.md).

Total loss ``L = L_softmax + weight * L_reg`` (Taha et al. 2020, Eq. 3) with ``L_reg`` the PML
loss of the batch's L2-normalised embeddings, optionally with a PML miner's tuples, optionally
against a cross-batch memory (PML's ``CrossBatchMemory``, Wang et al., "Cross-Batch Memory for
Embedding Learning", CVPR 2020).

Cross-device semantics (``cross_device=true``, DDP), as the triplet term: the loss is computed
on the global batch (:func:`~ranking_reg.losses.regularizers.global_batch`) and multiplied by the
world size W, so that DDP's gradient averaging yields the embeddings' gradient of the
global-batch loss. Loss-owned parameters (proxies, SoftTriple centres, ArcFace weights,
triplet-center centres) see the whole global batch on every process, so each process's gradient
for them is already W x the global one, and DDP's averaging keeps that factor: a gradient hook
divides their gradient by W. A cross-batch memory enqueues the gathered global batch on every
process, so every process keeps the same memory.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction, CrossBatchMemory
from pytorch_metric_learning.miners import BaseMiner
from torch import nn

from ranking_reg.losses.regularizers import RegularizerOutput, global_batch
from ranking_reg.utils.errors import ConfigError

# Reduction types whose terms are hinges over selected tuples: their non-zero share is the
# "active" fraction (as train/active_triplets of the triplet regularizer). Per-sample ("element")
# and already-reduced terms (proxy losses, SupCon, Multi-Similarity) have no such fraction.
_TUPLE_REDUCTIONS = ("triplet", "pos_pair", "neg_pair")


def _describe(loss: Any) -> str:
    target = loss.func if isinstance(loss, functools.partial) else loss
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{name}"


def build_pml_loss(
    loss: Any, num_classes: int | None = None, embedding_size: int | None = None
) -> BaseMetricLossFunction:
    """The PML loss of ``regularizer.loss``: a built loss as it is, or a Hydra ``_partial_``
    called with ``num_classes`` / ``embedding_size`` when its signature takes them and the
    config does not set them (proxy losses: ProxyAnchorLoss, SoftTripleLoss, ArcFaceLoss, ...)."""
    if isinstance(loss, BaseMetricLossFunction):
        return loss
    func = loss.func if isinstance(loss, functools.partial) else None
    if not (inspect.isclass(func) and issubclass(func, BaseMetricLossFunction)):
        hint = (
            " For a cross-batch memory keep a PML loss here and set regularizer.memory_size."
            if func is CrossBatchMemory or isinstance(loss, CrossBatchMemory)
            else ""
        )
        raise ConfigError(
            f"regularizer.loss builds {_describe(loss)}, which is not a pytorch-metric-learning"
            " loss: set regularizer.loss._target_ to a class of pytorch_metric_learning.losses"
            " (e.g. regularizer=pml regularizer.loss._target_=pytorch_metric_learning.losses."
            "MultiSimilarityLoss) or ranking_reg.losses.TripletCenterLoss, and keep"
            f" regularizer.loss._partial_=true.{hint}"
        )
    parameters = inspect.signature(func).parameters
    kwargs: dict[str, int] = {}
    for key, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
        if key in parameters and key not in loss.keywords:
            if value is None:
                raise ConfigError(
                    f"regularizer.loss={func.__name__} needs {key}, which the regularizer fills"
                    " from the model (regularizer.num_classes: ${model.net.num_classes},"
                    " regularizer.embedding_dim: ${model.net.embedding_dim}); restore those keys"
                    f" or give +regularizer.loss.{key}=..."
                )
            kwargs[key] = int(value)
    return loss(**kwargs)


class PMLRegularizer(nn.Module):
    """A pytorch-metric-learning loss (with an optional miner and cross-batch memory) on the
    embedding head; ``L_reg = loss(embeddings, labels, miner(embeddings, labels))``.

    ``loss``: a PML loss or a Hydra partial of one (see :func:`build_pml_loss`). ``miner``: a PML
    miner or None (the loss's own default tuples, usually all pairs/triplets). ``memory_size``:
    None, or wrap the loss in PML's ``CrossBatchMemory`` of that many embeddings (the miner then
    mines the batch against the memory). Loss-owned parameters (:meth:`loss_parameters`) are
    trained in their own optimizer group at ``param_lr_scale`` x the optimizer's lr with weight
    decay ``param_weight_decay`` (:meth:`RankingRegModule.configure_optimizers`).
    """

    def __init__(
        self,
        loss: Any,
        miner: BaseMiner | None = None,
        weight: float = 1.0,
        cross_device: bool = True,
        memory_size: int | None = None,
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        param_lr_scale: float = 100.0,
        param_weight_decay: float = 0.0,
        name: str = "pml",
    ) -> None:
        super().__init__()
        if miner is not None and not isinstance(miner, BaseMiner):
            raise ConfigError(
                f"regularizer.miner builds a {type(miner).__name__}, not a pytorch-metric-learning"
                " miner; set regularizer.miner._target_ to a class of pytorch_metric_learning."
                "miners, or regularizer.miner=null for the loss's own tuples."
            )
        self.name = name
        self.weight = float(weight)
        self.cross_device = cross_device
        self.param_lr_scale = float(param_lr_scale)
        self.param_weight_decay = float(param_weight_decay)
        inner = build_pml_loss(loss, num_classes, embedding_dim)
        self.memory_size = None if memory_size is None else int(memory_size)
        if self.memory_size is None:
            self.loss: nn.Module = inner
            self.miner = miner
        else:
            loss_name = type(inner).__name__
            if loss_name not in CrossBatchMemory.supported_losses():
                raise ConfigError(
                    f"regularizer.memory_size={memory_size} with {loss_name}: PML's"
                    " CrossBatchMemory works with the pair and triplet losses only"
                    f" ({', '.join(CrossBatchMemory.supported_losses())}); use one of them or"
                    " regularizer.memory_size=null."
                )
            if embedding_dim is None or self.memory_size < 1:
                raise ConfigError(
                    f"regularizer.memory_size={memory_size} needs regularizer.embedding_dim (the"
                    " model's, ${model.net.embedding_dim}) and a memory of at least one batch."
                )
            # the miner goes inside: it mines the batch (queries) against the memory
            self.loss = CrossBatchMemory(
                inner, embedding_size=int(embedding_dim), memory_size=self.memory_size, miner=miner
            )
            self.miner = None
            # CrossBatchMemory keeps its ring position in Python attributes, outside the
            # state_dict: this buffer carries them through checkpoints (exact resume)
            self.register_buffer("memory_cursor", torch.zeros(2, dtype=torch.long))
            self.register_load_state_dict_post_hook(PMLRegularizer._restore_memory_cursor)
        self._param_grad_scale = 1.0
        self._active: torch.Tensor | None = None
        self._hook_loss_parameters()
        reducer = getattr(inner, "reducer", None)
        if isinstance(reducer, nn.Module):
            reducer.register_forward_pre_hook(self._record_active)

    @property
    def base_loss(self) -> BaseMetricLossFunction:
        """The PML loss itself (inside the memory wrapper when there is one)."""
        return self.loss.loss if isinstance(self.loss, CrossBatchMemory) else self.loss

    def loss_parameters(self) -> list[nn.Parameter]:
        """The loss's own trainable tensors (proxies, centres, class weights); [] for most
        pair/triplet losses."""
        return list(self.loss.parameters())

    @staticmethod
    def _restore_memory_cursor(module: PMLRegularizer, incompatible_keys: Any) -> None:
        position, filled = (int(v) for v in module.memory_cursor.tolist())
        module.loss.queue_idx = position
        module.loss.has_been_filled = bool(filled)

    def _hook_loss_parameters(self) -> None:
        """Put :meth:`_scale_param_grad` on every loss-owned parameter that lacks it. Checked at
        each forward because tensor hooks do not survive a deepcopy or pickling of the module
        (``ddp_spawn`` pickles it), which would silently bring back the W x gradient."""
        for parameter in self.loss_parameters():
            hooks = parameter._backward_hooks or {}
            if not any(getattr(hook, "__self__", None) is self for hook in hooks.values()):
                parameter.register_hook(self._scale_param_grad)

    def _scale_param_grad(self, grad: torch.Tensor) -> torch.Tensor:
        # Before accumulation and DDP's all-reduce: the global-batch loss x W gave W x the grad.
        return grad if self._param_grad_scale == 1.0 else grad * self._param_grad_scale

    def _record_active(self, reducer: nn.Module, args: tuple[Any, ...]) -> None:
        loss_dict = args[0] if args else {}
        terms = [
            term["losses"].detach()
            for term in loss_dict.values()
            if isinstance(term, dict)
            and term.get("reduction_type") in _TUPLE_REDUCTIONS
            and torch.is_tensor(term.get("losses"))
            and term["losses"].numel() > 0
        ]
        if terms:
            values = torch.cat([t.reshape(-1) for t in terms])
            self._active = (values > 0).float().mean()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> RegularizerOutput:
        embeddings, labels, scale = global_batch(embeddings, labels, self.cross_device)
        self._param_grad_scale = 1.0 / scale
        self._hook_loss_parameters()
        self._active = None
        if isinstance(self.loss, CrossBatchMemory):
            if embeddings.shape[0] > self.memory_size:
                raise ConfigError(
                    f"regularizer.memory_size={self.memory_size} is smaller than the"
                    f" {'global ' if scale > 1 else ''}batch of {embeddings.shape[0]} embeddings"
                    " it enqueues each step; give a memory of several batches."
                )
            loss = self.loss(embeddings, labels)
            self.memory_cursor[0].fill_(self.loss.queue_idx)
            self.memory_cursor[1].fill_(int(self.loss.has_been_filled))
        else:
            tuples = self.miner(embeddings, labels) if self.miner is not None else None
            loss = self.loss(embeddings, labels, tuples)
        return RegularizerOutput(loss=loss * scale, active_fraction=self._active)


__all__ = ["PMLRegularizer", "build_pml_loss"]
