"""The float32 ranking keys ||x||^2 - 2 q.x of the exact kNN and k-means, as one GEMM.

Every brute-force search here (:mod:`~ranking_reg.metrics.knn`, :mod:`~ranking_reg.metrics.kmeans`)
ranks items x for a query q by ``||x||^2 - 2 q.x`` (the squared distance less ||q||^2, which is
constant along the query's row). This module computes a (queries x items) block of those keys
as a single matrix product of augmented operands, ``[q, 1] . [-2x, ||x||^2]``, so the bias term
costs no separate pass over the block (the block is 128 MiB at NABirds' size, so each extra
pass is memory traffic, not arithmetic).

Why numpy's BLAS and not ``torch.addmm``: torch's CPU wheels call Intel MKL, whose sgemm takes
a generic, roughly 2x slower code path on AMD CPUs (measured on this project's AMD EPYC: 0.41 s
for a 1,362 x 24,633 x 256 block with ``torch.addmm`` against 0.19 s for the augmented product
with numpy's OpenBLAS, one thread; ``docs/PERFORMANCE.md`` section 3). numpy's wheels ship
OpenBLAS built for every x86-64 kernel family (``DYNAMIC_ARCH``), which picks its kernels by
instruction set, not vendor; on Intel CPUs it is close to MKL. faiss (pytorch-metric-learning's
backend) uses the same OpenBLAS kernels. The product writes into a caller-owned buffer that is
reused across chunks: a fresh 128 MiB array per chunk costs ~0.09 s of page faults.

The keys are float32 and their rounding depends on the BLAS's summation order, as any GEMM's
does; ties in the keys are resolved by item index by the callers, so the results are exact for
the keys as computed (bit-exact wherever the float32 arithmetic is, e.g. small integer data).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import numpy as np
import torch
from threadpoolctl import ThreadpoolController


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()  # scans the loaded libraries once (~10 ms)


def blas_threads(threads: int | None = None) -> AbstractContextManager:
    """numpy's BLAS limited to ``threads``, by default torch's thread count
    (``torch.set_num_threads`` governs both)."""
    limit = torch.get_num_threads() if threads is None else threads
    return _controller().limit(limits=limit, user_api="blas")


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch limited to one thread inside (restored after): for sequences of small operations
    whose thread-pool barriers cost more than they share, and for timing one loader worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def augmented_items(x: torch.Tensor, rows: int | None = None) -> np.ndarray:
    """``[-2x, ||x||^2]`` as a C-contiguous (rows, D + 1) float32 array, zero rows appended up
    to ``rows`` (padding: its keys are 0 and the callers mask them). -2x is exact in float32."""
    n, dim = x.shape
    out = np.zeros((max(rows or n, n), dim + 1), dtype=np.float32)
    xs = x.numpy()
    np.multiply(xs, -2.0, out=out[:n, :dim])
    out[:n, dim] = (x * x).sum(dim=1).numpy()
    return out


BACKENDS = ("auto", "blas", "torch")


def check_backend(backend: str) -> str:
    """The GEMM backend: ``blas`` (numpy's OpenBLAS, what ``auto`` means) or ``torch``
    (``torch.mm``: MKL in torch's CPU wheels; the path before this module, kept as the
    reference the tests compare against)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return "blas" if backend == "auto" else backend


def ranking_keys(
    q: torch.Tensor, items: np.ndarray, out: np.ndarray, backend: str = "blas"
) -> torch.Tensor:
    """Keys (Q, M) = ||x||^2 - 2 q.x of queries q (Q, D) against ``items`` =
    :func:`augmented_items` (M, D + 1), written into ``out`` (Q, M) float32 (C-contiguous) and
    returned as a tensor sharing its memory; ``backend`` as in :func:`check_backend`."""
    aug = np.ones((len(q), items.shape[1]), dtype=np.float32)
    aug[:, :-1] = q.numpy()
    if backend == "torch":
        torch.mm(torch.from_numpy(aug), torch.from_numpy(items).T, out=torch.from_numpy(out))
    else:
        np.matmul(aug, items.T, out=out)
    return torch.from_numpy(out)
