"""Calibration of the softmax head: expected calibration error and its reliability bins.

Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, §2: the confidence of a
prediction is its maximum softmax probability; the predictions are grouped into M equal-width
confidence bins B_m = ((m-1)/M, m/M], m = 1..M, and

    ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|                      (Guo et al., Eq. 3)

with acc(B_m) the fraction of correct predictions in B_m and conf(B_m) their mean confidence.
The reliability diagram (their Fig. 1, bottom) plots acc(B_m) against the bin.

Written here rather than taken from torchmetrics' ``multiclass_calibration_error`` (which gives
the same number away from the bin edges, tests check it): torchmetrics bins with
``bucketize(right=True)``, i.e. left-closed bins [(m-1)/M, m/M) plus an extra bin for a
confidence of exactly 1, not Guo's right-closed ones; it works in float32; it applies the
softmax only when some score lies outside [0, 1] (logits that happen to lie in [0, 1] would be
taken for probabilities); and it returns no per-bin numbers for the diagram.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ranking_reg.metrics.knn import ArrayLike

DEFAULT_BINS = 15  # Guo et al.'s M


@dataclass(frozen=True)
class ReliabilityBins:
    """The M confidence bins of one evaluation (float64 / int64 tensors of length M).

    ``edges``: the M + 1 bin edges 0, 1/M, ..., 1; ``counts``: |B_m|; ``accuracy``: acc(B_m);
    ``confidence``: conf(B_m) (both NaN for an empty bin); ``ece``: Guo et al.'s Eq. 3.
    """

    edges: torch.Tensor
    counts: torch.Tensor
    accuracy: torch.Tensor
    confidence: torch.Tensor
    ece: float


def confidences_and_correct(
    logits: ArrayLike, labels: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max softmax probability (float64) and whether the arg-max is the label, per sample."""
    scores = torch.as_tensor(logits)
    y = torch.as_tensor(labels).long()
    if scores.ndim != 2 or len(scores) != len(y) or len(y) == 0:
        raise ValueError(
            f"need (N, C) logits and N labels, N > 0: got {tuple(scores.shape)} and {tuple(y.shape)}"
        )
    probs = torch.softmax(scores.double(), dim=1)
    confidence, predicted = probs.max(dim=1)
    return confidence, predicted == y


def reliability_bins(
    logits: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """Bin the test predictions by confidence into ``n_bins`` bins ((m-1)/M, m/M] and compute
    each bin's count, accuracy and mean confidence, and the ECE (Guo et al. 2017, Eq. 3).

    ``logits``: (N, C) scores of the class head (softmax is applied here, in float64);
    ``labels``: (N,) class ids. O(N·C).
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    m = int(n_bins)
    confidence, correct = confidences_and_correct(logits, labels)
    edges = torch.linspace(0.0, 1.0, m + 1, dtype=torch.float64)
    # right=False: edges[i-1] < x <= edges[i] -> bin i-1, Guo's right-closed bins; a confidence
    # is > 0 (at least 1/C), the clamp only guards rounding at the top edge.
    index = (torch.bucketize(confidence, edges[1:-1], right=False)).clamp(0, m - 1)
    counts = torch.bincount(index, minlength=m)
    conf_sum = torch.zeros(m, dtype=torch.float64).index_add_(0, index, confidence)
    hit_sum = torch.zeros(m, dtype=torch.float64).index_add_(0, index, correct.double())
    filled = counts > 0
    denominator = counts.clamp(min=1).double()
    accuracy = torch.where(filled, hit_sum / denominator, float("nan"))
    mean_conf = torch.where(filled, conf_sum / denominator, float("nan"))
    # |B_m|/n * |acc - conf| = |hits_m - conf_sum_m| / n: no division by an empty bin's count
    ece = float((hit_sum - conf_sum).abs().sum() / len(confidence))
    return ReliabilityBins(edges, counts, accuracy, mean_conf, ece)


def expected_calibration_error(
    logits: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS
) -> float:
    """ECE of the softmax head with ``n_bins`` equal-width confidence bins (Guo et al. 2017,
    Eq. 3; see :func:`reliability_bins`), a number in [0, 1]."""
    return reliability_bins(logits, labels, n_bins).ece
