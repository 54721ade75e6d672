"""Predict new images with a trained checkpoint: ``python -m ranking_reg.predict ckpt_path=CKPT
inputs=PATH [out=DIR] [gallery=train|test|none|GALLERY_DIR] [topk=5] [neighbors=5]``.

Every input image (an image, a folder walked recursively in sorted order, or a list file: see
:mod:`ranking_reg.inference.inputs`) goes once through the checkpoint's evaluation transform and
network, in batches (``batch_size``; on CUDA when available, under bf16 autocast). Writes into
``out`` (:mod:`ranking_reg.inference.records`):

- ``predictions.jsonl``: one object per input, in input order: ``path``, the ``topk`` most
  probable ``classes`` (``label``, ``name``, ``prob``) and the ``neighbors`` (``path``,
  ``label``, ``name``, ``distance``) in the gallery; an unreadable input gets ``error`` instead;
- ``embeddings.npy`` (float32, M x D, the L2-normalised embedding head) and ``paths.txt``: the M
  readable inputs, in input order.

The gallery is ``train`` or ``test`` (that split of the checkpoint's dataset, embedded now;
``data.root=...`` when it moved, ``data=<name>`` for another dataset), a folder written by
``python -m ranking_reg.index`` (refused when another checkpoint built it), or ``none``.
``logger=wandb`` also logs a W&B table of the predictions with thumbnails.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
from omegaconf import DictConfig

from ranking_reg.inference import options
from ranking_reg.integrations.wandb_utils import finish_wandb, register_resolvers
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import ConfigError, DataError, report_user_errors
from ranking_reg.utils.hydra_utils import task_overrides
from ranking_reg.utils.paths import CONFIG_DIR

if TYPE_CHECKING:  # torch is imported after the options are checked
    from ranking_reg.inference.checkpoint import LoadedCheckpoint
    from ranking_reg.inference.gallery import GalleryIndex

USAGE = (
    "python -m ranking_reg.predict ckpt_path=<run dir>/checkpoints/last.ckpt inputs=<image,"
    " folder or list file> [out=DIR] [gallery=train|test|none|<gallery index folder>]"
)
KEYWORDS = ("train", "test", "none")


@dataclass
class Predictions:
    """What predict wrote: the jsonl rows (every input), the embeddings and paths (the
    readable inputs, in input order) and the output folder."""

    rows: list[dict[str, Any]]
    embeddings: np.ndarray
    paths: list[str]
    out: str


def _load_input(paths: list[str], decode_size: int | None, index: int):
    from ranking_reg.inference.inputs import load_image

    return load_image(paths[index], decode_size)


def check_options(cfg: DictConfig) -> None:
    """Everything that can be checked before a file is opened."""
    options.require(cfg, ("ckpt_path", "inputs"), USAGE)
    validate_config(cfg)
    options.check(cfg, options.PREDICT)
    gallery = str(cfg.gallery)
    if gallery not in KEYWORDS and not os.path.isdir(gallery):
        raise ConfigError(
            f"gallery={gallery}: expects train, test, none or a gallery index folder written by"
            " python -m ranking_reg.index; that folder does not exist."
        )
    loggers = set(cfg.get("logger") or {})
    if loggers - {"wandb"}:
        raise ConfigError(
            f"logger={','.join(sorted(loggers))}: predict logs to W&B only; use logger=none or"
            " logger=wandb."
        )


def open_gallery(
    cfg: DictConfig, loaded: LoadedCheckpoint, overrides: list[str], **embed_options: Any
) -> GalleryIndex | None:
    """The GalleryIndex of ``cfg.gallery`` for checkpoint ``loaded`` (None for ``none``)."""
    from ranking_reg.inference.gallery import GalleryIndex
    from ranking_reg.inference.splits import embed_split, split_dataset

    gallery = str(cfg.gallery)
    if gallery == "none":
        return None
    if gallery in ("train", "test"):
        dataset = split_dataset(cfg, loaded.run_config, overrides, gallery)
        return embed_split(loaded, dataset, desc=f"gallery ({gallery})", **embed_options)
    index = GalleryIndex.load(gallery)
    if index.fingerprint != loaded.fingerprint:
        raise ConfigError(
            f"gallery={gallery} was built by another checkpoint (ckpt_path="
            f"{index.meta.get('ckpt_path', '?')}, weights fingerprint {index.fingerprint[:12]})"
            f" than ckpt_path={loaded.path} (fingerprint {loaded.fingerprint[:12]}): their"
            " embeddings are not comparable. Rebuild the index with python -m ranking_reg.index"
            f" ckpt_path={loaded.path} out={gallery}, or use gallery=train|test|none."
        )
    return index


def predict(cfg: DictConfig, overrides: list[str] | None = None) -> Predictions:
    """Predict ``cfg.inputs`` and write the outputs into ``cfg.out``; returns them."""
    check_options(cfg)
    from ranking_reg.inference.checkpoint import load_checkpoint
    from ranking_reg.inference.embedder import ImageItems, embed, resolve_device
    from ranking_reg.inference.inputs import gather_inputs
    from ranking_reg.inference.records import prediction_rows, write_predictions

    paths = gather_inputs(str(cfg.inputs))
    device = resolve_device(cfg.device)
    loaded = load_checkpoint(cfg.ckpt_path)
    embed_options = {
        "batch_size": cfg.batch_size,
        "device": device,
        "bf16": cfg.bf16,
        "num_workers": cfg.num_workers,
        "progress": cfg.progress,
    }
    gallery = open_gallery(cfg, loaded, overrides or [], **embed_options)
    load = functools.partial(_load_input, paths, loaded.decode_size)
    items = ImageItems(load, len(paths), loaded.transform)
    embedded = embed(loaded.module, items, desc="predict", **embed_options)
    dim = loaded.module.net.embedder.out_features
    embeddings = embedded.embeddings if embedded.positions else np.zeros((0, dim), np.float32)
    neighbors = None
    if gallery is not None and len(gallery) and embedded.positions:
        neighbors = gallery.search(embeddings, cfg.neighbors)
    rows = prediction_rows(paths, embedded, loaded.classes, cfg.topk, gallery, neighbors)
    read = [paths[p] for p in embedded.positions]
    out = str(cfg.out)
    write_predictions(out, rows, embeddings, read)
    if "wandb" in (cfg.get("logger") or {}):
        from ranking_reg.integrations.wandb_predictions import log_predictions

        log_predictions(cfg, rows, loaded.run_config)
    failed = len(paths) - len(read)
    print(
        f"{len(read)} of {len(paths)} inputs predicted ({failed} unreadable) ->"
        f" {os.path.join(out, 'predictions.jsonl')}"
    )
    if not read:
        raise DataError(
            f"none of the {len(paths)} inputs of inputs={cfg.inputs} could be read as an image"
            f" (first: {rows[0]['error']}); see {os.path.join(out, 'predictions.jsonl')}."
        )
    return Predictions(rows=rows, embeddings=embeddings, paths=read, out=out)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
@report_user_errors
def main(cfg: DictConfig) -> None:
    try:
        predict(cfg, task_overrides())
    finally:
        finish_wandb()


register_resolvers()

if __name__ == "__main__":
    main()
