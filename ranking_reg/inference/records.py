"""The rows of ``predictions.jsonl`` and the files of a prediction folder.

One JSON object per input, in input order:

- a readable input: ``{"path", "classes": [{"label", "name", "prob"}, ...], "neighbors":
  [{"path", "label", "name", "distance"}, ...]}``; ``classes`` are the ``topk`` most probable
  classes (softmax of the class head), most probable first, ties to the lower label;
  ``neighbors`` the nearest gallery images by Euclidean distance between L2-normalised
  embeddings, nearest first (absent with ``gallery=none``);
- an unreadable input: ``{"path", "error"}``.

``embeddings.npy`` (float32, M x D) and ``paths.txt`` hold the M readable inputs only, in input
order (row i of one is line i of the other). Every file is written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ranking_reg.inference.embedder import Embedded
from ranking_reg.inference.gallery import GalleryIndex
from ranking_reg.utils.io import atomic_writer, write_text_atomic


def top_classes(probs: np.ndarray, classes: Sequence[str], topk: int) -> list[dict[str, Any]]:
    """The ``topk`` most probable classes of one row, ties to the lower label."""
    order = np.argsort(-probs, kind="stable")[:topk]
    return [{"label": int(c), "name": classes[c], "prob": float(probs[c])} for c in order]


def neighbor_list(
    gallery: GalleryIndex, distances: np.ndarray, indices: np.ndarray
) -> list[dict[str, Any]]:
    """One query's neighbours as records (empty places of an approximate search dropped)."""
    out = []
    for distance, i in zip(distances.tolist(), indices.tolist(), strict=True):
        if i < 0:
            continue
        label = int(gallery.labels[i])
        name = gallery.classes[label] if 0 <= label < len(gallery.classes) else str(label)
        out.append({"path": gallery.paths[i], "label": label, "name": name, "distance": distance})
    return out


def prediction_rows(
    paths: Sequence[str],
    embedded: Embedded,
    classes: Sequence[str],
    topk: int,
    gallery: GalleryIndex | None = None,
    neighbors: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """The jsonl rows (module docstring); ``neighbors`` = ``gallery.search(embeddings, k)``."""
    row_of = {position: row for row, position in enumerate(embedded.positions)}
    rows: list[dict[str, Any]] = []
    for position, path in enumerate(paths):
        if position not in row_of:
            rows.append({"path": path, "error": embedded.errors.get(position, "not read")})
            continue
        r = row_of[position]
        record: dict[str, Any] = {
            "path": path,
            "classes": top_classes(embedded.probs[r], classes, topk),
        }
        if gallery is not None and neighbors is not None:
            record["neighbors"] = neighbor_list(gallery, neighbors[0][r], neighbors[1][r])
        rows.append(record)
    return rows


def write_predictions(
    out: str, rows: Sequence[dict[str, Any]], embeddings: np.ndarray, paths: Sequence[str]
) -> None:
    """``out/predictions.jsonl``, ``out/embeddings.npy`` and ``out/paths.txt``."""
    os.makedirs(out, exist_ok=True)
    with atomic_writer(os.path.join(out, "embeddings.npy"), "wb") as stream:
        np.save(stream, np.ascontiguousarray(embeddings, dtype=np.float32))
    write_text_atomic(os.path.join(out, "paths.txt"), "".join(f"{p}\n" for p in paths))
    write_text_atomic(
        os.path.join(out, "predictions.jsonl"),
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
    )
