"""Approximate (and flat) gallery search with faiss, for galleries of millions.

- ``flat``: ``IndexFlatL2``, brute force in faiss (exact up to float rounding);
- ``ivf``: ``IndexIVFFlat`` over an ``IndexFlatL2`` coarse quantizer: ``nlist`` k-means cells
  (default ``4 * sqrt(N)``, at most N / 39 so that every cell has 39 training points, faiss'
  minimum), ``nprobe`` cells visited per query (default ``nlist / 8``, at least 1);
- ``hnsw``: ``IndexHNSWFlat`` with ``hnsw_m`` links a node (default 32) and ``ef_search``
  candidates kept while searching (default 128, never below k).

faiss returns squared Euclidean distances; :func:`search` returns their square roots. A query
that an approximate index cannot give k neighbours gets index -1 and distance +inf in the
missing places. Without faiss installed, asking for one of these kinds is a ConfigError saying
``pip install faiss-cpu``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ranking_reg.utils.errors import ConfigError

FAISS_KINDS = ("flat", "ivf", "hnsw")
KINDS = ("exact", *FAISS_KINDS)
DEFAULT_HNSW_M = 32
DEFAULT_EF_SEARCH = 128


def import_faiss(kind: str) -> Any:
    """The faiss module, or a ConfigError naming ``index.kind`` and the package to install."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            f"index.kind={kind} needs faiss, which is not installed: pip install faiss-cpu"
            " (or faiss-gpu), or use index.kind=exact (exact brute-force search, no faiss)."
        ) from None
    return faiss


def resolve_params(kind: str, count: int, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a ``kind`` index of ``count`` vectors, defaults filled in."""
    if kind == "ivf":
        nlist = params.get("nlist") or max(1, min(round(4 * math.sqrt(count)), count // 39))
        if nlist > count:
            raise ConfigError(
                f"index.nlist={nlist} exceeds the gallery's {count} images; give a smaller"
                " index.nlist (or null for the default 4 * sqrt(N))."
            )
        nprobe = params.get("nprobe") or max(1, nlist // 8)
        return {"nlist": int(nlist), "nprobe": int(min(nprobe, nlist))}
    if kind == "hnsw":
        return {
            "hnsw_m": int(params.get("hnsw_m") or DEFAULT_HNSW_M),
            "ef_search": int(params.get("ef_search") or DEFAULT_EF_SEARCH),
        }
    return {}


def build(kind: str, embeddings: np.ndarray, params: dict[str, Any]) -> Any:
    """A trained faiss index of ``kind`` holding ``embeddings`` (N, D) float32, row i = id i."""
    faiss = import_faiss(kind)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, params["nlist"])
        index.train(x)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["hnsw_m"])
    else:
        raise ValueError(f"not a faiss kind: {kind}")
    index.add(x)
    return index


def search(
    index: Any, kind: str, queries: np.ndarray, k: int, params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), both (Q, k): Euclidean distances, nearest first."""
    if kind == "ivf":
        index.nprobe = params["nprobe"]
    elif kind == "hnsw":
        index.hnsw.efSearch = max(params["ef_search"], k)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    squared, indices = index.search(q, k)
    distances = np.sqrt(np.maximum(squared, 0)).astype(np.float32)
    distances[indices < 0] = np.inf
    return distances, indices.astype(np.int64)


def write(index: Any, kind: str, path: str) -> None:
    import_faiss(kind).write_index(index, path)


def read(kind: str, path: str) -> Any:
    return import_faiss(kind).read_index(path)
