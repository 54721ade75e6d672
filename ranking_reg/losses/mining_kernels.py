"""Compiled CPU kernel of the semi-hard negative search (:func:`~.triplet.semihard_triplet_indices`).

The rule (TF's ``triplet_semihard_loss``): for the ordered pair (a, p), the negative is the
nearest one strictly farther than p, ``argmin {d(a, n) : y_n != y_a, d(a, n) > d(a, p)}``, or,
when no negative is farther, the farthest, ``argmax {d(a, n) : y_n != y_a}``; ties to the
lowest index.

How: distances are >= 0, so their IEEE bit patterns (sign bit cleared, which makes -0.0 equal
to +0.0), read as integers, order exactly as the floats do, and NaN patterns above +inf, as in
the torch search. Per anchor, one pass writes the row's 64-bit keys ``bits << 32 | index``
(integer order = by distance, then by index), every same-label entry INT64_MAX; then, per pair,
``min(key if key > threshold's keys else INT64_MAX)`` over the row is an integer min-reduction,
which LLVM vectorises (~0.15 ns a value on AVX2), and its low half is the negative. INT64_MAX
as the minimum means no negative is farther: the farthest is a max-reduction the same way, with
the index bits flipped so that the lowest index wins a tie.

Why a kernel: the torch search answers a block of pairs with three passes over a
(pairs x B) block of fresh integer keys; this reads each anchor's row once per pair from cache
and allocates nothing per pair. Used for CPU tensors; the torch search stays for CUDA and as the
reference of the tests.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_BIG = np.int64(np.iinfo(np.int64).max)
_ABS = np.int32(0x7FFFFFFF)
_NAN_AS_INF = np.int64(0x7F800000)  # a NaN d(a, p) counts as +inf, as in the torch search
_LOW = np.int64(0xFFFFFFFF)


@nb.njit(cache=True, nogil=True)
def semihard_negatives(
    bits: np.ndarray, labels: np.ndarray, pair_start: np.ndarray, pos: np.ndarray, out: np.ndarray
) -> None:
    """``out[i]`` = the semi-hard negative of pair i (anchor a, positive ``pos[i]``); anchor
    a's pairs are ``pair_start[a]:pair_start[a + 1]``. ``bits``: the (B, B) float32 squared
    distances viewed as int32. Every anchor with a pair must have a negative."""
    batch = bits.shape[0]
    keys = np.empty(batch, dtype=np.int64)
    for a in range(batch):
        lo, hi = pair_start[a], pair_start[a + 1]
        if hi == lo:
            continue
        row = bits[a]
        own = labels[a]
        for n in range(batch):
            key = (np.int64(row[n] & _ABS) << 32) | n
            keys[n] = _BIG if labels[n] == own else key
        farthest_at = -1
        for i in range(lo, hi):
            # key > (threshold bits, any index) <=> distance bits > threshold bits
            above = (min(np.int64(row[pos[i]] & _ABS), _NAN_AS_INF) + 1) << 32
            least = _BIG
            for n in range(batch):
                least = min(least, keys[n] if keys[n] >= above else _BIG)
            if least != _BIG:
                out[i] = least & _LOW
                continue
            if farthest_at < 0:  # no negative is farther than the positive: the farthest
                most = np.int64(-1)
                for n in range(batch):
                    # the largest distance, then the lowest index: index bits flipped
                    most = max(most, keys[n] ^ _LOW if keys[n] != _BIG else np.int64(-1))
                farthest_at = (most ^ _LOW) & _LOW
            out[i] = farthest_at


# reassociation lets LLVM vectorise the sums over the D dimensions (no NaN/inf assumptions)
@nb.njit(cache=True, nogil=True, fastmath={"reassoc"})
def triplet_gaps(
    x: np.ndarray, anchor: np.ndarray, pos: np.ndarray, neg: np.ndarray, out: np.ndarray
) -> None:
    """``out[t] = ||x_a - x_p||^2 - ||x_a - x_n||^2`` for triplet t = (a, p, n): the rows are
    read in place (no gathered (triplets x D) copies, whose fresh pages cost more than the
    arithmetic on CPU)."""
    dim = x.shape[1]
    for t in range(len(anchor)):
        xa, xp, xn = x[anchor[t]], x[pos[t]], x[neg[t]]
        gap = xa[0] * 0  # in x's dtype
        for j in range(dim):
            u = xa[j] - xp[j]
            v = xa[j] - xn[j]
            gap += u * u - v * v
        out[t] = gap


@nb.njit(cache=True, nogil=True)
def triplet_gap_gradient(
    x: np.ndarray,
    anchor: np.ndarray,
    pos: np.ndarray,
    neg: np.ndarray,
    grad_gap: np.ndarray,
    out: np.ndarray,
) -> None:
    """Add to ``out`` (B, D) the gradient of sum_t grad_gap[t] * gap_t (:func:`triplet_gaps`):
    d/dx_a = 2g (x_n - x_p), d/dx_p = -2g (x_a - x_p), d/dx_n = 2g (x_a - x_n)."""
    dim = x.shape[1]
    for t in range(len(anchor)):
        g = 2.0 * grad_gap[t]
        if g == 0.0:  # an inactive hinge: no gradient
            continue
        a, p, n = anchor[t], pos[t], neg[t]
        xa, xp, xn = x[a], x[p], x[n]
        ga, gp, gn = out[a], out[p], out[n]
        for j in range(dim):
            ga[j] += g * (xn[j] - xp[j])
            gp[j] -= g * (xa[j] - xp[j])
            gn[j] += g * (xa[j] - xn[j])
