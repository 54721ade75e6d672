"""Class hierarchies of the datasets that ship one: FGVC-Aircraft and NABirds (docs/HIERARCHY.md).

A :class:`ClassHierarchy` maps every fine class the model predicts (label ids ``0..C-1`` in the
dataset's class order) to its parent at each coarser level:

- FGVC-Aircraft (Maji et al., arXiv 1306.5151): variant -> family -> manufacturer, read from the
  dataset's own lists ``images_{variant,family,manufacturer}_{trainval,test}.txt`` (each image's
  label at every level) and the class lists ``variants.txt`` / ``families.txt`` /
  ``manufacturers.txt`` (a parent's id is its line in its level's list). The levels above the
  classified one (``data.level``): ("family", "manufacturer") for variants, ("manufacturer",) for
  families, none for manufacturers. A class must have exactly one parent at each level.
- NABirds (Van Horn et al., CVPR 2015): ``hierarchy.txt`` ("<child id> <parent id>") is a tree
  whose root (id 0, "Birds") is the only node without a parent; ``classes.txt`` names every node.
  Levels: ("parent", "group"): ``parent`` is the leaf's immediate parent in the tree (a species
  for a sex/age/morph category such as "House Finch (Adult Male)", otherwise a genus- or
  family-like group: the tree is not of uniform depth), ``group`` is its ancestor just below the
  root (the top-level groups such as "Perching Birds" or "Ducks, Geese, and Swans": roughly
  orders, but common-name groups rather than strict taxonomic ranks, hence not called "order").
  Parent ids number the parents that occur, in increasing NABirds id order.

Every other dataset has no hierarchy (:func:`build_hierarchy` returns None).

Torch-free (the datamodule and the metrics import it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ranking_reg.data.parsers.aircraft import LEVELS as _AIRCRAFT_FILES
from ranking_reg.utils.errors import DataError


@dataclass(frozen=True)
class ClassHierarchy:
    """Coarser levels above the fine classes.

    ``levels``: the coarse level names from finer to coarser (the fine level itself excluded).
    ``parents[level][c]``: the parent id at ``level`` of fine class ``c`` (the dataset's label
    id). ``names[level][p]``: the name of parent ``p`` at ``level``.
    """

    levels: tuple[str, ...]
    parents: dict[str, list[int]]
    names: dict[str, list[str]]

    def __post_init__(self) -> None:
        levels = tuple(self.levels)
        object.__setattr__(self, "levels", levels)
        if not levels or len(set(levels)) != len(levels):
            raise ValueError(f"ClassHierarchy: levels must be distinct and non-empty: {levels}")
        for what, table in (("parents", self.parents), ("names", self.names)):
            if set(table) != set(levels):
                raise ValueError(
                    f"ClassHierarchy: {what} has the levels {sorted(table)}, expected {levels}"
                )
        counts = {len(self.parents[level]) for level in levels}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(
                "ClassHierarchy: every level must give a parent to each of the same non-zero "
                f"number of classes, got { ({lvl: len(self.parents[lvl]) for lvl in levels}) }"
            )
        for level in levels:
            n = len(self.names[level])
            bad = [p for p in self.parents[level] if not 0 <= int(p) < n]
            if bad:
                raise ValueError(
                    f"ClassHierarchy: level {level!r} has the parent id {bad[0]}, outside "
                    f"0..{n - 1} (its {n} names)"
                )

    @property
    def num_classes(self) -> int:
        """The number of fine classes (label ids ``0..num_classes-1``)."""
        return len(self.parents[self.levels[0]])

    def parent_names(self, level: str) -> list[str]:
        """The name of each fine class's parent at ``level``, in class order."""
        return [self.names[level][p] for p in self.parents[level]]

    def subset(self, class_ids: Sequence[int]) -> ClassHierarchy:
        """The hierarchy of the classes ``class_ids`` relabelled to their rank in it (the
        relabelling of :class:`ranking_reg.data.class_subset.ClassSubset`). Parent ids and names
        stay those of the full dataset, so a parent keeps its id in both halves."""
        ids = [int(c) for c in class_ids]
        bad = [c for c in ids if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"class id {bad[0]} is outside 0..{self.num_classes - 1}")
        return ClassHierarchy(
            self.levels,
            {level: [self.parents[level][c] for c in ids] for level in self.levels},
            {level: list(self.names[level]) for level in self.levels},
        )


# -- FGVC-Aircraft ---------------------------------------------------------------------------------


def _image_labels(root: str, base: str, level: str) -> dict[str, tuple[str, str]]:
    """image id -> (label name at ``level``, the list file that gives it), trainval and test."""
    from ranking_reg.data.parsers._common import require_file, split_pairs
    from ranking_reg.data.parsers.aircraft import NAME

    out: dict[str, tuple[str, str]] = {}
    for split in ("trainval", "test"):
        path = os.path.join(base, f"images_{level}_{split}.txt")
        require_file(NAME, root, path, f"the {level} list of the class hierarchy")
        for image_id, name in split_pairs(path):
            out[image_id] = (name.strip(), path)
    return out


def _parent_map(
    base: str,
    finer: str,
    coarser: str,
    labels: dict[str, dict[str, tuple[str, str]]],
    names: dict[str, list[str]],
) -> dict[str, str]:
    """{name at ``finer``: its one parent at ``coarser``}, from the images labelled at both."""
    coarse_file = os.path.join(base, _AIRCRAFT_FILES[coarser])
    known = set(names[coarser])
    out: dict[str, tuple[str, str]] = {}  # finer name -> (coarser name, an image that says so)
    for image_id, (child, child_file) in labels[finer].items():
        if image_id not in labels[coarser]:
            raise DataError(
                f"image {image_id} has the {finer} {child!r} in {child_file} but no {coarser} in "
                f"images_{coarser}_trainval.txt or images_{coarser}_test.txt under {base}; the "
                "annotation files come from different versions: unpack the dataset again."
            )
        parent, parent_file = labels[coarser][image_id]
        if parent not in known:
            raise DataError(
                f"{parent_file} names the {coarser} {parent!r}, which is not in {coarse_file}; "
                "the annotation files come from different versions: unpack the dataset again."
            )
        if child in out and out[child][0] != parent:
            other, other_image = out[child]
            raise DataError(
                f"the class hierarchy of FGVC-Aircraft is not a tree: the {finer} {child!r} "
                f"belongs to the {coarser} {other!r} (image {other_image}) and to the {coarser} "
                f"{parent!r} (image {image_id}, {parent_file}); each {finer} must belong to "
                f"exactly one {coarser}: the annotation files are damaged or mixed, unpack the "
                "dataset again."
            )
        out.setdefault(child, (parent, image_id))
    return {child: parent for child, (parent, _) in out.items()}


def aircraft_hierarchy(root: str, level: str = "variant") -> ClassHierarchy | None:
    """The levels above ``level`` of FGVC-Aircraft (module docstring), None for manufacturer.

    Each level's parent is read one step at a time (variant -> family, family -> manufacturer),
    each step checked to give one parent per child, so the levels form a tree.
    """
    from ranking_reg.data.parsers._common import dataset_dir, read_lines, require_file
    from ranking_reg.data.parsers.aircraft import FOLDER, NAME

    chain = list(_AIRCRAFT_FILES)  # variant, family, manufacturer: finer to coarser
    if level not in chain:
        return None  # the parser reports the unknown level when it builds the dataset
    used = chain[chain.index(level) :]
    if len(used) == 1:
        return None
    base = dataset_dir(NAME, root, FOLDER)
    names: dict[str, list[str]] = {}
    for lvl in used:
        path = require_file(NAME, root, os.path.join(base, _AIRCRAFT_FILES[lvl]), "class list")
        names[lvl] = [line.strip() for line in read_lines(path)]
    labels = {lvl: _image_labels(root, base, lvl) for lvl in used}
    current = {c: c for c in names[level]}  # class -> its ancestor's name at the level reached
    parents: dict[str, list[int]] = {}
    for finer, coarser in zip(used, used[1:], strict=False):
        up = _parent_map(base, finer, coarser, labels, names)
        orphans = [c for c in names[level] if current[c] not in up]
        if orphans:  # only possible at the first step: a class with no image
            raise DataError(
                f"the {level} {orphans[0]!r} of {os.path.join(base, _AIRCRAFT_FILES[level])} has "
                f"no image in images_{level}_trainval.txt or images_{level}_test.txt, so its "
                f"{coarser} is unknown; unpack the dataset again."
            )
        current = {c: up[name] for c, name in current.items()}
        index = {name: i for i, name in enumerate(names[coarser])}
        parents[coarser] = [index[current[c]] for c in names[level]]
    coarse = tuple(used[1:])
    return ClassHierarchy(coarse, parents, {lvl: names[lvl] for lvl in coarse})


# -- NABirds ---------------------------------------------------------------------------------------

NABIRDS_LEVELS = ("parent", "group")


def nabirds_hierarchy(root: str) -> ClassHierarchy:
    """NABirds' leaf classes -> (immediate parent, top-level group below the root)."""
    from ranking_reg.data.parsers._common import dataset_dir, require_file, split_pairs
    from ranking_reg.data.parsers.nabirds import (
        FOLDER,
        NAME,
        leaf_class_ids,
        named_classes,
        read_table,
    )

    base = dataset_dir(NAME, root, FOLDER)
    tree_file = require_file(NAME, root, os.path.join(base, "hierarchy.txt"), "class hierarchy")
    names_file = os.path.join(base, "classes.txt")
    names = read_table(root, base, "classes.txt")
    leaves = leaf_class_ids(root, base)
    parent_of: dict[int, int] = {}
    for number, (child, parent) in enumerate(split_pairs(tree_file), 1):
        try:
            c, p = int(child), int(parent)
        except ValueError:
            raise DataError(
                f"line {number} of {tree_file} ({child} {parent}) is not '<child id> <parent "
                "id>' with integer ids; the file is damaged: unpack the dataset again."
            ) from None
        if c in parent_of and parent_of[c] != p:
            raise DataError(
                f"{tree_file} gives the class id {c} two parents ({parent_of[c]} and {p}, line "
                f"{number}); the hierarchy must be a tree: unpack the dataset again."
            )
        parent_of[c] = p
    chains: list[list[int]] = []  # leaf, parent, ..., root
    for leaf in leaves:
        if leaf not in parent_of:
            raise DataError(
                f"class id {leaf} has images but no line in {tree_file}, so its place in the "
                "hierarchy is unknown; the files come from different releases: unpack the "
                "dataset again."
            )
        chain = [leaf]
        while chain[-1] in parent_of:
            chain.append(parent_of[chain[-1]])
            if chain[-1] in chain[:-1]:
                cycle = chain[chain.index(chain[-1]) :]
                raise DataError(
                    f"{tree_file} has a cycle through the class ids {cycle}; the hierarchy "
                    "must be a tree: unpack the dataset again."
                )
        chains.append(chain)
    # chain[1] is the immediate parent; chain[-2] the ancestor just below the root (the leaf
    # itself when the leaf hangs from the root directly).
    raw = {"parent": [chain[1] for chain in chains], "group": [chain[-2] for chain in chains]}
    parents: dict[str, list[int]] = {}
    level_names: dict[str, list[str]] = {}
    for level, ids in raw.items():
        index, level_names[level] = named_classes(sorted(set(ids)), names, tree_file, names_file)
        parents[level] = [index[i] for i in ids]
    return ClassHierarchy(NABIRDS_LEVELS, parents, level_names)


# -- by dataset name -------------------------------------------------------------------------------


def build_hierarchy(
    name: str, root: str | os.PathLike | None, **options: Any
) -> ClassHierarchy | None:
    """The class hierarchy of dataset ``name`` (its config options as ``build_dataset`` takes
    them: aircraft reads ``level``), or None for a dataset without one."""
    if root is None or name not in ("aircraft", "nabirds"):
        return None
    if name == "aircraft":
        return aircraft_hierarchy(os.fspath(root), options.get("level", "variant"))
    return nabirds_hierarchy(os.fspath(root))
