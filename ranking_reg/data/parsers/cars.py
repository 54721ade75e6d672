"""Stanford Cars (Krause et al., 3dRR 2013): 16,185 images, 196 classes (8,144 train / 8,041 test).

Two layouts are read, both under ``stanford_cars/``:

- torchvision's: ``devkit/cars_meta.mat`` (``class_names``), ``devkit/cars_train_annos.mat``
  and ``cars_test_annos_withlabels.mat`` (also accepted inside ``devkit/``), each with
  ``annotations``: ``bbox_x1, bbox_y1, bbox_x2, bbox_y2, class`` (1-based), ``fname``; images in
  ``cars_train/`` and ``cars_test/``;
- the original single-file release: ``car_ims/*.jpg`` + ``cars_annos.mat`` (``annotations`` with
  ``relative_im_path``, the box, ``class`` and the ``test`` flag; ``class_names``).

Boxes are 1-based inclusive pixels. torchvision's ``StanfordCars`` reads the first layout only and
drops the boxes, hence this parser.
"""

from __future__ import annotations

import os

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.parsers._common import (
    as_str,
    check_listed,
    dataset_dir,
    loadmat,
    mat_field,
    records,
    require_file,
)
from ranking_reg.utils.errors import DataError

NAME = "cars"
FOLDER = "stanford_cars"


def _field(row, key: str, path: str):
    try:
        return row[key]
    except (ValueError, KeyError, IndexError) as error:
        raise DataError(
            f"the annotations in {path} have no field {key!r}; it is not a Stanford Cars "
            "annotation file."
        ) from error


def _box(row, path: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(_field(row, f"bbox_{k}", path)) for k in ("x1", "y1", "x2", "y2"))
    return (x0 - 1, y0 - 1, x1, y1)


def build(
    root: str,
    split: str,
    transform=None,
    use_bbox: bool = False,
    skip_corrupt: bool = False,
    decode_size: int | None = None,
) -> ImageListDataset:
    """Stanford Cars in either layout; ``use_bbox`` crops every image to its car."""
    base = dataset_dir(NAME, root, FOLDER)
    devkit = os.path.join(base, "devkit")
    single = os.path.join(base, "cars_annos.mat")
    samples: list[tuple[str, int]] = []
    boxes: dict[str, tuple[float, float, float, float]] = {}
    if os.path.isdir(devkit):
        meta_file = require_file(NAME, root, os.path.join(devkit, "cars_meta.mat"), "class list")
        classes = [
            as_str(c) for c in records(mat_field(loadmat(meta_file), "class_names", meta_file))
        ]
        if split == "train":
            annos_file = os.path.join(devkit, "cars_train_annos.mat")
            image_dir = os.path.join(base, "cars_train")
        else:
            annos_file = os.path.join(base, "cars_test_annos_withlabels.mat")
            if not os.path.isfile(annos_file):
                annos_file = os.path.join(devkit, "cars_test_annos_withlabels.mat")
            image_dir = os.path.join(base, "cars_test")
        require_file(NAME, root, annos_file, "annotation file")
        for row in records(mat_field(loadmat(annos_file), "annotations", annos_file)):
            path = os.path.join(image_dir, as_str(_field(row, "fname", annos_file)))
            samples.append((path, int(_field(row, "class", annos_file)) - 1))
            boxes[path] = _box(row, annos_file)
    elif os.path.isfile(single):
        annos_file = single
        mat = loadmat(single)
        classes = [as_str(c) for c in records(mat_field(mat, "class_names", single))]
        want_test = split == "test"
        for row in records(mat_field(mat, "annotations", single)):
            if bool(int(_field(row, "test", single))) != want_test:
                continue
            path = os.path.join(base, as_str(_field(row, "relative_im_path", single)))
            samples.append((path, int(_field(row, "class", single)) - 1))
            boxes[path] = _box(row, single)
    else:
        raise DataError(
            f"the cars dataset folder {base} holds neither devkit/ (torchvision's layout) nor "
            "cars_annos.mat (the original release); see `python -m ranking_reg.data.prepare cars "
            f"--root {root}` for where to get the files and how to lay them out."
        )
    check_listed((p for p, _ in samples), annos_file)
    return ImageListDataset(
        samples,
        classes,
        transform=transform,
        boxes=boxes if use_bbox else None,
        skip_corrupt=skip_corrupt,
        decode_size=decode_size,
    )
