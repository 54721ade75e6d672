"""Benchmark: retrieval evaluation at NABirds' test size, ours vs pytorch-metric-learning.

In one process and on the same embeddings (24,633 x 256, L2-normalised, 555 classes of 22-66
items, a seeded synthetic clustered set with non-trivial scores), times
``ranking_reg.metrics.retrieval_metrics`` against PML's ``AccuracyCalculator`` (faiss kNN and
faiss k-means, ``k="max_bin_count"``; faiss and torch get the same number of threads):

- ``retrieval``: Recall@K / precision_at_1 and MAP@R only (exact kNN, both sides); ours with
  the default backend: the symmetric search of :mod:`ranking_reg.metrics.self_knn` (each
  pair's distance computed once, numpy's OpenBLAS, :mod:`ranking_reg.metrics.gemm`);
- ``retrieval (reference, torch GEMM)``: the same with ``backend="torch"``: the reference
  chunked search (every distance computed from both sides, selection by grouped top-k)
  through torch's MKL sgemm (on AMD CPUs MKL takes a ~2x slower sgemm path), same process;
- ``retrieval+nmi``: the same plus NMI with our defaults (greedy k-means++ seeding on a
  subsample of 20 points a cluster, at most 20 Lloyd iterations) against PML's NMI (faiss:
  random init, exactly 20 iterations);
- ``retrieval+nmi@100it``: ours with up to 100 Lloyd iterations (in practice to convergence),
  to show what the 20-iteration cap costs in NMI.

R@1 (= PML's precision_at_1 here: no singleton classes) and MAP@R must agree; NMI comes from
two different k-means runs and agrees only closely. ``ratio`` = PML time / our time, each the
best of interleaved repeats.

    python -m experiments.benchmarks.bench_eval [--quick] [--threads T] [--out results.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ranking_reg.metrics import retrieval_metrics
from ranking_reg.utils.io import write_json_atomic

FULL = {"n": 24_633, "classes": 555, "dim": 256}  # NABirds' test split
QUICK = {"n": 1_200, "classes": 30, "dim": 32}
NOISE = 2.5  # noise norm relative to the unit class centres: R@1 ~ 0.6, NMI ~ 0.8 at full size


def synthetic_embeddings(n: int, classes: int, dim: int, seed: int = 0):
    """L2-normalised embeddings of ``classes`` noisy clusters, class sizes within 1:3."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, classes)
    counts = np.floor(weights / weights.sum() * n).astype(int)
    counts[: n - counts.sum()] += 1
    labels = np.repeat(np.arange(classes), counts)
    centers = rng.standard_normal((classes, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[labels] + NOISE / np.sqrt(dim) * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), labels[perm]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _pml(x: np.ndarray, y: np.ndarray, include: tuple[str, ...]) -> dict:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=include, k="max_bin_count", device=torch.device("cpu"))
    return calc.get_accuracy(x, y)


def run(quick: bool = False, threads: int | None = None, repeats: int | None = None) -> list[dict]:
    """Time ours and PML on the synthetic set; one row dict per variant (see module doc).

    Each figure is the best wall time of ``repeats`` interleaved runs (default 2, quick 1).
    """
    import faiss  # PML's kNN and k-means backend (the ``bench`` extra)

    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    size = QUICK if quick else FULL
    repeats = repeats or (1 if quick else 2)
    x, y = synthetic_embeddings(size["n"], size["classes"], size["dim"])

    jobs = {
        "pml_knn": lambda: _pml(x, y, ("precision_at_1", "mean_average_precision_at_r")),
        "ours_knn": lambda: retrieval_metrics(x, y, nmi=False),
        "ours_knn_torch": lambda: retrieval_metrics(x, y, nmi=False, backend="torch"),
        "pml_all": lambda: _pml(x, y, ("precision_at_1", "mean_average_precision_at_r", "NMI")),
        "ours_all": lambda: retrieval_metrics(x, y, nmi=True, seed=0),
        "ours_100": lambda: retrieval_metrics(x, y, nmi=True, seed=0, max_iter=100),
    }
    # Interleaved rounds, best time of each: the machine is shared, so load comes and goes.
    # Every other round runs the jobs in reverse order, so no job always follows the same one
    # (a job pays for what its predecessor left behind: spinning BLAS/OpenMP workers, evicted
    # caches, freed pages).
    results: dict[str, dict] = {}
    best = dict.fromkeys(jobs, float("inf"))
    for round_ in range(repeats):
        order = list(jobs.items()) if round_ % 2 == 0 else list(jobs.items())[::-1]
        for name, job in order:
            results[name], seconds = _timed(job)
            best[name] = min(best[name], seconds)

    def row(variant: str, ours: dict, ours_s: float, pml: dict, pml_s: float) -> dict:
        return {
            "bench": "eval",
            "variant": variant,
            "N": size["n"],
            "classes": size["classes"],
            "dim": size["dim"],
            "threads": threads,
            "ours_s": ours_s,
            "pml_s": pml_s,
            "ratio": pml_s / ours_s,
            "ours_recall@1": ours["recall@1"],
            "pml_recall@1": pml["precision_at_1"],
            "ours_map@r": ours["map@r"],
            "pml_map@r": pml["mean_average_precision_at_r"],
            "ours_nmi": ours.get("nmi"),
            "pml_nmi": pml.get("NMI"),
        }

    def pair(variant: str, ours: str, pml: str) -> dict:
        return row(variant, results[ours], best[ours], results[pml], best[pml])

    return [
        pair("retrieval", "ours_knn", "pml_knn"),
        pair("retrieval+nmi", "ours_all", "pml_all"),
        pair("retrieval+nmi@100it", "ours_100", "pml_all"),
        pair("retrieval (reference, torch GEMM)", "ours_knn_torch", "pml_knn"),
    ]


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (ratio = PML time / our time)."""

    def nmi(v: float | None) -> str:
        return "—" if v is None else f"{v:.4f}"

    lines = [
        "| variant | N | threads | ours (s) | PML (s) | speed-up | R@1 ours / PML "
        "| MAP@R ours / PML | NMI ours / PML |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['N']} | {r['threads']} | {r['ours_s']:.2f} | "
            f"{r['pml_s']:.2f} | {r['ratio']:.1f}x | "
            f"{r['ours_recall@1']:.6f} / {r['pml_recall@1']:.6f} | "
            f"{r['ours_map@r']:.6f} / {r['pml_map@r']:.6f} | "
            f"{nmi(r['ours_nmi'])} / {nmi(r['pml_nmi'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small set (N=1,200) only")
    parser.add_argument("--threads", type=int, help="torch and faiss threads (default: torch's)")
    parser.add_argument("--repeats", type=int, help="interleaved runs, best kept (default 2)")
    parser.add_argument("--out", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    rows = run(quick=args.quick, threads=args.threads, repeats=args.repeats)
    print(f"torch {torch.__version__}, {rows[0]['threads']} threads, CPU\n")
    print(markdown_table(rows))
    if args.out:
        write_json_atomic(args.out, rows)


if __name__ == "__main__":
    main()
