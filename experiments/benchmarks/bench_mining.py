"""Benchmark: triplet mining + loss, forward and backward, ours vs pytorch-metric-learning.

Compares, in one process and on the same inputs (P×K batches, K = 4 images per class, 256-d
L2-normalised embeddings):

- ``semihard_triplet_loss`` (FaceNet/TF semi-hard rule, O(B²) memory) against PML's
  ``TripletMarginMiner(margin=0.2, type_of_triplets="semihard")`` + ``TripletMarginLoss(0.2)``.
  This is *a different rule* (every triplet inside the margin band, not one negative per pair)
  and enumerates all B³ triplets, so it is run only up to B = 1024;
- ``batch_hard_triplet_loss`` against PML's ``BatchHardMiner`` + ``TripletMarginLoss(0.2)``.

Each figure is the median wall time of several forward+backward calls after one warm-up round,
ours and PML alternating round by round so that outside load hits both alike (ours five calls
a round, PML one: see ``_median_seconds``).

    python -m experiments.benchmarks.bench_mining [--quick] [--out results.json] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner, TripletMarginMiner

from ranking_reg.losses import batch_hard_triplet_loss, semihard_triplet_loss
from ranking_reg.utils.io import write_json_atomic

EMBEDDING_DIM = 256
SAMPLES_PER_CLASS = 4
MARGIN = 0.2


def _batch(batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, EMBEDDING_DIM, generator=g)
    x = torch.nn.functional.normalize(x, dim=1).requires_grad_(True)
    labels = torch.arange(batch_size // SAMPLES_PER_CLASS).repeat_interleave(SAMPLES_PER_CLASS)
    return x, labels


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _median_seconds(
    loss_fns: list[LossFn],
    x: torch.Tensor,
    y: torch.Tensor,
    repeats: int,
    calls: tuple[int, ...] | None = None,
) -> list[float]:
    """Median wall time of loss_fn(x, y).backward() for each function, after one warm-up round.

    The functions alternate within every round (``repeats`` rounds), so load from other
    processes on a shared machine hits all of them alike and their ratio stays meaningful.
    Within a round, function i runs ``calls[i]`` times in a row (default once each); its figure
    is the median over all its timed calls. Ours runs five times a round against PML's one: at
    B = 1024 PML's semi-hard miner works through ~1 GB of B x B x B masks, and the one call
    right after it pays for that (up to ~2x its time, page faults and evicted caches); over five
    calls the median is not moved by that one.
    """
    calls = calls or (1,) * len(loss_fns)
    times: list[list[float]] = [[] for _ in loss_fns]
    for i in range(repeats + 1):
        for loss_fn, record, count in zip(loss_fns, times, calls, strict=True):
            for _ in range(count):
                x.grad = None
                start = time.perf_counter()
                loss_fn(x, y).backward()
                if i > 0:
                    record.append(time.perf_counter() - start)
    x.grad = None
    return [statistics.median(t) for t in times]


def _ours_semihard(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return semihard_triplet_loss(x, y, margin=MARGIN)


def _ours_batch_hard(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return batch_hard_triplet_loss(x, y, margin=MARGIN)


def _pml_semihard() -> LossFn:
    miner = TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
    loss = TripletMarginLoss(margin=MARGIN)
    return lambda x, y: loss(x, y, miner(x, y))


def _pml_batch_hard() -> LossFn:
    miner = BatchHardMiner()
    loss = TripletMarginLoss(margin=MARGIN)
    return lambda x, y: loss(x, y, miner(x, y))


def _row(method: str, batch_size: int, ours: float, pml: float | None) -> dict:
    return {
        "bench": "mining",
        "method": method,
        "B": batch_size,
        "ours_s": ours,
        "pml_s": pml,
        "ratio": None if pml is None else pml / ours,
    }


def run(quick: bool = False) -> list[dict]:
    """Time both losses at each batch size; return one row dict per (method, B).

    ``ratio`` = PML time / our time (how many times faster ours is), None where PML is not run.
    ``quick`` uses tiny sizes only (to test that the benchmark runs).
    """
    if quick:
        both_sizes, ours_only_sizes = (32, 64), (128,)
    else:
        both_sizes, ours_only_sizes = (32, 256, 1024), (4096, 8192)
    rows = []
    pml_semihard, pml_hard = _pml_semihard(), _pml_batch_hard()
    for batch_size in both_sizes + ours_only_sizes:
        x, y = _batch(batch_size)
        # Small sizes take ~1 ms and are noisy on a shared machine: more repeats there.
        n = 2 if quick else 21 if batch_size <= 256 else 5 if batch_size <= 1024 else 3
        if batch_size in both_sizes:  # PML's semi-hard miner is O(B³): small sizes only
            ours, pml = _median_seconds([_ours_semihard, pml_semihard], x, y, n, calls=(5, 1))
        else:
            (ours,), pml = _median_seconds([_ours_semihard], x, y, n), None
        rows.append(_row("semihard", batch_size, ours, pml))
        ours, pml = _median_seconds([_ours_batch_hard, pml_hard], x, y, n, calls=(5, 1))
        rows.append(_row("batch_hard", batch_size, ours, pml))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (times in ms, ratio = PML / ours)."""
    lines = [
        "| loss | B | ours (ms) | PML (ms) | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        pml = "—" if r["pml_s"] is None else f"{r['pml_s'] * 1e3:.1f}"
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.1f}x"
        lines.append(f"| {r['method']} | {r['B']} | {r['ours_s'] * 1e3:.1f} | {pml} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes only")
    parser.add_argument("--out", help="also write the rows as JSON to this file")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(quick=args.quick)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    print(markdown_table(rows))
    if args.out:
        write_json_atomic(args.out, rows)


if __name__ == "__main__":
    main()
