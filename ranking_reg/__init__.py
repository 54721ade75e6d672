"""ranking_reg: image classifiers with a triplet-loss ranking regularizer (Taha et al., WACV 2020).

The public API, importable from the package root::

    from ranking_reg import TwoHeadNet, semihard_triplet_loss, retrieval_metrics, FGVRDataModule

Names are resolved on first use, so ``import ranking_reg`` stays cheap (no torch import) for the
command-line tools that do not need it.
"""

from ranking_reg.utils.lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "TwoHeadNet": "ranking_reg.models",
        "TwoHeadOutput": "ranking_reg.models",
        "build_backbone": "ranking_reg.models",
        "semihard_triplet_loss": "ranking_reg.losses",
        "batch_hard_triplet_loss": "ranking_reg.losses",
        "SemiHardMiner": "ranking_reg.losses",
        "CenterLoss": "ranking_reg.losses",
        "TripletRegularizer": "ranking_reg.losses",
        "CenterRegularizer": "ranking_reg.losses",
        "NoRegularizer": "ranking_reg.losses",
        "PMLRegularizer": "ranking_reg.losses",
        "TripletCenterLoss": "ranking_reg.losses",
        "retrieval_metrics": "ranking_reg.metrics",
        "classification_metrics": "ranking_reg.metrics",
        "Evaluator": "ranking_reg.metrics",
        "PKBatchSampler": "ranking_reg.data",
        "FGVRDataModule": "ranking_reg.data",
        "build_dataset": "ranking_reg.data",
        "RankingRegModule": "ranking_reg.lightning",
    },
)
