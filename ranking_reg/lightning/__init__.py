"""Lightning glue: the module, checkpoint I/O, schedules, callbacks, the Trainer builder."""

from ranking_reg.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "RankingRegModule": "ranking_reg.lightning.module",
    },
)
