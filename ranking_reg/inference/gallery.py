"""GalleryIndex: embedded gallery images with their labels and paths, searched for neighbours.

A gallery index is a folder (``python -m ranking_reg.index ... out=GALLERY_DIR``) holding

- ``embeddings.npy``: float32 (N, D), row i the embedding of image i;
- ``labels.npy``: int64 (N,), class ids into ``classes.json`` (the class names);
- ``paths.txt``: the N image paths, one a line, in row order;
- ``meta.json``: ``kind``, ``dim``, ``count``, ``created`` (UTC), ``ckpt_path``, ``fingerprint``
  (of the checkpoint that embedded it, :mod:`.fingerprint`), ``split``, ``dataset``, ``params``;
- ``index.faiss``: the trained faiss index, for the faiss kinds only.

It is written whole or not at all: into a temporary folder next to the target, then renamed
(an existing index at the target is replaced; any other non-empty folder is refused).

Search (:meth:`GalleryIndex.search`): ``kind=exact`` is
:func:`ranking_reg.metrics.knn.search_gallery` (exact Euclidean kNN, ties to the lower gallery
index); ``flat``/``ivf``/``hnsw`` are faiss indexes (:mod:`.faiss_backend`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranking_reg.inference import faiss_backend
from ranking_reg.utils.errors import ConfigError, DataError

FORMAT = "ranking_reg.gallery/1"
FILES = ("embeddings.npy", "labels.npy", "classes.json", "paths.txt", "meta.json")
BUILD_HINT = "python -m ranking_reg.index ckpt_path=<checkpoint> out=<folder>"


@dataclass
class GalleryIndex:
    embeddings: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]
    fingerprint: str
    kind: str = "exact"
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    _faiss: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.kind not in faiss_backend.KINDS:
            raise ConfigError(
                f"index.kind={self.kind}: expects one of {'|'.join(faiss_backend.KINDS)}."
            )
        n = len(self.embeddings)
        if self.embeddings.ndim != 2 or len(self.labels) != n or len(self.paths) != n:
            raise ValueError("embeddings (N, D), labels (N,) and paths (N) must agree")
        self.params = faiss_backend.resolve_params(self.kind, n, self.params)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def build(self) -> None:
        """Train and fill the faiss index (nothing to do for ``exact``)."""
        if self.kind != "exact" and self._faiss is None:
            self._faiss = faiss_backend.build(self.kind, self.embeddings, self.params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances float32, indices int64), both (Q, min(k, N)), nearest first; an
        approximate index may leave places empty (index -1, distance +inf)."""
        k = min(k, len(self))
        queries = np.asarray(queries, dtype=np.float32)
        if len(queries) == 0 or k == 0:
            return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
        if self.kind == "exact":
            from ranking_reg.metrics.knn import search_gallery

            distances, indices = search_gallery(self.embeddings, queries, k)
            return distances.numpy(), indices.numpy()
        self.build()
        return faiss_backend.search(self._faiss, self.kind, queries, k, self.params)

    # -- files ------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        """Write the index folder (module docstring), whole or not at all."""
        folder = os.path.abspath(os.fspath(folder))
        check_target(folder)
        self.build()
        parent = os.path.dirname(folder)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".tmp-gallery-", dir=parent)
        try:
            self._write(staging)
            os.chmod(staging, 0o777 & ~_umask())
            _replace_folder(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _write(self, folder: str) -> None:
        np.save(os.path.join(folder, "embeddings.npy"), self.embeddings)
        np.save(os.path.join(folder, "labels.npy"), self.labels)
        with open(os.path.join(folder, "classes.json"), "w", encoding="utf-8") as f:
            json.dump(self.classes, f, ensure_ascii=False)
        with open(os.path.join(folder, "paths.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{p}\n" for p in self.paths)
        if self._faiss is not None:
            faiss_backend.write(self._faiss, self.kind, os.path.join(folder, "index.faiss"))
        meta = {
            **self.meta,
            "format": FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "fingerprint": self.fingerprint,
            "params": self.params,
        }
        meta.setdefault("created", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        with open(os.path.join(folder, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> GalleryIndex:
        """Read an index folder; a DataError naming it when it is not one, or is incomplete."""
        folder = os.fspath(folder)
        if not is_index(folder):
            raise DataError(
                f"gallery={folder} is not a gallery index (it has no meta.json); build one with"
                f" {BUILD_HINT}, or use gallery=train|test|none."
            )
        missing = [name for name in FILES if not os.path.isfile(os.path.join(folder, name))]
        try:
            with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
            if missing or meta.get("format") != FORMAT:
                raise ValueError(f"missing {', '.join(missing)}" if missing else "unknown format")
            if meta["kind"] != "exact" and not os.path.isfile(os.path.join(folder, "index.faiss")):
                raise ValueError("missing index.faiss")
            embeddings = np.load(os.path.join(folder, "embeddings.npy"))
            labels = np.load(os.path.join(folder, "labels.npy"))
            with open(os.path.join(folder, "classes.json"), encoding="utf-8") as f:
                classes = json.load(f)
            with open(os.path.join(folder, "paths.txt"), encoding="utf-8") as f:
                paths = f.read().splitlines()
        except (OSError, ValueError, KeyError) as error:
            raise DataError(
                f"gallery={folder} is damaged or incomplete ({error}); rebuild it with"
                f" {BUILD_HINT}."
            ) from None
        index = cls(
            embeddings, labels, classes, paths, meta["fingerprint"], meta["kind"],
            params=meta.get("params", {}), meta=meta,
        )  # fmt: skip
        if index.kind != "exact":
            index._faiss = faiss_backend.read(index.kind, os.path.join(folder, "index.faiss"))
        return index


def is_index(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "meta.json"))


def check_target(folder: str) -> None:
    """A ConfigError when ``folder`` holds something other than a gallery index."""
    if os.path.isfile(folder) or (
        os.path.isdir(folder) and os.listdir(folder) and not is_index(folder)
    ):
        raise ConfigError(
            f"out={folder} exists and is not a gallery index; give a new or empty folder (an"
            " existing gallery index there is replaced)."
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_folder(staging: str, folder: str) -> None:
    """Rename ``staging`` to ``folder``; an existing ``folder`` is moved aside first and
    removed once the new one is in place."""
    if not os.path.exists(folder):
        os.rename(staging, folder)
        return
    old = tempfile.mkdtemp(prefix=".old-gallery-", dir=os.path.dirname(folder))
    os.rmdir(old)
    os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
