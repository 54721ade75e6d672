"""Lightning glue: the module, checkpoint I/O, schedules, callbacks, the Trainer builder."""

from ranking_reg.lightning.module import RankingRegModule

__all__ = ["RankingRegModule"]
