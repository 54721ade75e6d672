"""The embedding-head regularizers: semi-hard and batch-hard triplet losses, center loss.

All triplet losses work on *squared* Euclidean distances
``d(i, j) = ||x_i - x_j||²`` of the embeddings as given (the model L2-normalises them first),
as the authors' TensorFlow code does (Taha et al., WACV 2020, Sec. 3; margin 0.2).

Mining (choosing the triplets) never needs gradients: it runs under ``torch.no_grad()`` on an
O(B²) distance matrix and returns index triples. The loss then recomputes only the selected
distances from the embeddings, so gradients flow through exactly the chosen (a, p, n) terms and
nothing of size B×B is kept for backward.

Distances are always computed in float32 (float64 stays float64) with autocast off, so bf16/fp16
autocast adds no low-precision matmul rounding to the mining decisions or the loss.
"""

from __future__ import annotations

import numbers
from typing import Literal

import torch
import torch.nn.functional as F
from pytorch_metric_learning.miners import BaseMiner
from torch import Tensor

from ranking_reg.utils.errors import ConfigError

Reduction = Literal["mean", "sum", "none"]

# Largest number of elements of one (rows × B) block in semi-hard mining: 4M floats = 16 MiB,
# so the working memory beyond the B×B matrix is fixed, whatever the number of pairs.
_CHUNK_ELEMENTS = 1 << 22


def _distance_dtype(embeddings: Tensor) -> torch.dtype:
    return torch.float64 if embeddings.dtype == torch.float64 else torch.float32


def _check_inputs(embeddings: Tensor, labels: Tensor) -> Tensor:
    """Validate shapes; return the labels as a flat tensor on the embeddings' device."""
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D (batch, dim), got shape {tuple(embeddings.shape)}"
        )
    labels = torch.as_tensor(labels, device=embeddings.device).reshape(-1)
    if labels.numel() != embeddings.shape[0]:
        raise ValueError(
            f"got {labels.numel()} labels for {embeddings.shape[0]} embeddings; they must match"
        )
    return labels


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(
            f"unknown triplet-loss reduction {reduction!r}: use 'mean' (the paper's), 'sum' or "
            "'none'."
        )


def check_margin(margin: object, allow_soft: bool) -> None:
    """A margin is a number >= 0, or ``"soft"`` (softplus) where the loss allows it (batch-hard).

    The one place this rule lives: the regularizer calls it when it is built, the functional
    losses when they are called.
    """
    if allow_soft and margin == "soft":
        return
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not margin >= 0:
        allowed = "a number >= 0 (the paper: 0.2)" + (" or 'soft'" if allow_soft else "")
        soft = "" if allow_soft or margin != "soft" else " (the soft margin is for miner=hard)"
        raise ConfigError(
            f"regularizer.margin={margin}: this miner takes {allowed}{soft}; set"
            " regularizer.margin accordingly."
        )


def _reduce(losses: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _zero_loss(embeddings: Tensor, reduction: Reduction) -> Tensor:
    """A zero that is still part of the graph (so DDP and the optimizer see every parameter)."""
    zero = embeddings.sum().to(_distance_dtype(embeddings)) * 0
    return zero.reshape(1)[:0] if reduction == "none" else zero


def pairwise_squared_distances(embeddings: Tensor) -> Tensor:
    """Matrix ``D[i, j] = ||x_i - x_j||²`` (B×B), via ``||x_i||² + ||x_j||² - 2 x_i·x_j``.

    As TensorFlow's ``pairwise_distance(squared=True)``: rounding negatives are clamped to 0
    and the diagonal is exactly 0. Computed in float32 (float64 stays float64) with autocast
    disabled. Differentiable.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = embeddings.to(_distance_dtype(embeddings))
        sq = (x * x).sum(dim=1)
        # In-place steps on the fresh addmm output: one B×B buffer, still differentiable.
        dist = torch.addmm(sq[:, None], x, x.T, alpha=-2.0).add_(sq[None, :]).clamp_(min=0.0)
        return dist.fill_diagonal_(0.0)


def _selected_squared_distances(embeddings: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """``||x_i - x_j||²`` for index vectors i, j, recomputed directly (the graph for backward)."""
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = embeddings.to(_distance_dtype(embeddings))
        return (x[i] - x[j]).pow(2).sum(dim=1)


@torch.no_grad()
def semihard_triplet_indices(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """FaceNet's semi-hard selection exactly as TF's ``triplet_semihard_loss`` implements it.

    For every ordered anchor–positive pair (a, p), a ≠ p, y_a = y_p, the negative is
    ``n = argmin { d(a, n) : y_n ≠ y_a, d(a, n) > d(a, p) }`` (strictly farther than the
    positive), or, when no negative is farther, ``n = argmax { d(a, n) : y_n ≠ y_a }``.
    Ties go to the lowest index. Pairs come in row-major (anchor, positive) order. Returns
    three empty index vectors when the batch has no positive pair or no negative.

    Cost: O(B²) memory (one B×B distance matrix plus fixed-size blocks of rows) and
    O(pairs · B) time; no B×B×B tensor is ever formed (PML's TripletMarginMiner is O(B³)).
    """
    labels = _check_inputs(embeddings, labels)
    same = labels[:, None] == labels[None, :]
    positive = same.clone().fill_diagonal_(False)
    anchor, pos = positive.nonzero(as_tuple=True)
    del positive
    if anchor.numel() == 0 or bool(same.all()):
        empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
        return empty, empty.clone(), empty.clone()

    dist = pairwise_squared_distances(embeddings.detach())
    d_ap = dist[anchor, pos]
    # Distances and thresholds d(a, p) are >= 0, so -1 marks "not a negative": argmax skips it
    # and the strict test "> d(a, p)" below never selects it.
    negative_dist = dist.masked_fill_(same, -1.0)
    farthest_negative = negative_dist.argmax(dim=1)  # first index among ties
    del same, dist

    # Pair j is the slot[j]-th positive of its anchor. Looping over slots instead of pairs lets
    # a full slot (every anchor has that many positives, as in every P×K batch) read rows of
    # the matrix in place rather than gather one row copy per pair (~35% faster at B = 8192).
    batch = negative_dist.shape[0]
    counts = torch.bincount(anchor, minlength=batch)
    first_pair = torch.cumsum(counts, dim=0) - counts
    slot = torch.arange(anchor.numel(), device=anchor.device) - first_pair[anchor]
    negative = torch.empty_like(anchor)
    rows_per_block = max(1, _CHUNK_ELEMENTS // batch)
    for k in range(int(counts.max())):
        pairs = (slot == k).nonzero(as_tuple=True)[0]
        full = pairs.numel() == batch  # then anchor[pairs] is 0..B-1 in order
        for start in range(0, pairs.numel(), rows_per_block):
            block = pairs[start : start + rows_per_block]
            block_anchor = anchor[block]
            rows = (
                negative_dist[start : start + block.numel()]
                if full
                else negative_dist[block_anchor]
            )
            above = torch.where(rows > d_ap[block, None], rows, float("inf"))
            closest, closest_idx = above.min(dim=1)  # first index among ties
            negative[block] = torch.where(
                torch.isfinite(closest), closest_idx, farthest_negative[block_anchor]
            )
    return anchor, pos, negative


def semihard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    reduction: Reduction = "mean",
) -> Tensor:
    """Triplet loss with FaceNet semi-hard mining (TF ``triplet_semihard_loss``; Taha et al.).

    ``L = 1/|P| Σ_{(a,p) ∈ P} max(d(a,p) - d(a,n(a,p)) + margin, 0)`` over *all* ordered
    anchor–positive pairs P (zero terms included), with n(a, p) chosen by
    :func:`semihard_triplet_indices` and d the squared Euclidean distance.

    ``reduction``: "mean" (the above), "sum", or "none" (the per-pair vector, in the order of
    :func:`semihard_triplet_indices`). A batch with no positive pair or no negative gives a zero
    (an empty vector for "none") that is still connected to the graph, never NaN.
    """
    _check_reduction(reduction)
    check_margin(margin, allow_soft=False)
    anchor, pos, negative = semihard_triplet_indices(embeddings, labels)
    if anchor.numel() == 0:
        return _zero_loss(embeddings, reduction)
    d_ap = _selected_squared_distances(embeddings, anchor, pos)
    d_an = _selected_squared_distances(embeddings, anchor, negative)
    return _reduce(F.relu(d_ap - d_an + float(margin)), reduction)


@torch.no_grad()
def batch_hard_triplet_indices(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hermans et al. (2017) batch-hard selection, one triplet per valid anchor.

    For each anchor a with at least one positive and one negative:
    ``p = argmax_{y_p = y_a, p ≠ a} d(a, p)`` and ``n = argmin_{y_n ≠ y_a} d(a, n)``, d squared
    Euclidean, ties to the lowest index. O(B²) time and memory.
    """
    labels = _check_inputs(embeddings, labels)
    same = labels[:, None] == labels[None, :]
    positive = same.clone().fill_diagonal_(False)
    valid = positive.any(dim=1) & ~same.all(dim=1)
    dist = pairwise_squared_distances(embeddings.detach())
    hardest_positive = dist.masked_fill(~positive, float("-inf")).argmax(dim=1)
    hardest_negative = dist.masked_fill_(same, float("inf")).argmin(dim=1)
    anchor = valid.nonzero(as_tuple=True)[0]
    return anchor, hardest_positive[anchor], hardest_negative[anchor]


def batch_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float | Literal["soft"] = 0.2,
    reduction: Reduction = "mean",
) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

    ``L = 1/|A| Σ_{a ∈ A} max(d(a, p*) - d(a, n*) + margin, 0)`` over the anchors A that have a
    positive and a negative, with p*, n* from :func:`batch_hard_triplet_indices` and d squared
    Euclidean (as the authors' ``batch_hard``). ``margin="soft"`` uses
    ``softplus(d(a, p*) - d(a, n*))`` instead of the hinge. Reductions and the empty-batch zero
    as in :func:`semihard_triplet_loss`.
    """
    _check_reduction(reduction)
    check_margin(margin, allow_soft=True)
    anchor, pos, negative = batch_hard_triplet_indices(embeddings, labels)
    if anchor.numel() == 0:
        return _zero_loss(embeddings, reduction)
    diff = _selected_squared_distances(embeddings, anchor, pos) - _selected_squared_distances(
        embeddings, anchor, negative
    )
    losses = F.softplus(diff) if margin == "soft" else F.relu(diff + float(margin))
    return _reduce(losses, reduction)


class SemiHardMiner(BaseMiner):
    """The semi-hard rule of :func:`semihard_triplet_indices` as a pytorch-metric-learning miner.

    Returns one (anchor, positive, negative) triple per ordered anchor–positive pair. With

        ``TripletMarginLoss(margin=0.2, distance=LpDistance(normalize_embeddings=False, power=2),
        reducer=MeanReducer())``

    (PML defaults otherwise: ``swap=False``, ``smooth_loss=False``; ``triplets_per_anchor`` is
    ignored when indices are given) it gives the same value as :func:`semihard_triplet_loss`.
    ``MeanReducer`` is essential: PML's default ``AvgNonZeroReducer`` averages only the non-zero
    terms, which is not the TF/paper mean over all pairs. ``normalize_embeddings=False`` makes
    the equality hold for any input; for L2-normalised embeddings PML's default normalisation is
    a no-op and may stay on.

    Mining always uses squared Euclidean distances of the embeddings as given; a ``distance``
    argument is refused rather than silently ignored. Only in-batch mining is defined
    (``ref_emb`` must be omitted).
    """

    def __init__(self, **kwargs: object) -> None:
        if kwargs.get("distance") is not None:
            raise ConfigError(
                "SemiHardMiner mines on squared Euclidean distances (the paper's rule); do not "
                "pass it a 'distance'. Give the distance to the loss instead."
            )
        super().__init__(**kwargs)

    def mine(
        self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        if ref_emb is not embeddings or ref_labels is not labels:
            raise ValueError("SemiHardMiner mines within one batch; call it without ref_emb")
        return semihard_triplet_indices(embeddings, labels)
