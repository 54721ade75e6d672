"""Bring-your-own data as a list file: CSV rows ``path,label[,split]``.

The format of the authors' ``lists/*.csv``: ``path`` relative to ``root`` or absolute, ``label``
an integer or a class name, optional ``split`` (train/trainval/val -> train, test -> test). An
optional header row (``path,label[,split]`` or similar) is skipped. ``list_file`` is one file
(relative to ``root`` or to the working directory, or absolute); ``{split}`` in it selects one
file per split (``lists/{split}.csv``). Without a split column or ``{split}``, each class is split
with ``test_fraction`` / ``split_seed``. Classes: integer labels keep their numeric order
(mapped to 0..C-1 if sparse), names are sorted; both taken over every split so that train and
test agree.
"""

from __future__ import annotations

import csv
import io
import os

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.parsers._common import (
    check_listed,
    read_text,
    stratified_split,
)
from ranking_reg.utils.errors import ConfigError, DataError

NAME = "csv"
HEADER_PATH = {"path", "file", "filename", "file_name", "image", "image_path", "img"}
SPLITS = {
    "train": "train",
    "trainval": "train",
    "val": "train",
    "valid": "train",
    "validation": "train",
    "test": "test",
}


def _resolve(root: str, list_file: str) -> str:
    if os.path.isabs(list_file):
        return list_file
    under_root = os.path.join(root, list_file)
    return under_root if os.path.isfile(under_root) else os.path.abspath(list_file)


def _read(path: str) -> list[tuple[str, str, str | None, int]]:
    """Rows (path, label, split or None, line number)."""
    if not os.path.isfile(path):
        raise DataError(
            f"the list file {path} does not exist; set data.list_file to a CSV of "
            "'path,label[,split]' rows (relative to data.root or absolute)."
        )
    rows = []
    text = read_text(path, "the list file")
    for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        row = [cell.strip() for cell in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        if number == 1 and row[0].lower() in HEADER_PATH:
            continue
        if len(row) not in (2, 3) or not row[0] or not row[1]:
            raise DataError(
                f"line {number} of the list file {path} ({','.join(row)!r}) is not "
                "'path,label' or 'path,label,split'."
            )
        rows.append((row[0], row[1], row[2] if len(row) == 3 else None, number))
    if not rows:
        raise DataError(f"the list file {path} lists no images.")
    return rows


def build(
    root: str,
    split: str,
    transform=None,
    list_file: str | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    skip_corrupt: bool = False,
    decode_size: int | None = None,
) -> ImageListDataset:
    """The images of ``list_file`` for ``split``; see the module docstring."""
    if not list_file:
        raise ConfigError(
            "dataset csv needs the option list_file (data.list_file=path/to/list.csv), a CSV "
            "of 'path,label[,split]' rows."
        )
    root = os.fspath(root)
    per_split = "{split}" in list_file
    files = (
        {s: _resolve(root, list_file.replace("{split}", s)) for s in ("train", "test")}
        if per_split
        else {None: _resolve(root, list_file)}
    )
    table = {key: _read(path) for key, path in files.items()}
    labels = {label for rows in table.values() for _, label, _, _ in rows}
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    ordered = sorted(labels, key=int) if numeric else sorted(labels)
    index = {label: i for i, label in enumerate(ordered)}
    classes = [str(int(c)) for c in ordered] if numeric else ordered
    if per_split:
        source = files[split]
        chosen = [(p, y) for p, y, _, _ in table[split]]
    else:
        source = files[None]
        rows = table[None]
        with_split = [r for r in rows if r[2] is not None]
        if with_split and len(with_split) != len(rows):
            raise DataError(
                f"some rows of the list file {source} have a split column and some do not; "
                "give every row a split (train/test) or none."
            )
        if with_split:
            for _, _, s, number in rows:
                if s.lower() not in SPLITS:
                    raise DataError(
                        f"line {number} of the list file {source} has split {s!r}; use one of "
                        f"{sorted(SPLITS)}."
                    )
            chosen = [(p, y) for p, y, s, _ in rows if SPLITS[s.lower()] == split]
        else:
            chosen = [(p, y) for p, y, _, _ in rows]
    samples = [(p if os.path.isabs(p) else os.path.join(root, p), index[y]) for p, y in chosen]
    if not per_split and not any(r[2] for r in table[None]):
        samples = stratified_split(samples, split, test_fraction, split_seed)
    check_listed((p for p, _ in samples), source)
    if not samples:
        raise DataError(f"the list file {source} has no rows for split {split!r}.")
    return ImageListDataset(
        samples, classes, transform=transform, skip_corrupt=skip_corrupt, decode_size=decode_size
    )
