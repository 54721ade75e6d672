"""FGVC-Aircraft 2013b (Maji et al., arXiv 1306.5151): 10,000 images, 100 variants.

Layout (the archive unpacked under root): ``fgvc-aircraft-2013b/data/`` with ``images/<id>.jpg``,
``variants.txt`` / ``families.txt`` / ``manufacturers.txt`` (one class name a line, in label
order) and ``images_<level>_{trainval,test}.txt`` ("<id> <class name>", names may hold spaces
and '/'). The paper's train split is ``trainval`` (6,667 images), test is 3,333. Boxes:
``images_box.txt`` ("<id> xmin ymin xmax ymax", 1-based inclusive pixels). Every image carries a
20-pixel copyright banner at the bottom, removed by ``crop_banner``.

torchvision's ``FGVCAircraft`` reads the same files but exposes its list only as private
attributes and knows neither boxes nor the banner, hence this parser.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ranking_reg.data.parsers._common import (
    check_listed,
    dataset_dir,
    read_lines,
    require_file,
    split_pairs,
)
from ranking_reg.utils.errors import ConfigError, DataError

if TYPE_CHECKING:  # the config schema imports LEVELS: keep this module torch-free on import
    from ranking_reg.data.image_list import ImageListDataset

NAME = "aircraft"
FOLDER = os.path.join("fgvc-aircraft-2013b", "data")
BANNER_PIXELS = 20
LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}


def build(
    root: str,
    split: str,
    transform=None,
    level: str = "variant",
    crop_banner: bool = True,
    use_bbox: bool = False,
    skip_corrupt: bool = False,
    decode_size: int | None = None,
) -> ImageListDataset:
    """FGVC-Aircraft at ``level`` (variant: 100, family: 70, manufacturer: 30 classes)."""
    if level not in LEVELS:
        raise ConfigError(
            f"option level={level!r} of dataset aircraft must be one of {sorted(LEVELS)}."
        )
    base = dataset_dir(NAME, root, FOLDER)
    classes_file = require_file(NAME, root, os.path.join(base, LEVELS[level]), "class list")
    classes = [line.strip() for line in read_lines(classes_file)]
    index = {c: i for i, c in enumerate(classes)}
    list_file = os.path.join(
        base, f"images_{level}_{'trainval' if split == 'train' else 'test'}.txt"
    )
    require_file(NAME, root, list_file, "split list")
    samples = []
    for image_id, name in split_pairs(list_file):
        name = name.strip()
        if name not in index:
            raise DataError(
                f"{list_file} names the class {name!r}, which is not in {classes_file}; "
                "the annotation files come from different versions: unpack the dataset again."
            )
        samples.append((os.path.join(base, "images", f"{image_id}.jpg"), index[name]))
    check_listed((p for p, _ in samples), list_file)
    boxes = None
    if use_bbox:
        box_file = require_file(NAME, root, os.path.join(base, "images_box.txt"), "box list")
        boxes = {}
        for number, line in enumerate(read_lines(box_file), 1):
            parts = line.split()
            try:
                x0, y0, x1, y1 = (float(v) for v in parts[1:5])
            except ValueError as error:
                raise DataError(
                    f"line {number} of {box_file} ({line!r}) is not "
                    "'<id> xmin ymin xmax ymax'; unpack the dataset again."
                ) from error
            path = os.path.join(base, "images", f"{parts[0]}.jpg")
            boxes[path] = (x0 - 1, y0 - 1, x1, y1)
    from ranking_reg.data.image_list import ImageListDataset

    return ImageListDataset(
        samples,
        classes,
        transform=transform,
        boxes=boxes,
        crop_bottom=BANNER_PIXELS if crop_banner else 0,
        skip_corrupt=skip_corrupt,
        decode_size=decode_size,
    )
