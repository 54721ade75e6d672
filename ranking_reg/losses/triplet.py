"""The embedding-head regularizers: semi-hard and batch-hard triplet losses, center loss.

All triplet losses work on *squared* Euclidean distances
``d(i, j) = ||x_i - x_j||²`` of the embeddings as given (the model L2-normalises them first),
as the authors' TensorFlow code does (Taha et al., WACV 2020, Sec. 3; margin 0.2).

Mining (choosing the triplets) never needs gradients: it runs under ``torch.no_grad()`` on an
O(B²) distance matrix and returns index triples. The loss then recomputes only the selected
distances from the embeddings, so gradients flow through exactly the chosen (a, p, n) terms and
nothing of size B×B is kept for backward.

Distances are always computed in float32 (float64 stays float64) with autocast off, so bf16/fp16
autocast adds no low-precision matmul rounding to the mining decisions or the loss. Nothing is
promoted to float64: the mining compares the float32 distances exactly (through their bit
patterns, see :func:`semihard_triplet_indices`), so equal distances are ties and the lowest
index wins, as in the loop references of the tests.
"""

from __future__ import annotations

import numbers
from typing import Literal

import torch
import torch.nn.functional as F
from pytorch_metric_learning.miners import BaseMiner
from torch import Tensor

from ranking_reg.losses.mining_kernels import semihard_negatives
from ranking_reg.losses.triplet_gap import distance_dtype, triplet_gap
from ranking_reg.utils.errors import ConfigError

Reduction = Literal["mean", "sum", "none"]

# Largest number of elements of one block of integer keys in semi-hard mining (4M = 16 MiB in
# float32), so the working memory beyond the B×B matrix is fixed, whatever the number of pairs.
_CHUNK_ELEMENTS = 1 << 22


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
    zero = embeddings.sum().to(distance_dtype(embeddings)) * 0
    return zero.reshape(1)[:0] if reduction == "none" else zero


def pairwise_squared_distances(embeddings: Tensor) -> Tensor:
    """Matrix ``D[i, j] = ||x_i - x_j||²`` (B×B), via ``||x_i||² + ||x_j||² - 2 x_i·x_j``.

    As TensorFlow's ``pairwise_distance(squared=True)``: rounding negatives are clamped to 0
    and the diagonal is exactly 0. Computed in float32 (float64 stays float64) with autocast
    disabled. Differentiable.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = embeddings.to(distance_dtype(embeddings))
        sq = (x * x).sum(dim=1)
        # In-place steps on the fresh addmm output: one B×B buffer, still differentiable.
        dist = torch.addmm(sq[:, None], x, x.T, alpha=-2.0).add_(sq[None, :]).clamp_(min=0.0)
        return dist.fill_diagonal_(0.0)


def _positive_pairs(labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """All ordered pairs (a, p), a ≠ p, y_a = y_p, in row-major order, and the number of classes.

    Built from the labels in O(B log B + pairs), without a B×B same-label mask: one stable sort
    lists every class's members in index order; anchor a is repeated once per member of its
    class and paired with them in turn, then the pair (a, a) is dropped.
    """
    batch = labels.numel()
    order = torch.argsort(labels, stable=True)
    _, class_sizes = torch.unique_consecutive(labels[order], return_counts=True)
    class_start = torch.cumsum(class_sizes, dim=0) - class_sizes
    class_of = torch.empty_like(order)
    class_of[order] = torch.repeat_interleave(
        torch.arange(class_sizes.numel(), device=labels.device), class_sizes
    )
    own_size = class_sizes[class_of]
    anchor = torch.repeat_interleave(torch.arange(batch, device=labels.device), own_size)
    first = torch.cumsum(own_size, dim=0) - own_size
    member = torch.arange(anchor.numel(), device=labels.device) - first[anchor]
    pos = order[class_start[class_of[anchor]] + member]
    keep = pos != anchor
    return anchor[keep], pos[keep], class_sizes.numel()


def _mining_distances(embeddings: Tensor, anchor: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """The B×B matrix of :func:`pairwise_squared_distances` (same values), detached, and d(a, p).

    Every same-label entry (the pairs and the diagonal) is then set to +inf, so that only
    negatives can be a row's minimum. Runs under the callers' ``no_grad``.
    """
    dist = pairwise_squared_distances(embeddings.detach())
    d_ap = dist[anchor, pos]
    dist[anchor, pos] = float("inf")
    return dist.fill_diagonal_(float("inf")), d_ap


def _compiled_search_applies(embeddings: Tensor) -> bool:
    """Whether :func:`semihard_triplet_indices` takes the compiled CPU search
    (:mod:`~ranking_reg.losses.mining_kernels`, float32 distances) rather than the torch one."""
    return embeddings.device.type == "cpu" and distance_dtype(embeddings) == torch.float32


# Integer type with the width of each distance dtype: its view of the bits of a non-negative
# float orders exactly like the float (IEEE 754), which the semi-hard search below relies on.
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


@torch.no_grad()
def semihard_triplet_indices(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """FaceNet's semi-hard selection exactly as TF's ``triplet_semihard_loss`` implements it.

    For every ordered anchor–positive pair (a, p), a ≠ p, y_a = y_p, the negative is
    ``n = argmin { d(a, n) : y_n ≠ y_a, d(a, n) > d(a, p) }`` (strictly farther than the
    positive), or, when no negative is farther, ``n = argmax { d(a, n) : y_n ≠ y_a }``.
    Ties go to the lowest index. Pairs come in row-major (anchor, positive) order. Returns
    three empty index vectors when the batch has no positive pair or no negative.

    Cost: O(B²) memory (one B×B distance matrix plus blocks of at most ``_CHUNK_ELEMENTS``)
    and O(pairs · B) time; no B×B×B tensor is ever formed (PML's TripletMarginMiner is O(B³)).

    How (all exact, on the same float matrix as :func:`pairwise_squared_distances`): the
    distances are >= 0, so their IEEE bit patterns, read as integers, order exactly as the
    floats do. For a pair with threshold bits ``t = bits(d(a, p))``, the integer
    ``k = bits(d(a, n)) - t - 1`` is >= 0 exactly when ``d(a, n) > d(a, p)``, and then grows with
    ``d(a, n)``; flipping its sign bit maps "k >= 0, ascending" before every "k < 0" in signed
    order. So one subtraction, one XOR and one ``argmin`` per row give the semi-hard negative
    (``argmin`` returns the first index among ties), with no comparison mask and no sort.
    Same-label entries are set to +inf first; a pair whose minimum lands on one has no negative
    above d(a, p) and takes the farthest negative instead (rare; computed for those rows only).
    That is the search on CUDA and for float64; float32 CPU tensors take the compiled search of
    :mod:`~ranking_reg.losses.mining_kernels` (the same keys, one vectorised min-reduction per
    pair, ~4x less time), which the tests compare with this one index for index.
    """
    labels = _check_inputs(embeddings, labels)
    anchor, pos, n_classes = _positive_pairs(labels)
    if anchor.numel() == 0 or n_classes < 2:
        empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
        return empty, empty.clone(), empty.clone()
    counts = torch.bincount(anchor, minlength=labels.numel())
    if _compiled_search_applies(embeddings):
        # the compiled search (same rule, same matrix, same ties): ~3x less time on CPU
        dist = pairwise_squared_distances(embeddings.detach())
        pair_start = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        negative = torch.empty_like(anchor)
        semihard_negatives(
            dist.view(torch.int32).numpy(),
            labels.numpy(),
            pair_start.numpy(),
            pos.numpy(),
            negative.numpy(),
        )
        return anchor, pos, negative

    dist, d_ap = _mining_distances(embeddings, anchor, pos)
    batch = dist.shape[0]
    # abs_ turns the -0.0 that clamp_ may leave into +0.0 (equal as floats): then every bit
    # pattern is that of a float >= 0 (or +NaN) and orders like the float.
    bits = dist.abs_().view(_BITS[dist.dtype])
    # A NaN d(a, p) compares false with everything, so TF falls back to the farthest negative,
    # as a threshold of +inf does. Then 1 <= t + 1 <= bits(inf) + 1 and 0 <= bits(d): the
    # subtraction below never overflows.
    inf = float("inf")
    threshold = torch.nan_to_num(d_ap.abs_(), nan=inf, posinf=inf).view(bits.dtype) + 1
    sign_bit = torch.iinfo(bits.dtype).min

    per_anchor = int(counts[0])
    negative = torch.empty_like(anchor)
    if per_anchor > 0 and bool((counts == per_anchor).all()):
        # Every anchor has the same number c of positives (every P×K batch): blocks of rows
        # against their c thresholds at once, (rows, c, B), without gathering any row.
        thresholds = threshold.view(batch, per_anchor, 1)
        rows_per_block = max(1, _CHUNK_ELEMENTS // (per_anchor * batch))
        for start in range(0, batch, rows_per_block):
            stop = min(start + rows_per_block, batch)
            keys = torch.sub(bits[start:stop, None, :], thresholds[start:stop])
            keys.bitwise_xor_(sign_bit)
            negative[start * per_anchor : stop * per_anchor] = keys.argmin(dim=2).view(-1)
    else:
        pairs_per_block = max(1, _CHUNK_ELEMENTS // batch)
        for start in range(0, anchor.numel(), pairs_per_block):
            block = slice(start, start + pairs_per_block)
            keys = bits.index_select(0, anchor[block]).sub_(threshold[block, None])
            keys.bitwise_xor_(sign_bit)
            negative[block] = keys.argmin(dim=1)

    # The minimum landed on a non-negative (+inf): no negative is farther than the positive.
    fallback = (labels[negative] == labels[anchor]).nonzero(as_tuple=True)[0]
    if fallback.numel():
        rows, row_of_pair = torch.unique(anchor[fallback], return_inverse=True)
        # -1 is below every distance: argmax (first index among ties) skips non-negatives.
        candidates = dist.index_select(0, rows).masked_fill_(
            labels[rows, None] == labels[None, :], -1.0
        )
        negative[fallback] = candidates.argmax(dim=1)[row_of_pair]
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
    gap = triplet_gap(embeddings, anchor, pos, negative)
    return _reduce(F.relu(gap + float(margin)), reduction)


@torch.no_grad()
def batch_hard_triplet_indices(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hermans et al. (2017) batch-hard selection, one triplet per valid anchor.

    For each anchor a with at least one positive and one negative:
    ``p = argmax_{y_p = y_a, p ≠ a} d(a, p)`` and ``n = argmin_{y_n ≠ y_a} d(a, n)``, d squared
    Euclidean, ties to the lowest index. O(B²) time and memory.
    """
    labels = _check_inputs(embeddings, labels)
    anchor, pos, n_classes = _positive_pairs(labels)
    if anchor.numel() == 0 or n_classes < 2:
        empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
        return empty, empty.clone(), empty.clone()
    dist, d_ap = _mining_distances(embeddings, anchor, pos)
    # Same-label entries are +inf. The argmin runs on the bit patterns (abs_ first turns a -0.0
    # into +0.0): they order as the floats >= 0 do, and an integer argmin is ~2x a float one.
    # First index among ties, as torch.argmin.
    hardest_negative = dist.abs_().view(_BITS[dist.dtype]).argmin(dim=1)

    # The pairs as a padded (B, most positives) table, slot k = the anchor's k-th positive in
    # index order; -1 pads below every distance, so argmax (first among ties) is Hermans' p.
    batch = dist.shape[0]
    counts = torch.bincount(anchor, minlength=batch)
    slot = (
        torch.arange(anchor.numel(), device=anchor.device)
        - (torch.cumsum(counts, 0) - counts)[anchor]
    )
    table = d_ap.new_full((batch, int(counts.max())), -1.0)
    table[anchor, slot] = d_ap
    best_slot = table.argmax(dim=1)
    positives = torch.zeros(table.shape, dtype=torch.long, device=anchor.device)
    positives[anchor, slot] = pos
    valid = (counts > 0).nonzero(as_tuple=True)[0]
    return valid, positives[valid, best_slot[valid]], hardest_negative[valid]


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
    diff = triplet_gap(embeddings, anchor, pos, negative)
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
