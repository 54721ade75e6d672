"""NABirds (Van Horn et al., CVPR 2015): 48,562 images of 555 leaf classes (23,929 train /
24,633 test).

Layout under ``nabirds/``: ``images/<class:04d>/<uuid>.jpg``; ``images.txt`` ("<uuid> <path
under images/>"), ``image_class_labels.txt`` ("<uuid> <class id>"), ``train_test_split.txt``
("<uuid> <1 = train, 0 = test>"), ``classes.txt`` ("<class id> <name with spaces>"),
``hierarchy.txt`` and ``bounding_boxes.txt`` ("<uuid> x y width height", pixels). Class ids are
sparse: 1,011 ids (the hierarchy's inner nodes included) of which the 555 that have images are the
classes, mapped to 0..554 in increasing id order. torchvision has no NABirds class.
"""

from __future__ import annotations

import os

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.parsers._common import (
    check_listed,
    dataset_dir,
    require_file,
    split_pairs,
)
from ranking_reg.utils.errors import DataError

NAME = "nabirds"
FOLDER = "nabirds"


def read_table(root: str, base: str, filename: str) -> dict[str, str]:
    """``base/filename`` as {first column: rest of the line}."""
    path = require_file(NAME, root, os.path.join(base, filename))
    return {key: value.strip() for key, value in split_pairs(path)}


def _class_ids(labels: dict[str, str], labels_file: str) -> list[int]:
    try:
        return sorted({int(v) for v in labels.values()})
    except ValueError as error:
        raise DataError(f"{labels_file} holds a non-integer class id; unpack it again.") from error


def named_classes(
    ids: list[int], names: dict[str, str], ids_file: str, names_file: str
) -> tuple[dict[int, int], list[str]]:
    """Sorted NABirds ids -> ({id: position}, [name of each id]); an id that ``classes.txt``
    (``names``, read from ``names_file``) does not name is a DataError naming both files."""
    unnamed = [c for c in ids if str(c) not in names]
    if unnamed:
        raise DataError(
            f"{ids_file} uses class id {unnamed[0]}, which {names_file} does not name; the "
            "files come from different releases: unpack the dataset again."
        )
    return {c: i for i, c in enumerate(ids)}, [names[str(c)] for c in ids]


def leaf_class_ids(root: str, base: str) -> list[int]:
    """The NABirds ids of the classes (those with images), in label order (increasing id)."""
    labels = read_table(root, base, "image_class_labels.txt")
    return _class_ids(labels, os.path.join(base, "image_class_labels.txt"))


def build(
    root: str,
    split: str,
    transform=None,
    use_bbox: bool = False,
    skip_corrupt: bool = False,
    decode_size: int | None = None,
) -> ImageListDataset:
    """NABirds' 555 leaf classes; ``use_bbox`` crops every image to its bird."""
    base = dataset_dir(NAME, root, FOLDER)
    images = read_table(root, base, "images.txt")
    labels_file = os.path.join(base, "image_class_labels.txt")
    labels = read_table(root, base, "image_class_labels.txt")
    is_train = read_table(root, base, "train_test_split.txt")
    names = read_table(root, base, "classes.txt")
    class_ids = _class_ids(labels, labels_file)
    names_file = os.path.join(base, "classes.txt")
    index, classes = named_classes(class_ids, names, labels_file, names_file)
    want = "1" if split == "train" else "0"
    samples = []
    for uuid, rel in images.items():
        if uuid not in labels or uuid not in is_train:
            raise DataError(
                f"image {uuid} of {os.path.join(base, 'images.txt')} has no entry in "
                f"{labels_file} or train_test_split.txt; unpack the dataset again."
            )
        if is_train[uuid] == want:
            samples.append((os.path.join(base, "images", rel), index[int(labels[uuid])]))
    check_listed((p for p, _ in samples), os.path.join(base, "images.txt"))
    boxes = None
    if use_bbox:
        box_file = require_file(NAME, root, os.path.join(base, "bounding_boxes.txt"), "box list")
        by_path = {os.path.join(base, "images", rel): uuid for uuid, rel in images.items()}
        raw = {}
        for parts in split_pairs(box_file):
            try:
                raw[parts[0]] = [float(v) for v in parts[1].split()]
            except ValueError as error:
                raise DataError(f"{box_file} has a malformed line for {parts[0]}.") from error
        boxes = {}
        for path, _ in samples:
            box = raw.get(by_path[path])
            if box is not None and len(box) == 4:
                x, y, w, h = box
                boxes[path] = (x, y, x + w, y + h)
    return ImageListDataset(
        samples,
        classes,
        transform=transform,
        boxes=boxes,
        skip_corrupt=skip_corrupt,
        decode_size=decode_size,
    )
