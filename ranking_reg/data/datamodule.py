"""FGVRDataModule: one LightningDataModule for every dataset (README: Datasets).

Splits: ``train`` and ``test`` come from the dataset's own lists; ``val`` is a seeded stratified
fraction (``val_fraction``) carved from train (none of the five datasets has a separate val split
in the paper's protocol). ``val_fraction=0`` (the authors' protocol) trains on the whole training
split: there is no validation split (``val_dataset`` is None, ``has_validation`` is False and
``val_dataloader()`` returns an empty list, which Lightning takes as "no validation").
``imbalance_ratio`` long-tails what remains of train, never val or test. ``classes`` keeps one
half of the classes in every split, relabelled (:mod:`ranking_reg.data.class_subset`).
``class_hierarchy`` (after ``setup``): the coarser levels of the classes for FGVC-Aircraft and
NABirds, relabelled like the classes, None for the other datasets
(:mod:`ranking_reg.data.hierarchy`).
Training batches are P x K (:class:`PKBatchSampler`, classes drawn by ``class_sampling``);
``augment`` picks the train/test preprocessing (:mod:`ranking_reg.data.transforms`); evaluation
covers each split exactly once across processes (:class:`ShardedEvalSampler`).

The test loaders: with ``gallery="none"`` the test split alone; with ``gallery="train"`` also
the training split under the *evaluation* transform (the labelled gallery of the kNN metrics;
what the model trained on: after the validation carve and the long-tail cut, so it never holds a
validation image) and, when there is a validation split distinct from the test split, the
validation split (its queries choose alpha of the softmax + kNN fusion). ``test_streams`` names
them in the order of ``test_dataloader()``. Validation during fitting stays one loader.

``normalize_on_device=True`` (``data.normalize_on_device``; recommended on a GPU): every loader's
workers stop after the geometric steps and hand uint8 tensors over (``normalize=False`` of
:mod:`ranking_reg.data.transforms`); :meth:`FGVRDataModule.on_after_batch_transfer`, which
Lightning runs after each batch reaches the device (fit, validate, test), converts them to float
and normalises them there. The values equal the default path's; workers do less and the
host -> device copy is 4x smaller. Loaders used without a Trainer then give uint8 images:
:func:`~ranking_reg.data.transforms.normalize_batch` finishes them. (``ranking_reg.predict`` and
``index`` build their own normalising eval transform from the checkpoint: not affected.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from ranking_reg.data.choices import GALLERIES
from ranking_reg.data.class_subset import CLASS_SUBSETS, kept_class_ids, select_classes
from ranking_reg.data.hierarchy import ClassHierarchy, build_hierarchy
from ranking_reg.data.pk_sampler import PKBatchSampler, check_pk_batch
from ranking_reg.data.samplers import ShardedEvalSampler
from ranking_reg.data.seeded import SeededBatchSampler
from ranking_reg.data.splits import SplitView, stratified_split
from ranking_reg.data.transforms import eval_transform, normalize_batch, train_transform
from ranking_reg.utils.errors import ConfigError, DataError


class FGVRDataModule(L.LightningDataModule):
    """Train/val/test loaders of dataset ``name`` under ``root``; extra keys go to the parser."""

    def __init__(
        self,
        name: str,
        root: str | None = None,
        batch_size: int = 32,
        samples_per_class: int = 4,
        img_size: int = 224,
        resize_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        imbalance_ratio: float | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
        flip: bool = True,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        augment: str = "rrc",
        class_sampling: str = "uniform",
        val_source: str = "train",
        many_shot: int = 100,
        few_shot: int = 20,
        classes: str = "all",
        gallery: str = "none",
        normalize_on_device: bool | None = False,
        **dataset_options: Any,
    ) -> None:
        super().__init__()
        check_pk_batch(batch_size, samples_per_class)
        if val_source not in ("train", "test"):
            raise ConfigError(
                f"val_source={val_source}: 'train' (a held-out part of the training split) or"
                " 'test' (selection=best_test: the test split chooses the checkpoint)."
            )
        if classes not in CLASS_SUBSETS:
            raise ConfigError(
                f"data.classes={classes}: expects one of {', '.join(CLASS_SUBSETS)} (first_half:"
                " class ids [0, C//2), second_half: [C//2, C), relabelled from 0)."
            )
        if gallery not in GALLERIES:
            raise ConfigError(
                f"gallery={gallery} (metrics.knn.gallery): expects train (the training split is"
                " the gallery of the kNN metrics at test time) or none (no kNN metrics)."
            )
        self.class_subset = classes
        self.gallery = gallery
        self.val_source = val_source
        self.name = name
        self.root = root
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.img_size = img_size
        self.resize_size = resize_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.imbalance_ratio = imbalance_ratio
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.seed = seed
        self.flip = flip
        self.crop_scale = tuple(crop_scale)
        self.augment = augment
        self.class_sampling = class_sampling
        self.many_shot = many_shot
        self.few_shot = few_shot
        self.normalize_on_device = bool(normalize_on_device)  # None (an unset key): the default
        self.dataset_options = dict(dataset_options)
        self.train_dataset: SplitView | None = None
        self.val_dataset: SplitView | None = None
        self.test_dataset: SplitView | None = None
        self.gallery_dataset: SplitView | None = None
        self.class_hierarchy: ClassHierarchy | None = None  # set by setup()

    # -- datasets ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.test_dataset is not None:
            return
        from ranking_reg.data.registry import accepted_options, build_dataset

        options = dict(self.dataset_options)
        if "split_seed" in (accepted_options(self.name) or []):
            options["split_seed"] = self.split_seed  # folder/csv: their train/test split
        train_base = build_dataset(self.name, self.root, "train", **options)
        test_base = build_dataset(self.name, self.root, "test", **options)
        self.class_hierarchy = self._class_hierarchy(len(train_base.classes))
        train_base = select_classes(train_base, self.class_subset)
        test_base = select_classes(test_base, self.class_subset)
        if list(train_base.classes) != list(test_base.classes):
            raise ConfigError(
                f"data={self.name}: the train and test splits list different classes; check the"
                f" dataset files under {self.root}."
            )
        train_idx, val_idx = stratified_split(
            train_base.targets, self.val_fraction, self.split_seed
        )
        if self.imbalance_ratio is not None:
            from ranking_reg.data.longtail import longtail_indices

            kept_targets = [train_base.targets[i] for i in train_idx]
            keep = longtail_indices(kept_targets, self.imbalance_ratio, seed=self.split_seed)
            train_idx = [train_idx[i] for i in keep]
        normalize = not self.normalize_on_device  # else on_after_batch_transfer normalises
        evaluation = eval_transform(
            self.img_size, self.resize_size, augment=self.augment, normalize=normalize
        )
        training = train_transform(
            self.img_size,
            flip=self.flip,
            scale=self.crop_scale,
            augment=self.augment,
            resize_size=self.resize_size,
            normalize=normalize,
        )
        self.train_dataset = SplitView(train_base, train_idx, training)
        self.gallery_dataset = SplitView(train_base, train_idx, evaluation)
        self.test_dataset = SplitView(test_base, None, evaluation)
        if self.val_source == "test":  # the authors' selection: validate on the test split
            self.val_dataset = self.test_dataset
        else:
            self.val_dataset = (
                SplitView(train_base, val_idx, evaluation) if self.has_validation else None
            )

    def _class_hierarchy(self, num_classes: int) -> ClassHierarchy | None:
        """The dataset's class hierarchy (aircraft, nabirds; else None), relabelled like the
        classes by ``data.classes`` (:mod:`ranking_reg.data.hierarchy`)."""
        hierarchy = build_hierarchy(self.name, self.root, **self.dataset_options)
        if hierarchy is None:
            return None
        if hierarchy.num_classes != num_classes:
            raise DataError(
                f"data={self.name}: the class hierarchy read under {self.root} gives parents to "
                f"{hierarchy.num_classes} classes but the dataset has {num_classes}; the files "
                "come from different releases: unpack the dataset again."
            )
        return hierarchy.subset(kept_class_ids(num_classes, self.class_subset))

    @property
    def has_validation(self) -> bool:
        """False with ``val_fraction=0`` (train on the whole train split) unless the test split
        validates (``val_source="test"``, selection=best_test)."""
        return self.val_fraction > 0 or self.val_source == "test"

    @property
    def test_streams(self) -> tuple[str, ...]:
        """What each loader of ``test_dataloader()`` holds, in order: ``query`` (the test
        split), ``gallery`` (train, evaluation transform), ``val`` (the validation split, only
        when it is not the test split)."""
        if self.gallery == "none":
            return ("query",)
        distinct_val = self.val_source == "train" and self.val_fraction > 0
        return ("query", "gallery", "val") if distinct_val else ("query", "gallery")

    @property
    def num_classes(self) -> int:
        assert self.train_dataset is not None, "call setup() first"
        return len(self.train_dataset.classes)

    @property
    def train_class_counts(self) -> list[int]:
        """Training images per class id (after the long-tail cut)."""
        assert self.train_dataset is not None, "call setup() first"
        counts = Counter(self.train_dataset.targets)
        return [counts.get(c, 0) for c in range(self.num_classes)]

    def eval_dataset(self, stage: str) -> SplitView:
        if stage == "val" and not self.has_validation:
            raise ValueError("data.val_fraction=0: this data module has no validation split")
        dataset = {"val": self.val_dataset, "test": self.test_dataset}[stage]
        assert dataset is not None, "call setup() first"
        return dataset

    # -- device-side normalisation -----------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``normalize_on_device``: the batch's uint8 images (already on the device) as
        float32 normalised images; labels and positions unchanged. Otherwise the batch as is."""
        if not self.normalize_on_device:
            return batch
        images, *rest = batch
        if images.dtype != torch.uint8:
            return batch
        images = normalize_batch(images)
        trainer = self.trainer
        if trainer is not None:
            # the precision plugin converted the batch before the transfer, when the images were
            # still uint8 (and so left alone): give them the dtype it gives (e.g. bf16-true)
            images = trainer.precision_plugin.convert_input(images)
        return [images, *rest] if isinstance(batch, list) else (images, *rest)

    # -- loaders ----------------------------------------------------------------------------------
    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader_options(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            # pinned memory only helps copies to a GPU; without one torch warns about it
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.persistent_workers,
        }

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup() first"
        world, rank = self._replicas()
        sampler = PKBatchSampler(
            self.train_dataset.targets,
            batch_size=self.batch_size,
            samples_per_class=self.samples_per_class,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            class_sampling=self.class_sampling,
        )
        seeded = SeededBatchSampler(sampler, seed=self.seed)
        return DataLoader(self.train_dataset, batch_sampler=seeded, **self._loader_options())

    def _eval_loader(self, stage: str) -> DataLoader:
        return self._sharded_loader(self.eval_dataset(stage))

    def _sharded_loader(self, dataset: SplitView) -> DataLoader:
        world, rank = self._replicas()
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=ShardedEvalSampler(len(dataset), world, rank),
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.has_validation:
            return []  # Lightning skips validation when the loader list is empty
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test split's loader; with a gallery, the loaders of ``test_streams``."""
        streams = self.test_streams
        if streams == ("query",):
            return self._eval_loader("test")
        assert self.gallery_dataset is not None, "call setup() first"
        datasets = {
            "query": self.eval_dataset("test"),
            "gallery": self.gallery_dataset,
            "val": self.val_dataset,
        }
        return [self._sharded_loader(datasets[stream]) for stream in streams]
