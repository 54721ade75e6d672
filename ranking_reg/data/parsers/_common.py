"""Helpers shared by the parsers: locating the dataset folder, reading list files, and the
one-paragraph errors for missing or inconsistent data."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from ranking_reg.utils.errors import DataError


def prepare_hint(name: str, root: str) -> str:
    return f"python -m ranking_reg.data.prepare {name} --root {root}"


def dataset_dir(name: str, root: str | os.PathLike, folder: str) -> str:
    """``root/folder``, or a DataError naming the dataset, the path and the prepare command."""
    root = os.fspath(root)
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
        raise DataError(
            f"the {name} dataset was not found: the folder {path} does not exist. Run "
            f"`{prepare_hint(name, root)}` to download or place it there, or set data.root to "
            f"the folder that holds {folder}/."
        )
    return path


def require_file(name: str, root: str | os.PathLike, path: str, what: str = "") -> str:
    """``path`` if it is a file, else a DataError that names it and the prepare command."""
    if not os.path.isfile(path):
        raise DataError(
            f"the {name} dataset is incomplete: {what or 'the file'} {path} does not exist. "
            f"Unpack the full dataset again (`{prepare_hint(name, os.fspath(root))}`)."
        )
    return path


def read_text(path: str, what: str = "the file") -> str:
    """The text of a list file, decoded as UTF-8 (a leading byte-order mark is dropped), or a
    DataError naming the file, the line of the first undecodable byte and the encoding expected."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{what} {path} is not UTF-8 text: line {line} holds the byte "
            f"0x{data[error.start]:02x}, which UTF-8 does not allow there. Save the file as UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8 {path} > utf8.csv)."
        ) from None


def read_lines(path: str) -> list[str]:
    """Non-empty lines without their line ending (the file must be UTF-8 text)."""
    return [line.rstrip("\n") for line in io.StringIO(read_text(path)) if line.strip()]


def split_pairs(path: str, expected: int = 2) -> list[list[str]]:
    """Whitespace-separated lines whose last column may hold spaces (maxsplit=expected-1)."""
    rows = []
    for number, line in enumerate(read_lines(path), 1):
        parts = line.strip().split(maxsplit=expected - 1)
        if len(parts) != expected:
            raise DataError(
                f"line {number} of {path} ({line!r}) should have {expected} fields; "
                "the file is damaged: unpack the dataset again."
            )
        rows.append(parts)
    return rows


def check_listed(paths: Iterable[str], list_file: str) -> None:
    """A DataError naming the list file and the first listed image that does not exist."""
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(
                f"the list file {list_file} names the image {path}, which does not exist; "
                "the image folder is incomplete: unpack the dataset again or remove the line."
            )


def loadmat(path: str) -> dict[str, Any]:
    """``scipy.io.loadmat(squeeze_me=True)`` with a DataError for a damaged file."""
    from scipy.io import loadmat as _loadmat

    try:
        return _loadmat(path, squeeze_me=True)
    except Exception as error:  # scipy raises ValueError/TypeError/OSError for damaged files
        raise DataError(
            f"the MATLAB file {path} cannot be read ({error}); download it again."
        ) from error


def mat_field(mat: dict[str, Any], key: str, path: str) -> Any:
    if key not in mat:
        raise DataError(
            f"the MATLAB file {path} has no variable {key!r} (it has "
            f"{sorted(k for k in mat if not k.startswith('__'))}); it is not the file expected."
        )
    return mat[key]


def records(array: Any) -> list[Any]:
    """Rows of a MATLAB struct array loaded with squeeze_me (a single row squeezes to 0-d)."""
    return list(np.atleast_1d(array))


def as_str(value: Any) -> str:
    """A MATLAB char/cell entry as a Python str."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else "".join(map(str, value.ravel()))
    return str(value)


def ints(values: Any) -> list[int]:
    return [int(v) for v in np.atleast_1d(np.asarray(values)).ravel()]


def stratified_split(
    samples: list[tuple[str, int]], split: str, test_fraction: float, seed: int
) -> list[tuple[str, int]]:
    """A fixed per-class train/test split for data that ships without one.

    The samples, sorted by path, are split by :func:`ranking_reg.data.splits.stratified_split`
    (per class, ``floor(n * test_fraction + 0.5)`` images go to test, a class always keeps at least
    one training image; seeded, deterministic). The range of ``test_fraction``, [0, 1), is the
    config schema's rule (``data.test_fraction``).
    """
    from ranking_reg.data.splits import stratified_split as split_indices

    ordered = sorted(samples)
    kept, held = split_indices([label for _, label in ordered], float(test_fraction), seed)
    chosen = [ordered[i] for i in (held if split == "test" else kept)]
    return sorted(chosen, key=lambda s: (s[1], s[0]))
