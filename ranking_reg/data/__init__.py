"""Datasets (parsers of the published layouts), the DataModule and the P x K sampler."""

from ranking_reg.data.datamodule import FGVRDataModule
from ranking_reg.data.pk_sampler import PKBatchSampler
from ranking_reg.data.registry import build_dataset, dataset_names

__all__ = ["FGVRDataModule", "PKBatchSampler", "build_dataset", "dataset_names"]
