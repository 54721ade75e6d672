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
"""

from __future__ import annotations

from typing import Any

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


def _finish(steps: list, flip: bool) -> T.Compose:
    if flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def train_transform(
    img_size: int,
    flip: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    augment: str = "rrc",
    resize_size: int | None = None,
) -> T.Compose:
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
    return _finish(steps, flip)


def eval_transform(
    img_size: int, resize_size: int | None = None, augment: str = "rrc"
) -> T.Compose:
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
    return _finish(steps, flip=False)
