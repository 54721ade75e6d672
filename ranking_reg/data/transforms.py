"""The paper's preprocessing (Taha et al. 2020 §4, as in the authors' code).

train: random resized crop to ``img_size`` (224, or 299 for Inception-v4) + horizontal flip;
test: resize the shorter side to ``resize_size`` (256 for 224) + centre crop ``img_size``.
Normalisation with ImageNet statistics. ``flip=False`` for data where mirroring changes the class
(the digits).
"""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(
    img_size: int, flip: bool = True, scale: tuple[float, float] = (0.08, 1.0)
) -> T.Compose:
    steps = [T.RandomResizedCrop(img_size, scale=scale, antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def eval_transform(img_size: int, resize_size: int | None = None) -> T.Compose:
    resize_size = resize_size or round(img_size * 256 / 224)
    return T.Compose(
        [
            T.Resize(resize_size, antialias=True),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
