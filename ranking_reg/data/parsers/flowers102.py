"""Oxford Flowers-102 (Nilsback & Zisserman 2008): 8,189 images, 102 classes.

Layout (torchvision's): ``flowers-102/jpg/image_%05d.jpg``, ``imagelabels.mat`` (``labels``,
1-based, one per image id 1..8189) and ``setid.mat`` (``trnid``, ``valid``, ``tstid``: image
ids). The paper's train split is trnid + valid (2,040 images), test is tstid (6,149).

torchvision's ``Flowers102`` would do, but it refuses the two .mat files unless their md5 matches
its record (re-saved or mirrored copies differ) and exposes samples only privately.
The dataset ships no class names, so classes are named by their 1-based label ("001".."102").
"""

from __future__ import annotations

import os

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.parsers._common import (
    check_listed,
    dataset_dir,
    ints,
    loadmat,
    mat_field,
    require_file,
)
from ranking_reg.utils.errors import DataError

NAME = "flowers102"
FOLDER = "flowers-102"


def build(
    root: str,
    split: str,
    transform=None,
    skip_corrupt: bool = False,
    decode_size: int | None = None,
) -> ImageListDataset:
    """Flowers-102; train = trnid + valid, test = tstid."""
    base = dataset_dir(NAME, root, FOLDER)
    labels_file = require_file(NAME, root, os.path.join(base, "imagelabels.mat"), "label file")
    setid_file = require_file(NAME, root, os.path.join(base, "setid.mat"), "split file")
    labels = ints(mat_field(loadmat(labels_file), "labels", labels_file))
    setid = loadmat(setid_file)
    keys = ("trnid", "valid") if split == "train" else ("tstid",)
    ids = [i for key in keys for i in ints(mat_field(setid, key, setid_file))]
    n_classes = max(labels)
    samples = []
    for image_id in ids:
        if not 1 <= image_id <= len(labels):
            raise DataError(
                f"{setid_file} lists image id {image_id} but {labels_file} labels only "
                f"{len(labels)} images; the two files do not belong together."
            )
        path = os.path.join(base, "jpg", f"image_{image_id:05d}.jpg")
        samples.append((path, labels[image_id - 1] - 1))
    check_listed((p for p, _ in samples), setid_file)
    classes = [f"{c:03d}" for c in range(1, n_classes + 1)]
    return ImageListDataset(
        samples, classes, transform=transform, skip_corrupt=skip_corrupt, decode_size=decode_size
    )
