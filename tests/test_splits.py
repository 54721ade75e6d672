"""The seeded stratified split and the SplitView (val carved from train, folder/csv test splits)."""

from collections import Counter

import pytest
from PIL import Image

from ranking_reg.data.splits import SplitView, stratified_split


def test_stratified_split_holds_out_the_fraction_of_every_class():
    targets = [0] * 10 + [1] * 5 + [2] * 1 + [3] * 2
    kept, held = stratified_split(targets, 0.3, seed=4)
    assert sorted(kept + held) == list(range(len(targets)))
    # round(0.3 n) held out, never a class's last image: 10 -> 3, 5 -> 2 (1.5 rounds up),
    # 1 -> 0 (a singleton stays), 2 -> 1 (0.6 rounds to 1, one left)
    held_counts = Counter(targets[i] for i in held)
    assert [held_counts[c] for c in range(4)] == [3, 2, 0, 1]
    assert all(targets[i] in (0, 1, 3) for i in held)


def test_stratified_split_is_seeded():
    targets = [c for c in range(5) for _ in range(8)]
    assert stratified_split(targets, 0.25, seed=1) == stratified_split(targets, 0.25, seed=1)
    assert stratified_split(targets, 0.25, seed=1) != stratified_split(targets, 0.25, seed=2)
    with pytest.raises(ValueError):
        stratified_split(targets, 1.0)


def test_stratified_split_with_fraction_zero_keeps_everything():
    targets = [0] * 10 + [1] * 5 + [2] * 1
    assert stratified_split(targets, 0.0, seed=3) == (list(range(16)), [])
    with pytest.raises(ValueError):
        stratified_split(targets, -0.1)


class _Base:
    samples = [("a.jpg", 0), ("b.jpg", 1), ("c.jpg", 1)]
    classes = ["x", "y"]

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return Image.new("RGB", (4, 4), (i, 0, 0)), self.samples[i][1]

    def load_image(self, i):
        return self[i][0]


def test_split_view_keeps_imagefolder_attributes_and_positions():
    view = SplitView(_Base(), [2, 0], transform=lambda im: im.getpixel((0, 0))[0])
    assert view.samples == [("c.jpg", 1), ("a.jpg", 0)] and view.targets == [1, 0]
    assert view.classes == ["x", "y"] and len(view) == 2
    assert view[0] == (2, 1, 0) and view[(1, 123)] == (0, 0, 1)
    assert view.load_image(0).getpixel((0, 0))[0] == 2
