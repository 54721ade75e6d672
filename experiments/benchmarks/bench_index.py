"""Benchmark: gallery search, exact vs the faiss index kinds, recall@10 and throughput.

On seeded synthetic galleries of N L2-normalised vectors of D dimensions, drawn around random
unit centres with Gaussian noise of norm ``noise``, and Q queries drawn the same way (not gallery
items):

- ``clustered``: 1,000 centres (100 images a centre at N = 100k), noise 0.6: classes that
  separate, as a trained embedding's do;
- ``hard``: 10,000 centres (10 a centre), noise 1.0: neighbours barely stand out from the rest,
  the worst case for approximate search,

for each ``index.kind`` of :class:`ranking_reg.inference.gallery.GalleryIndex` with its default
parameters:

- ``exact``: :func:`ranking_reg.metrics.knn.search_gallery` (brute force, the reference);
- ``flat``: faiss ``IndexFlatL2``; ``ivf``: ``IndexIVFFlat`` (nlist = 4 sqrt(N), nprobe =
  nlist / 8); ``hnsw``: ``IndexHNSWFlat`` (M = 32, efSearch = 128).

``recall@10`` = the mean over the queries of |found top 10 ∩ exact top 10| / 10; ``build_s`` is
the index's training + adding time, ``qps`` the queries a second of one batched search of all Q
queries (wall time, best of ``repeats`` after an untimed warm-up search; torch and faiss use
the same threads) and ``speedup`` the exact search's time / this kind's.

    python -m experiments.benchmarks.bench_index [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ranking_reg.inference.gallery import GalleryIndex

DATA = {"clustered": {"centres": 1_000, "noise": 0.6}, "hard": {"centres": 10_000, "noise": 1.0}}
FULL = {"n": 100_000, "dim": 128, "queries": 1_000, "data": ("clustered", "hard")}
QUICK = {"n": 2_000, "dim": 32, "queries": 100, "data": ("clustered",)}
QUICK_CENTRES = 50  # 40 images a centre at the quick size
KINDS = ("exact", "flat", "ivf", "hnsw")
K = 10


def synthetic(n: int, dim: int, queries: int, centres: int, noise: float, seed: int = 0):
    """(gallery (n, dim), queries (queries, dim)): float32, unit norm (module docstring)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)

    def draw(count: int) -> np.ndarray:
        x = c[rng.integers(0, centres, count)]
        x = x + noise / np.sqrt(dim) * rng.standard_normal((count, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(queries)


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over the rows of |found row ∩ exact row| / k (k = the exact rows' length)."""
    k = len(exact[0])
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def run(quick: bool = False, repeats: int | None = None) -> list[dict]:
    """One row per data set and index kind (module docstring)."""
    import faiss

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    size = QUICK if quick else FULL
    repeats = repeats or (1 if quick else 3)
    rows = []
    for name in size["data"]:
        centres = QUICK_CENTRES if quick else DATA[name]["centres"]
        gallery, queries = synthetic(
            size["n"], size["dim"], size["queries"], centres, DATA[name]["noise"]
        )
        rows += _rows(name, gallery, queries, repeats, threads)
    return rows


def _rows(
    name: str, gallery: np.ndarray, queries: np.ndarray, repeats: int, threads: int
) -> list[dict]:
    labels = np.zeros(len(gallery), np.int64)
    paths = [""] * len(gallery)
    rows, exact, exact_s = [], None, None
    for kind in KINDS:
        index = GalleryIndex(gallery, labels, ["x"], paths, "0" * 64, kind)
        start = time.perf_counter()
        index.build()
        build_s = time.perf_counter() - start
        index.search(queries[:2], K)  # warm-up: the exact kind's first call imports its module
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
                "data": name,
                "kind": kind,
                "N": len(gallery),
                "dim": gallery.shape[1],
                "queries": len(queries),
                "threads": threads,
                "params": dict(index.params),
                "build_s": build_s,
                "search_s": best,
                "qps": len(queries) / best,
                "speedup": exact_s / best,
                "recall@10": recall_at(found, exact),
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (vs exact = exact search time / this kind's)."""
    lines = [
        "| data | kind | N | dim | queries | params | build (s) | search (s) | queries/s "
        "| vs exact | recall@10 |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "—"
        lines.append(
            f"| {r['data']} | {r['kind']} | {r['N']} | {r['dim']} | {r['queries']} | {params} | "
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
