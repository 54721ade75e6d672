"""Stanford Dogs (Khosla et al., FGVC 2011): 20,580 images, 120 breeds (12,000 train / 8,580 test).

Layout under ``stanford_dogs/`` (images.tar, lists.tar and annotation.tar unpacked there):
``Images/<wnid>-<breed>/<wnid>_<n>.jpg``, ``train_list.mat`` / ``test_list.mat`` (also accepted
under ``lists/``) with ``file_list`` (paths relative to Images/) and ``labels`` (1-based), and
``Annotation/<wnid>-<breed>/<wnid>_<n>`` (PASCAL-VOC XML without extension; one ``bndbox`` per
dog, pixel coordinates). With several dogs the crop is the union of their boxes. Class names are
the breed part of the folder name. torchvision has no Stanford Dogs class.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.parsers._common import (
    as_str,
    check_listed,
    dataset_dir,
    ints,
    loadmat,
    mat_field,
    records,
)
from ranking_reg.utils.errors import DataError

NAME = "dogs"
FOLDER = "stanford_dogs"


def _list_file(base: str, root: str, split: str) -> str:
    for candidate in (f"{split}_list.mat", os.path.join("lists", f"{split}_list.mat")):
        path = os.path.join(base, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(
        f"the dogs dataset is incomplete: neither {os.path.join(base, f'{split}_list.mat')} nor "
        f"{os.path.join(base, 'lists', f'{split}_list.mat')} exists. Unpack lists.tar there "
        f"(`python -m ranking_reg.data.prepare dogs --root {root}`)."
    )


def _read_list(path: str) -> list[tuple[str, int]]:
    mat = loadmat(path)
    files = [as_str(f) for f in records(mat_field(mat, "file_list", path))]
    labels = ints(mat_field(mat, "labels", path))
    if len(files) != len(labels):
        raise DataError(
            f"{path} has {len(files)} files but {len(labels)} labels; download it again."
        )
    return [(f, y - 1) for f, y in zip(files, labels, strict=True)]


def _read_box(path: str) -> tuple[float, float, float, float] | None:
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return None  # no annotation for this image: use the whole image
    boxes = []
    for node in tree.iter("bndbox"):
        try:
            boxes.append([float(node.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        except (TypeError, ValueError):
            continue
    if not boxes:
        return None
    # VOC pixel indices are inclusive: +1 on the far edge for PIL's exclusive crop.
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes) + 1,
        max(b[3] for b in boxes) + 1,
    )


def build(
    root: str,
    split: str,
    transform=None,
    use_bbox: bool = False,
    skip_corrupt: bool = False,
    decode_size: int | None = None,
) -> ImageListDataset:
    """Stanford Dogs; ``use_bbox`` crops to the union of the dog boxes of each image."""
    base = dataset_dir(NAME, root, FOLDER)
    entries = {s: _read_list(_list_file(base, root, s)) for s in ("train", "test")}
    names: dict[int, str] = {}
    for rel, label in entries["train"] + entries["test"]:
        folder = rel.replace("\\", "/").split("/")[0]
        names.setdefault(label, folder.split("-", 1)[1] if "-" in folder else folder)
    n_classes = max(names) + 1
    missing = [c for c in range(n_classes) if c not in names]
    if missing:
        raise DataError(
            f"the dogs lists under {base} have no image of class {missing[0] + 1}; "
            "they are incomplete: unpack lists.tar again."
        )
    classes = [names[c] for c in range(n_classes)]
    list_file = _list_file(base, root, split)
    samples = [(os.path.join(base, "Images", rel), y) for rel, y in entries[split]]
    check_listed((p for p, _ in samples), list_file)
    boxes = None
    if use_bbox:
        annotation_dir = os.path.join(base, "Annotation")
        if not os.path.isdir(annotation_dir):
            raise DataError(
                f"use_bbox=true needs the dogs boxes, but {annotation_dir} does not exist; unpack "
                f"annotation.tar there (`python -m ranking_reg.data.prepare dogs --root {root}`) "
                "or set use_bbox=false."
            )
        boxes = {}
        for (path, _), (rel, _) in zip(samples, entries[split], strict=True):
            box = _read_box(os.path.join(base, "Annotation", os.path.splitext(rel)[0]))
            if box is not None:
                boxes[path] = box
    return ImageListDataset(
        samples,
        classes,
        transform=transform,
        boxes=boxes,
        skip_corrupt=skip_corrupt,
        decode_size=decode_size,
    )
