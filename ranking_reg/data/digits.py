"""The embedded default dataset: scikit-learn's bundled handwritten digits.

1,797 real 8x8 grey-level images of the digits 0-9 (UCI "Optical Recognition of Handwritten
Digits", shipped inside scikit-learn), so ``make train`` runs with no network and no data folder.
The test split is a fixed stratified quarter (``random_state=0``); train is the rest. Images are
served as RGB PIL images (grey repeated) so the same transforms serve every dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

TEST_FRACTION = 0.25


class ArrayImageDataset:
    """In-memory uint8 images (N x H x W) with ImageFolder-style attributes."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        names: list[str],
        transform: Callable | None = None,
    ) -> None:
        self.images = images
        self.samples = [(name, int(label)) for name, label in zip(names, labels, strict=True)]
        self.targets = [int(label) for label in labels]
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def build_digits(
    root: str | None = None, split: str = "train", transform: Callable | None = None
) -> ArrayImageDataset:
    """The digits ``train`` or ``test`` split (``root`` is ignored: the data is embedded).

    Called through :func:`ranking_reg.data.build_dataset`, which checks the split name and
    refuses options digits does not take.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # 0..16 grey levels -> 0..255, dark digit on white like a scan.
    images = (255 - np.round(bunch.images * (255.0 / 16.0))).astype(np.uint8)
    indices = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        indices, test_size=TEST_FRACTION, stratify=bunch.target, random_state=0
    )
    chosen = np.sort(train_idx if split == "train" else test_idx)
    names = [f"sklearn-digits/{i:04d}" for i in chosen]
    classes = [str(d) for d in range(10)]
    return ArrayImageDataset(images[chosen], bunch.target[chosen], classes, names, transform)
