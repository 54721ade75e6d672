"""The two-head network and its backbones."""

from ranking_reg.models.backbones import Backbone, build_backbone
from ranking_reg.models.two_head import TwoHeadNet, TwoHeadOutput

__all__ = ["Backbone", "TwoHeadNet", "TwoHeadOutput", "build_backbone"]
