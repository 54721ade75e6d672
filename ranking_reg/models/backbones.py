"""Backbone factory: a classification network truncated at its last convolutional feature map.

The ranking regularizer (Taha et al., WACV 2020, §3) attaches its embedding head to the last conv
feature map ``h`` of a standard network (ResNet-50 at 224 px: 2048 x 7 x 7). Every backbone here
returns that map, unpooled; :func:`build_backbone` also reports its channel count and spatial size
for a given input size so the heads can be sized without guessing.

ImageNet networks come from timm (its ``forward_features`` is exactly "up to the last feature
map"). The paper's checkpoints are the classic torchvision/TF-slim ImageNet weights, so the
defaults name those weight tags (``resnet50.tv_in1k``, ``densenet161.tv_in1k``,
``inception_v4.tf_in1k``). ``small_cnn`` is ours: a 3-stage CNN small enough to train on two CPU
cores in a minute (the embedded digits default).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
from torch import nn

from ranking_reg.models.limits import MIN_IMG_SIZE
from ranking_reg.utils.errors import ConfigError

# Architecture name -> default timm weight tag (the ImageNet weights the paper's code used).
TIMM_DEFAULT_TAGS: dict[str, str] = {
    "resnet18": "resnet18.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "densenet161": "densenet161.tv_in1k",
    "inception_v4": "inception_v4.tf_in1k",
}


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and the shape of the map it returns for ``img_size`` inputs."""

    features: nn.Module
    channels: int
    spatial: tuple[int, int]

    @property
    def flat_dim(self) -> int:
        """Length of the flattened feature map (the embedding head's input)."""
        return self.channels * self.spatial[0] * self.spatial[1]


class SmallCNN(nn.Module):
    """Three conv stages (each conv-BN-ReLU x2, stride 2), widths 32-64-128.

    At 32 px the last map is 128 x 4 x 4; about 0.3 M parameters.
    """

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_chans
        for width in widths:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.body = nn.Sequential(*layers)
        self.num_features = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TimmFeatures(nn.Module):
    """Wraps a timm model so that ``forward`` returns ``forward_features`` (the unpooled map)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _pretrained_error(name: str, tag: str, error: Exception) -> ConfigError:
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return ConfigError(
        f"backbone '{name}': the ImageNet weights '{tag}' could not be loaded ({type(error).__name__}:"
        f" {str(error).splitlines()[0] if str(error) else 'no detail'}). Without network access either"
        f" train from scratch with backbone.pretrained=false, or download the weights once elsewhere"
        f" (timm caches them under {cache}/hub) and copy the cache here, or point"
        f" backbone.weights_file=/path/to/weights.(pth|safetensors) at a local file of the timm"
        f" model '{tag}'."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or ``HF_ENDPOINT``) accepts a TCP connection.

    Without this probe huggingface_hub retries an unreachable host for ~50 s per weight file.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _timm_model(
    name: str, tag: str | None, pretrained: bool, weights_file: str | None
) -> nn.Module:
    import timm

    tag = tag or TIMM_DEFAULT_TAGS.get(name, name)
    kwargs: dict = {"num_classes": 0, "global_pool": ""}
    if weights_file is not None:
        if not os.path.isfile(weights_file):
            raise ConfigError(
                f"backbone.weights_file={weights_file} does not exist. Give the path of a weights file"
                f" of the timm model '{tag}', or set backbone.weights_file=null."
            )
        kwargs["pretrained_cfg_overlay"] = {"file": weights_file}
        pretrained = True
    if pretrained and weights_file is None and not _hub_reachable():
        # Offline: use the local cache only, and fail at once when the weights are not in it.
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(tag, pretrained=pretrained, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ConfigError(
                f"backbone.name={name}: timm has no model '{tag}'. Use one of small_cnn,"
                f" {', '.join(TIMM_DEFAULT_TAGS)}, or any name from timm.list_models()."
            ) from None
        if pretrained:
            raise _pretrained_error(name, tag, error) from None
        raise
    except (OSError, ValueError, ConnectionError, TimeoutError) as error:
        if not pretrained:
            raise
        raise _pretrained_error(name, tag, error) from None


def feature_shape(features: nn.Module, img_size: int, in_chans: int = 3) -> tuple[int, int, int]:
    """(channels, height, width) of ``features`` on one ``img_size`` x ``img_size`` input."""
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, in_chans, img_size, img_size))
    features.train(was_training)
    if out.dim() != 4:
        raise ConfigError(
            f"the backbone returns a {out.dim()}-D output, not a B x C x H x W feature map; the"
            " ranking regularizer needs a convolutional backbone."
        )
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def build_backbone(
    name: str,
    img_size: int | None = None,
    pretrained: bool = False,
    model_tag: str | None = None,
    weights_file: str | None = None,
    in_chans: int = 3,
    input_size: int = 224,
) -> Backbone:
    """Build ``name`` truncated at its last conv feature map and measure that map at ``img_size``.

    ``name`` is ``small_cnn`` or a timm architecture (``resnet50``, ``densenet161``,
    ``inception_v4``, ``resnet18``, or any other timm CNN); ``model_tag`` picks a timm weight tag.
    ``pretrained=True`` loads ImageNet weights through timm's cache (Hugging Face hub); when they
    cannot be fetched a :class:`ConfigError` names ``backbone.pretrained=false`` and
    ``backbone.weights_file``. ``input_size`` is the network's input size in the paper (224, 299
    for Inception-v4), used when ``img_size`` is not given.
    """
    img_size = input_size if img_size is None else img_size
    if img_size < MIN_IMG_SIZE:
        raise ConfigError(
            f"data.img_size={img_size} is too small; use at least {MIN_IMG_SIZE} pixels."
        )
    if name == "small_cnn":
        if pretrained:
            raise ConfigError(
                "backbone=small_cnn has no pretrained weights; set backbone.pretrained=false."
            )
        features: nn.Module = SmallCNN(in_chans=in_chans)
    else:
        features = TimmFeatures(_timm_model(name, model_tag, pretrained, weights_file))
    channels, height, width = feature_shape(features, img_size, in_chans)
    return Backbone(features=features, channels=channels, spatial=(height, width))
