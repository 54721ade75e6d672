"""Tiny copies of each dataset in its exact on-disk layout, for the tests.

Each ``make_<name>(root)`` writes small random JPEGs and the list/annotation files in the real
formats (.txt as the archives ship them, .mat through scipy.io.savemat with the real variable
names and struct fields) and returns what a correct parser must produce: per split the expected
``(relative path, label)`` list, plus the class names and boxes.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy.io import savemat


@dataclass
class Expected:
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]  # split -> [(absolute path, label)]
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    folder: str = ""


def write_jpeg(path: str, size: tuple[int, int] = (40, 30), seed: int = 0) -> str:
    """A random RGB JPEG of ``size`` (width, height) at ``path``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


def write_gradient_jpeg(path: str, size: tuple[int, int]) -> str:
    """A smooth JPEG (horizontal red ramp, vertical green ramp): scaled decodes stay comparable."""
    w, h = size
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    pixels = np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return path


def _cell(values: list[str], column: bool = False) -> np.ndarray:
    """A MATLAB cell array of strings (1xN, or Nx1 with ``column``)."""
    cell = np.empty((len(values), 1) if column else (1, len(values)), dtype=object)
    for i, v in enumerate(values):
        cell.flat[i] = v
    return cell


def _struct(rows: list[dict]) -> np.ndarray:
    """A 1xN MATLAB struct array with the fields of ``rows``."""
    names = list(rows[0])
    array = np.zeros((1, len(rows)), dtype=[(n, object) for n in names])
    for i, row in enumerate(rows):
        for n in names:
            value = row[n]
            array[0, i][n] = (
                value if isinstance(value, str) else np.array([[value]], dtype=np.uint16)
            )
    return array


# -- FGVC-Aircraft --------------------------------------------------------------------------------

# The hierarchy (variant -> family -> manufacturer) is a tree as in the real dataset; two variants
# share the family Boeing 737, two families share the manufacturer McDonnell Douglas.
AIRCRAFT_VARIANTS = ["737-300", "737-800", "F/A-18", "Cessna 172", "DC-3"]
AIRCRAFT_FAMILIES = ["Boeing 737", "F/A-18", "Cessna 172", "DC-3"]
AIRCRAFT_MANUFACTURERS = ["Boeing", "Cessna", "McDonnell Douglas"]
AIRCRAFT_VARIANT_FAMILY = [0, 0, 1, 2, 3]  # family id of each variant
AIRCRAFT_FAMILY_MANUFACTURER = [0, 2, 1, 2]  # manufacturer id of each family


def make_aircraft(root: str, per_class: int = 4, size: tuple[int, int] = (40, 50)) -> Expected:
    """``fgvc-aircraft-2013b/data``: 5 variants, ``per_class`` images each, half trainval; the
    images_{variant,family,manufacturer}_*.txt lists give each image its label at every level."""
    base = os.path.join(root, "fgvc-aircraft-2013b", "data")
    os.makedirs(os.path.join(base, "images"))
    for filename, names in (
        ("variants.txt", AIRCRAFT_VARIANTS),
        ("families.txt", AIRCRAFT_FAMILIES),
        ("manufacturers.txt", AIRCRAFT_MANUFACTURERS),
    ):
        with open(os.path.join(base, filename), "w") as f:
            f.write("".join(f"{n}\n" for n in names))
    lines: dict[tuple[str, str], list[str]] = {}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    boxes = {}
    box_lines = []
    image_id = 1000000
    for label, variant in enumerate(AIRCRAFT_VARIANTS):
        for k in range(per_class):
            image_id += 7
            name = f"{image_id:07d}"
            path = write_jpeg(os.path.join(base, "images", f"{name}.jpg"), size, seed=image_id)
            split = "trainval" if k % 2 == 0 else "test"
            family_id = AIRCRAFT_VARIANT_FAMILY[label]
            family = AIRCRAFT_FAMILIES[family_id]
            maker = AIRCRAFT_MANUFACTURERS[AIRCRAFT_FAMILY_MANUFACTURER[family_id]]
            for level, value in (("variant", variant), ("family", family), ("manufacturer", maker)):
                lines.setdefault((level, split), []).append(f"{name} {value}\n")
            splits["train" if split == "trainval" else "test"].append((path, label))
            x0, y0, x1, y1 = 3 + k, 2, 30 + k, 25  # 1-based inclusive, as images_box.txt
            box_lines.append(f"{name} {x0} {y0} {x1} {y1}\n")
            boxes[path] = (x0 - 1, y0 - 1, x1, y1)
    for (level, split), content in lines.items():
        with open(os.path.join(base, f"images_{level}_{split}.txt"), "w") as f:
            f.write("".join(content))
    with open(os.path.join(base, "images_box.txt"), "w") as f:
        f.write("".join(box_lines))
    return Expected(list(AIRCRAFT_VARIANTS), splits, boxes, base)


# -- Flowers-102 ----------------------------------------------------------------------------------


def make_flowers102(root: str, n_classes: int = 4, per_class: int = 5) -> Expected:
    """``flowers-102/``: labels 1-based in imagelabels.mat; trnid/valid/tstid in setid.mat."""
    base = os.path.join(root, "flowers-102")
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(1, n_classes + 1), per_class)
    rng.shuffle(labels)
    n = labels.size
    for image_id in range(1, n + 1):
        write_jpeg(os.path.join(base, "jpg", f"image_{image_id:05d}.jpg"), seed=image_id)
    trnid, valid, tstid = [], [], []
    for c in range(1, n_classes + 1):
        ids = (np.flatnonzero(labels == c) + 1).tolist()
        trnid.append(ids[0])
        valid.append(ids[1])
        tstid += ids[2:]
    savemat(os.path.join(base, "imagelabels.mat"), {"labels": labels[None, :].astype(np.uint8)})
    savemat(
        os.path.join(base, "setid.mat"),
        {
            k: np.array([v], dtype=np.uint16)
            for k, v in (("trnid", trnid), ("valid", valid), ("tstid", tstid))
        },
    )

    def entry(i: int) -> tuple[str, int]:
        return os.path.join(base, "jpg", f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1

    return Expected(
        [f"{c:03d}" for c in range(1, n_classes + 1)],
        {"train": [entry(i) for i in trnid + valid], "test": [entry(i) for i in tstid]},
        folder=base,
    )


# -- Stanford Cars --------------------------------------------------------------------------------

CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "BMW M3 Coupe 2012"]


def make_cars(root: str, layout: str = "torchvision", per_class: int = 4) -> Expected:
    """``stanford_cars/`` in torchvision's layout or the original ``car_ims`` + cars_annos.mat."""
    base = os.path.join(root, "stanford_cars")
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    boxes = {}
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    number = 0
    for label in range(len(CAR_NAMES)):
        for k in range(per_class):
            number += 1
            split = "train" if k % 2 == 0 else "test"
            box = {"bbox_x1": 2 + k, "bbox_y1": 3, "bbox_x2": 35, "bbox_y2": 20 + k}
            if layout == "torchvision":
                fname = f"{number:05d}.jpg"
                path = os.path.join(base, f"cars_{split}", fname)
                row = {**box, "class": label + 1, "fname": fname}
            else:
                rel = f"car_ims/{number:06d}.jpg"
                path = os.path.join(base, rel)
                row = {
                    "relative_im_path": rel,
                    **box,
                    "class": label + 1,
                    "test": int(split == "test"),
                }
            write_jpeg(path, seed=number)
            rows[split].append(row)
            splits[split].append((path, label))
            boxes[path] = (box["bbox_x1"] - 1, box["bbox_y1"] - 1, box["bbox_x2"], box["bbox_y2"])
    if layout == "torchvision":
        os.makedirs(os.path.join(base, "devkit"))
        savemat(os.path.join(base, "devkit", "cars_meta.mat"), {"class_names": _cell(CAR_NAMES)})
        savemat(
            os.path.join(base, "devkit", "cars_train_annos.mat"),
            {"annotations": _struct(rows["train"])},
        )
        savemat(
            os.path.join(base, "cars_test_annos_withlabels.mat"),
            {"annotations": _struct(rows["test"])},
        )
    else:
        savemat(
            os.path.join(base, "cars_annos.mat"),
            {"annotations": _struct(rows["train"] + rows["test"]), "class_names": _cell(CAR_NAMES)},
        )
    return Expected(list(CAR_NAMES), splits, boxes, base)


# -- Stanford Dogs --------------------------------------------------------------------------------

DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02116738-African_hunting_dog"]


def _dog_xml(path: str, boxes: list[tuple[int, int, int, int]]) -> None:
    annotation = ET.Element("annotation")
    size = ET.SubElement(annotation, "size")
    ET.SubElement(size, "width").text = "40"
    ET.SubElement(size, "height").text = "30"
    for x0, y0, x1, y1 in boxes:
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = "dog"
        bnd = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1), strict=True):
            ET.SubElement(bnd, key).text = str(value)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ET.ElementTree(annotation).write(path)


def make_dogs(root: str, per_class: int = 4, lists_subdir: bool = False) -> Expected:
    """``stanford_dogs/``: Images/, Annotation/ (XML), {train,test}_list.mat (or under lists/)."""
    base = os.path.join(root, "stanford_dogs")
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    lists: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    boxes = {}
    for label, folder in enumerate(DOG_FOLDERS):
        wnid = folder.split("-")[0]
        for k in range(per_class):
            rel = f"{folder}/{wnid}_{100 + k}.jpg"
            path = write_jpeg(os.path.join(base, "Images", rel), seed=label * 10 + k)
            split = "train" if k % 2 == 0 else "test"
            lists[split][0].append(rel)
            lists[split][1].append(label + 1)
            splits[split].append((path, label))
            dog_boxes = [(2, 3, 20, 25)] + ([(15, 1, 38, 12)] if k == 1 else [])
            _dog_xml(os.path.join(base, "Annotation", rel[:-4]), dog_boxes)
            boxes[path] = (
                min(b[0] for b in dog_boxes),
                min(b[1] for b in dog_boxes),
                max(b[2] for b in dog_boxes) + 1,
                max(b[3] for b in dog_boxes) + 1,
            )
    list_dir = os.path.join(base, "lists") if lists_subdir else base
    os.makedirs(list_dir, exist_ok=True)
    for split, (files, labels) in lists.items():
        savemat(
            os.path.join(list_dir, f"{split}_list.mat"),
            {
                "file_list": _cell(files, column=True),
                "annotation_list": _cell([f[:-4] for f in files], column=True),
                "labels": np.array(labels, dtype=np.float64)[:, None],
            },
        )
    classes = [f.split("-", 1)[1] for f in DOG_FOLDERS]
    return Expected(classes, splits, boxes, base)


# -- NABirds --------------------------------------------------------------------------------------

# Sparse ids, as in the real files: classes.txt names every node of hierarchy.txt ("<child id>
# <parent id>", root 0), only the leaves with images are classes. The tree has two top-level groups
# and leaves at depth 2 (295, 930) and 3 (313, 817, 900):
#   0 Birds -> 1 Perching Birds -> 295 Bushtit
#                               -> 22 Finches -> 313 Common Redpoll, 817 House Finch (Adult Male)
#           -> 2 Ducks, Geese, and Swans -> 48 Mallard -> 900 Mallard (Breeding male)
#                                        -> 930 Canada Goose
NABIRDS_CLASSES = {
    0: "Birds",
    1: "Perching Birds",
    2: "Ducks, Geese, and Swans",
    22: "Finches",
    48: "Mallard",
    295: "Bushtit",
    313: "Common Redpoll",
    817: "House Finch (Adult Male)",
    900: "Mallard (Breeding male)",
    930: "Canada Goose",
}
NABIRDS_PARENT = {1: 0, 2: 0, 22: 1, 48: 2, 295: 1, 313: 22, 817: 22, 900: 48, 930: 2}
NABIRDS_LEAVES = [295, 313, 817]  # the leaves with images by default
NABIRDS_ALL_LEAVES = [295, 313, 817, 900, 930]


def make_nabirds(root: str, per_class: int = 4, leaves: list[int] | None = None) -> Expected:
    """``nabirds/``: images/<class:04d>/<uuid>.jpg and the six .txt tables; images for the
    ``leaves`` (default :data:`NABIRDS_LEAVES`), the whole tree in hierarchy.txt/classes.txt."""
    leaves = sorted(NABIRDS_LEAVES if leaves is None else leaves)
    base = os.path.join(root, "nabirds")
    rng = np.random.default_rng(3)
    images, labels, split_lines, box_lines = [], [], [], []
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    boxes = {}
    # Listed out of class order on purpose: the mapping must follow ids, not first appearance.
    for label, class_id in sorted(enumerate(leaves), key=lambda t: -t[1]):
        for k in range(per_class):
            hexid = "".join(rng.choice(list("0123456789abcdef"), 32))
            uuid = f"{hexid[:8]}-{hexid[8:12]}-{hexid[12:16]}-{hexid[16:20]}-{hexid[20:]}"
            rel = f"{class_id:04d}/{hexid}.jpg"
            path = write_jpeg(os.path.join(base, "images", rel), seed=class_id + k)
            is_train = int(k % 2 == 0)
            images.append(f"{uuid} {rel}\n")
            labels.append(f"{uuid} {class_id}\n")
            split_lines.append(f"{uuid} {is_train}\n")
            box_lines.append(f"{uuid} 4 5 20 15\n")
            boxes[path] = (4.0, 5.0, 24.0, 20.0)
            splits["train" if is_train else "test"].append((path, label))
    tables = {
        "images.txt": images,
        "image_class_labels.txt": labels,
        "train_test_split.txt": split_lines,
        "bounding_boxes.txt": box_lines,
        "classes.txt": [f"{i} {n}\n" for i, n in NABIRDS_CLASSES.items()],
        "hierarchy.txt": [f"{c} {p}\n" for c, p in NABIRDS_PARENT.items()],
    }
    for filename, content in tables.items():
        with open(os.path.join(base, filename), "w") as f:
            f.write("".join(content))
    return Expected([NABIRDS_CLASSES[c] for c in leaves], splits, boxes, base)


# -- bring-your-own: folder / csv -----------------------------------------------------------------


def make_folder(root: str, counts: dict[str, int], presplit: bool = False) -> dict[str, list[str]]:
    """``root/<class>/*.jpg`` (or ``root/{train,test}/<class>``); returns class -> paths."""
    out: dict[str, list[str]] = {}
    seed = 0
    for name, n in counts.items():
        for k in range(n):
            seed += 1
            sub = ("train" if k % 2 == 0 else "test") if presplit else ""
            path = write_jpeg(os.path.join(root, sub, name, f"img_{k:03d}.jpg"), seed=seed)
            out.setdefault(name, []).append(path)
    return out


def write_csv(path: str, rows: list[tuple], header: str | None = "path,label,split") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if header:
            f.write(header + "\n")
        f.write("".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path
