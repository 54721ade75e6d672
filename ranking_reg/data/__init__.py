"""Datasets (parsers of the published layouts), the DataModule and the P x K sampler."""

from ranking_reg.data.datamodule import FGVRDataModule
from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.longtail import class_counts, longtail_indices
from ranking_reg.data.pk_sampler import PKBatchSampler
from ranking_reg.data.registry import build_dataset, dataset_names, register_dataset

__all__ = [
    "FGVRDataModule",
    "ImageListDataset",
    "PKBatchSampler",
    "build_dataset",
    "class_counts",
    "dataset_names",
    "longtail_indices",
    "register_dataset",
]
