"""Class-disjoint protocols: keep one half of a dataset's classes (``data.classes``).

With C classes (ids 0..C-1 in the dataset's own order), ``first_half`` keeps the ids
[0, C // 2) and ``second_half`` the ids [C // 2, C); ``all`` keeps every class. The kept classes
are relabelled 0..C'-1 in their original order and keep their names, and the same cut applies
to the train, validation and test splits. So "train on half of the classes, evaluate the
embedding on the other, never-seen half" is ``train data.classes=first_half`` then
``evaluate ckpt_path=... data.classes=second_half`` (retrieval and kNN metrics; the class head
is not scored on classes it was not trained for).

Torch-free: the config schema imports :data:`CLASS_SUBSETS`.
"""

from __future__ import annotations

from typing import Any

CLASS_SUBSETS = ("all", "first_half", "second_half")


def kept_class_ids(num_classes: int, which: str) -> list[int]:
    """The original class ids ``which`` keeps, ascending (see the module docstring)."""
    half = num_classes // 2
    ranges = {"all": (0, num_classes), "first_half": (0, half), "second_half": (half, num_classes)}
    if which not in ranges:
        raise ValueError(f"classes={which!r}: choose one of {', '.join(CLASS_SUBSETS)}")
    start, stop = ranges[which]
    return list(range(start, stop))


class ClassSubset:
    """The samples of ``base`` whose class is in ``class_ids``, relabelled to their rank in it.

    Keeps the ImageFolder attributes (``samples``, ``targets``, ``classes``) and ``load_image``;
    item ``i`` is ``(image, new label)`` of the i-th kept sample, in the base's order.
    """

    def __init__(self, base: Any, class_ids: list[int]) -> None:
        self.base = base
        new_label = {old: new for new, old in enumerate(class_ids)}
        self.indices = [i for i, (_, label) in enumerate(base.samples) if label in new_label]
        self.samples = [(base.samples[i][0], new_label[base.samples[i][1]]) for i in self.indices]
        self.targets = [label for _, label in self.samples]
        self.classes = [base.classes[c] for c in class_ids]
        self._new_label = new_label

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.base[self.indices[index]]
        return image, self._new_label[int(label)]

    def load_image(self, index: int) -> Any:
        return self.base.load_image(self.indices[index])


def select_classes(base: Any, which: str) -> Any:
    """``base`` itself for ``all``, else a :class:`ClassSubset` of the ``which`` half."""
    if which == "all":
        return base
    return ClassSubset(base, kept_class_ids(len(base.classes), which))
