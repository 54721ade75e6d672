"""Preprocessing: three train/test pipelines (``augment``), ImageNet normalisation.

``rrc`` (our default): train = RandomResizedCrop(``img_size``, scale=``scale``) + horizontal flip;
test = resize the shorter side to ``resize_size`` (img_size * 256 / 224) + centre crop ``img_size``.

``resize_crop`` (the authors' default, ``--aug_style batch``; they pre-resized every image to
256 x 256): train = resize to ``resize_size`` x ``resize_size`` ignoring the aspect ratio, random
``img_size`` crop, horizontal flip; test = the same square resize + centre crop ``img_size``.

``inception`` (TF-slim inception preprocessing, the authors' ``--aug_style img``): train = a random
crop covering [0.05, 1] of the area with aspect ratio in [0.75, 1.33] (``distorted_bounding_box_crop``,
whose torchvision equivalent is RandomResizedCrop with those ranges) resized to ``img_size``,
horizontal flip; test = ``preprocess_for_eval``: the central 87.5 % of the image
(``tf.image.central_crop``) resized to ``img_size`` x ``img_size``. TF-slim's optional colour
distortion is not applied. ``scale`` (``data.crop_scale``) is used by ``rrc`` only.

``flip=False`` for data where mirroring changes the class (the digits). Every pipeline draws from
torch's global RNG only, so the per-sample seeding of :mod:`ranking_reg.data.seeded` applies.

``normalize=False`` (``data.normalize_on_device``) ends a pipeline with ``PILToTensor`` instead of
``ToTensor`` + ``Normalize``: the same geometric steps (and random draws) give a uint8 C x H x W
tensor, and :func:`normalize_batch` turns a batch of them into what the normalising pipeline gives
(float32 / 255, ImageNet mean and std: the same operations, equal values), on whichever device the
batch is. Loader workers then skip the float conversion and the host -> device copy is 4x smaller.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from ranking_reg.data.choices import AUGMENTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_SCALE = (0.05, 1.0)
INCEPTION_RATIO = (0.75, 1.33)
INCEPTION_CENTRAL_FRACTION = 0.875


def _check_augment(augment: str) -> None:
    if augment not in AUGMENTS:
        from ranking_reg.utils.errors import ConfigError

        raise ConfigError(
            f"data.augment={augment}: expects one of {'|'.join(AUGMENTS)} (rrc: RandomResizedCrop;"
            " resize_crop: the authors' square resize + random crop; inception: TF-slim's)."
        )


def default_resize(img_size: int, resize_size: int | None = None) -> int:
    return resize_size or round(img_size * 256 / 224)


class CentralCrop:
    """``tf.image.central_crop``: keep the central ``fraction`` of each side (PIL or tensor)."""

    def __init__(self, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def __call__(self, image: Any) -> Any:
        width, height = F.get_image_size(image)
        top = int((height - height * self.fraction) / 2)
        left = int((width - width * self.fraction) / 2)
        return F.crop(image, top, left, height - 2 * top, width - 2 * left)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fraction={self.fraction})"


class ToNormalizedTensor:
    """``ToTensor()`` then ``Normalize(mean, std)`` in one step, with the same operations and
    so the same values: an RGB PIL image's H x W x 3 bytes are copied once into a float32
    3 x H x W tensor, then ``/ 255``, ``- mean``, ``/ std`` in place.

    Why not torchvision's pair: ``ToTensor`` converts through a permuted view and ``Normalize``
    clones its input and rebuilds the mean and std tensors at every call; this costs half as
    much per image (0.23 ms against 0.43 ms for a 224 x 224 crop on one core), a quarter of what
    a cached sample costs a loader worker. Images of another mode (grey, 16-bit, float) go
    through torchvision's pair unchanged.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._fallback = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def __call__(self, image: Any) -> torch.Tensor:
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            return self._fallback(image)
        with warnings.catch_warnings():  # read only: the bytes are copied out just below
            warnings.simplefilter("ignore", UserWarning)
            hwc = torch.from_numpy(np.asarray(image))
        chw = torch.empty((hwc.shape[2], hwc.shape[0], hwc.shape[1]), dtype=torch.float32)
        chw.copy_(hwc.permute(2, 0, 1))
        return chw.div_(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def _finish(steps: list, flip: bool, normalize: bool = True) -> T.Compose:
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if normalize:
        steps.append(ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD))
    else:
        steps.append(T.PILToTensor())  # uint8; normalize_batch finishes it on the device
    return T.Compose(steps)


@functools.lru_cache(maxsize=8)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # cached per device: one tiny host -> device copy per run, not one per batch
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """A uint8 batch (N x C x H x W, from a ``normalize=False`` pipeline) as the normalising
    pipeline would have given it: float32 ``/ 255`` then ``(x - mean) / std``, on ``images``'
    device. The operations are ``ToTensor``'s and ``Normalize``'s, so the values are equal. A
    floating-point batch (already normalised) is returned unchanged."""
    if images.is_floating_point():
        return images
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_batch expects a uint8 batch, got {images.dtype}")
    mean, std = _mean_std(images.device)
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def train_transform(
    img_size: int,
    flip: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    augment: str = "rrc",
    resize_size: int | None = None,
    normalize: bool = True,
) -> T.Compose:
    """The ``augment`` training pipeline: a normalised float tensor, or uint8 with
    ``normalize=False`` (module docstring)."""
    _check_augment(augment)
    if augment == "resize_crop":
        side = default_resize(img_size, resize_size)
        steps = [T.Resize((side, side), antialias=True), T.RandomCrop(img_size)]
    elif augment == "inception":
        steps = [
            T.RandomResizedCrop(
                img_size, scale=INCEPTION_SCALE, ratio=INCEPTION_RATIO, antialias=True
            )
        ]
    else:
        steps = [T.RandomResizedCrop(img_size, scale=tuple(scale), antialias=True)]
    return _finish(steps, flip, normalize)


def eval_transform(
    img_size: int, resize_size: int | None = None, augment: str = "rrc", normalize: bool = True
) -> T.Compose:
    """The ``augment`` evaluation pipeline: a normalised float tensor, or uint8 with
    ``normalize=False`` (module docstring)."""
    _check_augment(augment)
    if augment == "resize_crop":
        side = default_resize(img_size, resize_size)
        steps = [T.Resize((side, side), antialias=True), T.CenterCrop(img_size)]
    elif augment == "inception":
        steps = [
            CentralCrop(INCEPTION_CENTRAL_FRACTION),
            T.Resize((img_size, img_size), antialias=True),
        ]
    else:
        steps = [T.Resize(default_resize(img_size, resize_size), antialias=True)]
        steps.append(T.CenterCrop(img_size))
    return _finish(steps, flip=False, normalize=normalize)
