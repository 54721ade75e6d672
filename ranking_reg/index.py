"""Build a gallery index: ``python -m ranking_reg.index ckpt_path=CKPT out=GALLERY_DIR
[split=train|test] [index.kind=exact|flat|ivf|hnsw] [data...]``.

Embeds every image of one split of the checkpoint's dataset (its stored data config,
``data.<key>=value`` overrides applied; ``data=<name>`` for another dataset) with the
checkpoint's evaluation transform and saves them with their labels, class names, paths and the
checkpoint's weights fingerprint (:mod:`ranking_reg.inference.gallery` lists the files), whole or
not at all. ``python -m ranking_reg.predict gallery=GALLERY_DIR`` then searches it instead of
embedding the split again, and refuses it with another checkpoint. ``index.kind=exact`` (the
default) searches by brute force, exactly; ``flat``, ``ivf`` and ``hnsw`` build a faiss index
(``pip install faiss-cpu``) for galleries of millions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from ranking_reg.inference import options
from ranking_reg.utils.config_checks import validate_config
from ranking_reg.utils.errors import report_user_errors
from ranking_reg.utils.hydra_utils import task_overrides
from ranking_reg.utils.paths import CONFIG_DIR

if TYPE_CHECKING:  # torch is imported after the options are checked
    from ranking_reg.inference.gallery import GalleryIndex

USAGE = (
    "python -m ranking_reg.index ckpt_path=<run dir>/checkpoints/last.ckpt out=<gallery folder>"
    " [split=train|test] [index.kind=exact|flat|ivf|hnsw]"
)


def build_index(cfg: DictConfig, overrides: list[str] | None = None) -> GalleryIndex:
    """Embed ``cfg.split`` with ``cfg.ckpt_path`` and save the index to ``cfg.out``; returns
    the :class:`~ranking_reg.inference.gallery.GalleryIndex`."""
    options.require(cfg, ("ckpt_path", "out"), USAGE)
    validate_config(cfg)
    options.check(cfg, options.INDEX)
    from ranking_reg.inference.checkpoint import load_checkpoint
    from ranking_reg.inference.embedder import resolve_device
    from ranking_reg.inference.faiss_backend import FAISS_KINDS, import_faiss
    from ranking_reg.inference.gallery import check_target
    from ranking_reg.inference.splits import embed_split, split_dataset

    out = os.path.abspath(str(cfg.out))
    check_target(out)
    kind = str(cfg.index.kind)
    if kind in FAISS_KINDS:
        import_faiss(kind)  # before minutes of embedding
    device = resolve_device(cfg.device)
    loaded = load_checkpoint(cfg.ckpt_path)
    dataset = split_dataset(cfg, loaded.run_config, overrides or [], str(cfg.split))
    params = OmegaConf.to_container(cfg.index, resolve=True)
    params.pop("kind")
    gallery = embed_split(
        loaded,
        dataset,
        kind=kind,
        params=params,
        meta={"split": str(cfg.split), "dataset": _dataset_name(cfg, loaded.run_config)},
        batch_size=cfg.batch_size,
        device=device,
        bf16=cfg.bf16,
        num_workers=cfg.num_workers,
        progress=cfg.progress,
        desc=f"index ({cfg.split})",
    )
    gallery.save(out)
    print(f"gallery index of {len(gallery)} images ({kind}, dim {gallery.dim}) -> {out}")
    return gallery


def _dataset_name(cfg: DictConfig, run_config: dict) -> str:
    return str(cfg.data.get("name") or run_config["data"].get("name"))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="index")
@report_user_errors
def main(cfg: DictConfig) -> None:
    build_index(cfg, task_overrides())


if __name__ == "__main__":
    main()
