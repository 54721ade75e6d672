"""The differentiable triplet gap ``d(a, p) - d(a, n)`` of selected triplets (squared Euclidean),
the term every triplet loss here is a function of (:mod:`~ranking_reg.losses.triplet`)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ranking_reg.losses.mining_kernels import triplet_gap_gradient, triplet_gaps


def distance_dtype(embeddings: Tensor) -> torch.dtype:
    """The dtype every triplet distance is computed in: float64 stays float64, anything else
    (float16, bfloat16, float32) is float32."""
    return torch.float64 if embeddings.dtype == torch.float64 else torch.float32


def _compiled_gap_applies(x: Tensor) -> bool:
    """Whether :class:`_TripletGap` runs the compiled CPU loops rather than the torch ops."""
    return x.device.type == "cpu"


class _TripletGap(torch.autograd.Function):
    """``d(a, p) - d(a, n)`` per triplet, squared Euclidean, with a hand-written backward.

    Autograd of ``x[i]`` scatters its gradient with ``index_put_(accumulate=True)``, which on
    CPU cost more than the whole mining at B = 1024; here the gradient is ``index_add_`` of
    (triplets × D) rows: ∂/∂x_a = 2g(x_n - x_p), ∂/∂x_p = -2g(x_a - x_p),
    ∂/∂x_n = 2g(x_a - x_n). On CPU both directions are compiled loops over the triplets
    (:mod:`~ranking_reg.losses.mining_kernels`) that read the rows in place and allocate only
    the outputs. Once differentiable (no double backward).
    """

    @staticmethod
    def forward(ctx, x: Tensor, anchor: Tensor, pos: Tensor, neg: Tensor) -> Tensor:  # type: ignore[override]
        ctx.batch = x.shape[0]
        ctx.compiled = _compiled_gap_applies(x)
        if ctx.compiled:  # compiled, rows read in place (mining_kernels)
            x = x.detach().contiguous()
            gap = x.new_empty(anchor.numel())
            triplet_gaps(x.numpy(), anchor.numpy(), pos.numpy(), neg.numpy(), gap.numpy())
            ctx.save_for_backward(x, anchor, pos, neg)
            return gap
        # Few fresh (triplets × D) buffers, reused through out= and in-place ops: on CPU a new
        # multi-MB tensor costs page faults comparable to the arithmetic on it.
        to_pos = x.index_select(0, anchor)
        to_neg = to_pos.clone()
        other = x.index_select(0, pos)
        to_pos.sub_(other)
        torch.index_select(x, 0, neg, out=other)
        to_neg.sub_(other)
        d_ap = torch.mul(to_pos, to_pos, out=other).sum(dim=1)
        d_an = torch.mul(to_neg, to_neg, out=other).sum(dim=1)
        ctx.save_for_backward(anchor, pos, neg, to_pos, to_neg)
        return d_ap.sub_(d_an)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        if ctx.compiled:
            x, anchor, pos, neg = ctx.saved_tensors  # x: the detached, contiguous input
            out = x.new_zeros(x.shape)
            grad = grad.contiguous()
            triplet_gap_gradient(
                x.numpy(),
                anchor.numpy(),
                pos.numpy(),
                neg.numpy(),
                grad.numpy(),
                out.numpy(),
            )
            return out, None, None, None
        anchor, pos, neg, to_pos, to_neg = ctx.saved_tensors
        scale = (2.0 * grad)[:, None]
        term = to_pos * scale  # the saved tensors stay intact (retain_graph may call us again)
        out = term.new_zeros(ctx.batch, term.shape[1])
        out.index_add_(0, anchor, term)
        out.index_add_(0, pos, term, alpha=-1)
        torch.mul(to_neg, scale, out=term)
        out.index_add_(0, anchor, term, alpha=-1)
        out.index_add_(0, neg, term)
        return out, None, None, None


def triplet_gap(embeddings: Tensor, anchor: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """``d(a, p) - d(a, n)`` (squared Euclidean) for the triplets (a, p, n), differentiable
    w.r.t. the embeddings; computed in float32 (float64 stays float64) with autocast off."""
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        return _TripletGap.apply(embeddings.to(distance_dtype(embeddings)), anchor, pos, neg)
