"""The options of ``predict`` and ``index``: what each accepts, checked before anything runs.

``require`` turns a key left as ``???`` into one paragraph with the command's usage; ``check``
checks types and ranges with the project's schema vocabulary (:mod:`ranking_reg.config.rules`).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ranking_reg.config.rules import boolean, choice, integer, string
from ranking_reg.config.schema import check_schema
from ranking_reg.inference.faiss_backend import KINDS
from ranking_reg.utils.errors import ConfigError

COMMON = [
    ("batch_size", integer(1, note="images per forward pass")),
    ("device", choice("auto", "cpu", "cuda", note="auto: CUDA when available")),
    ("bf16", boolean("bf16 autocast on CUDA")),
    ("num_workers", integer(0, note="image-loading processes; 0: in this process")),
    ("progress", boolean("a progress bar")),
]
PREDICT = [
    ("inputs", string("an image, a folder or a list file")),
    ("out", string("an output folder")),
    ("gallery", string("train, test, none or a gallery index folder")),
    ("topk", integer(1, note="classes listed per image")),
    ("neighbors", integer(1, note="gallery neighbours listed per image")),
    ("wandb_table.max_rows", integer(1, note="rows of the W&B predictions table")),
    ("wandb_table.thumb_size", integer(8, note="pixels, longer side of a thumbnail")),
    *COMMON,
]
INDEX = [
    ("out", string("a folder for the gallery index")),
    ("split", choice("train", "test", note="the split the gallery holds")),
    ("index.kind", choice(*KINDS, note="exact: brute force; flat|ivf|hnsw: faiss")),
    ("index.nlist", integer(1, note="ivf cells", null="4 * sqrt(N)")),
    ("index.nprobe", integer(1, note="ivf cells searched per query", null="nlist / 8")),
    ("index.hnsw_m", integer(2, note="hnsw links per node")),
    ("index.ef_search", integer(1, note="hnsw search breadth")),
    *COMMON,
]


def require(cfg: DictConfig, keys: tuple[str, ...], usage: str) -> None:
    """A ConfigError naming the first of ``keys`` left as ``???`` (or null), with ``usage``."""
    for key in keys:
        if OmegaConf.is_missing(cfg, key) or OmegaConf.select(cfg, key) in (None, ""):
            raise ConfigError(f"{key} is required. Usage: {usage}")


def check(cfg: DictConfig, schema: list) -> None:
    """Type and range of every option of ``schema`` present in ``cfg``."""
    check_schema(cfg, schema=schema)
