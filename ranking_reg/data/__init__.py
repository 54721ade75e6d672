"""Datasets (parsers of the published layouts), the DataModule and the P x K sampler."""

from ranking_reg.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "FGVRDataModule": "ranking_reg.data.datamodule",
        "ImageListDataset": "ranking_reg.data.image_list",
        "PKBatchSampler": "ranking_reg.data.pk_sampler",
        "build_cache": "ranking_reg.data.image_cache",
        "build_dataset": "ranking_reg.data.registry",
        "class_counts": "ranking_reg.data.longtail",
        "dataset_names": "ranking_reg.data.registry",
        "longtail_indices": "ranking_reg.data.longtail",
        "register_dataset": "ranking_reg.data.registry",
    },
)
