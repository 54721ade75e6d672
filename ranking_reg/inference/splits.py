"""A split of a configured dataset, embedded by a checkpoint as a gallery.

The dataset is the checkpoint's own (its stored data config), with ``data.<key>=value``
overrides applied to it, or another configured dataset with ``data=<name>``: the rule of
``python -m ranking_reg.evaluate`` (:func:`ranking_reg.evaluate.data_config`). The gallery of
split ``train`` is the whole training split of the dataset as its parser lists it (before the
validation carve and any long-tail cut); ``test`` is the test split. Every image goes through the
*checkpoint's* evaluation transform (the one its queries get), decoded as the dataset decodes it
(boxes, banner crop, ``decode_size``). A corrupt gallery image is a DataError naming it, unless
the data config says ``skip_corrupt: true``: then it is left out of the gallery.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ranking_reg.inference.checkpoint import LoadedCheckpoint
from ranking_reg.inference.embedder import ImageItems, embed
from ranking_reg.inference.gallery import GalleryIndex
from ranking_reg.utils.errors import ConfigError
from ranking_reg.utils.hydra_utils import build

SPLITS = ("train", "test")


def split_dataset(
    cfg: DictConfig, run_config: dict[str, Any], overrides: list[str], split: str
) -> Any:
    """The untransformed ``split`` dataset (``samples``, ``targets``, ``classes``,
    ``load_image``) of the data ``cfg`` selects for a checkpoint trained with ``run_config``."""
    from ranking_reg.evaluate import data_config

    if split not in SPLITS:
        raise ConfigError(f"split={split}: expects train or test.")
    datamodule = build(data_config(cfg, run_config, overrides), "data")
    datamodule.setup("test")
    view = datamodule.train_dataset if split == "train" else datamodule.test_dataset
    return view.base


def embed_split(
    loaded: LoadedCheckpoint,
    dataset: Any,
    kind: str = "exact",
    params: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    **embed_options: Any,
) -> GalleryIndex:
    """The gallery index of ``dataset`` embedded by ``loaded`` (``embed_options`` go to
    :func:`~ranking_reg.inference.embedder.embed`: batch_size, device, ...)."""
    items = ImageItems(
        dataset.load_image,
        len(dataset),
        loaded.transform,
        catch=bool(getattr(dataset, "skip_corrupt", False)),
    )
    embedded = embed(loaded.module, items, **embed_options)
    keep = embedded.positions
    dim = loaded.module.net.embedder.out_features
    embeddings = embedded.embeddings if keep else np.zeros((0, dim), np.float32)
    return GalleryIndex(
        embeddings=embeddings,
        labels=np.asarray([dataset.targets[i] for i in keep], dtype=np.int64),
        classes=[str(c) for c in dataset.classes],
        paths=[str(dataset.samples[i][0]) for i in keep],
        fingerprint=loaded.fingerprint,
        kind=kind,
        params=params or {},
        meta={"ckpt_path": os.path.abspath(loaded.path), **(meta or {})},
    )
