"""Bring-your-own data as a class-per-folder tree (torchvision's ImageFolder layout).

``root/<class>/*.jpg``: one subfolder per class, split into train/test per class with
``test_fraction`` and ``split_seed`` (see ``stratified_split``); or, when ``root/train/`` and
``root/test/`` exist, ``root/{train,test}/<class>/*.jpg`` with the classes of both folders.
Discovery uses torchvision's ``find_classes``/``make_dataset`` (same extensions, same order).
"""

from __future__ import annotations

import os

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.parsers._common import stratified_split
from ranking_reg.utils.errors import DataError

NAME = "folder"


def _class_dirs(path: str) -> set[str]:
    return {e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")}


def build(
    root: str,
    split: str,
    transform=None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    skip_corrupt: bool = False,
    decode_size: int | None = None,
) -> ImageListDataset:
    """Images under ``root`` grouped by class folder; see the module docstring."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(
            f"the folder dataset was not found: {root} does not exist. Set data.root to a folder "
            "that holds one subfolder of images per class (or train/ and test/ subfolders that do)."
        )
    presplit = all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test"))
    tops = [os.path.join(root, "train"), os.path.join(root, "test")] if presplit else [root]
    classes = sorted(set().union(*(_class_dirs(t) for t in tops)))
    if not classes:
        raise DataError(
            f"the folder dataset {root} has no class subfolders; put the images of each class "
            "in a subfolder named after the class."
        )
    class_to_idx = {c: i for i, c in enumerate(classes)}
    directory = os.path.join(root, split) if presplit else root
    samples = make_dataset(directory, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not presplit:
        samples = stratified_split(samples, split, test_fraction, split_seed)
    if not samples:
        raise DataError(
            f"the folder dataset {directory} holds no images with the extensions "
            f"{', '.join(IMG_EXTENSIONS)} for split {split!r}."
        )
    return ImageListDataset(
        samples, classes, transform=transform, skip_corrupt=skip_corrupt, decode_size=decode_size
    )
