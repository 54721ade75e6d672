"""The two-head network and its backbones."""

from ranking_reg.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Backbone": "ranking_reg.models.backbones",
        "build_backbone": "ranking_reg.models.backbones",
        "TwoHeadNet": "ranking_reg.models.two_head",
        "TwoHeadOutput": "ranking_reg.models.two_head",
    },
)
