"""Benchmark: gallery search, exact vs the faiss index kinds, recall@10 and throughput.

On a seeded synthetic clustered gallery (N L2-normalised vectors of D dimensions around 1,000
random centres, noise of norm ~0.6 of the unit centre distance) and Q queries drawn the same
way (not gallery items), for each ``index.kind`` of
:class:`ranking_reg.inference.gallery.GalleryIndex` with its default parameters:

- ``exact``: :func:`ranking_reg.metrics.knn.search_gallery` (brute force, the reference);
- ``flat``: faiss ``IndexFlatL2``; ``ivf``: ``IndexIVFFlat`` (nlist = 4 sqrt(N), nprobe =
  nlist / 8); ``hnsw``: ``IndexHNSWFlat`` (M = 32, efSearch = 128).

``recall@10`` = the mean over the queries of |found top 10 ∩ exact top 10| / 10; ``build_s`` is
the index's training + adding time, ``qps`` the queries a second of one batched search of all Q
queries (wall time, best of ``repeats``; torch and faiss use the same threads) and ``speedup``
the exact search's time / this kind's.

    python -m experiments.benchmarks.bench_index [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ranking_reg.inference.gallery import GalleryIndex

FULL = {"n": 100_000, "dim": 128, "queries": 1_000, "centres": 1_000}
QUICK = {"n": 2_000, "dim": 32, "queries": 100, "centres": 50}
KINDS = ("exact", "flat", "ivf", "hnsw")
K = 10
NOISE = 0.6


def clustered(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)]
    x = x + NOISE / np.sqrt(dim) * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, dim: int, queries: int, centres: int, seed: int = 0):
    """(gallery (n, dim), queries (queries, dim)), float32, unit norm."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return clustered(n, dim, c, rng), clustered(queries, dim, c, rng)


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over the rows of |found row ∩ exact row| / k (k = the exact rows' length)."""
    k = len(exact[0])
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def run(quick: bool = False, repeats: int | None = None) -> list[dict]:
    """One row per index kind (module docstring)."""
    import faiss

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    size = QUICK if quick else FULL
    repeats = repeats or (1 if quick else 3)
    gallery, queries = synthetic(size["n"], size["dim"], size["queries"], size["centres"])
    labels = np.zeros(len(gallery), np.int64)
    paths = [""] * len(gallery)
    rows, exact, exact_s = [], None, None
    for kind in KINDS:
        index = GalleryIndex(gallery, labels, ["x"], paths, "0" * 64, kind)
        start = time.perf_counter()
        index.build()
        build_s = time.perf_counter() - start
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            _, found = index.search(queries, K)
            best = min(best, time.perf_counter() - start)
        if exact is None:
            exact, exact_s = found, best
        rows.append(
            {
                "bench": "index",
                "kind": kind,
                "N": size["n"],
                "dim": size["dim"],
                "queries": size["queries"],
                "threads": threads,
                "params": dict(index.params),
                "build_s": build_s,
                "search_s": best,
                "qps": size["queries"] / best,
                "speedup": exact_s / best,
                "recall@10": recall_at(found, exact),
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| kind | N | dim | queries | params | build (s) | search (s) | queries/s | vs exact "
        "| recall@10 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "—"
        lines.append(
            f"| {r['kind']} | {r['N']} | {r['dim']} | {r['queries']} | {params} | "
            f"{r['build_s']:.2f} | {r['search_s']:.3f} | {r['qps']:.0f} | {r['speedup']:.1f}x | "
            f"{r['recall@10']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 2,000 x 32 only")
    parser.add_argument("--repeats", type=int, help="searches timed, best kept (default 3)")
    args = parser.parse_args()
    rows = run(quick=args.quick, repeats=args.repeats)
    print(f"torch {torch.__version__}, {rows[0]['threads']} threads, CPU\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
