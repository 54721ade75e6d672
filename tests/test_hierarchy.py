"""Class hierarchies (FGVC-Aircraft, NABirds) and the hierarchy-aware metrics."""

from __future__ import annotations

import math
import os

import dataset_fixtures as fx
import pytest
import torch

from ranking_reg.data.datamodule import FGVRDataModule
from ranking_reg.data.hierarchy import (
    ClassHierarchy,
    aircraft_hierarchy,
    build_hierarchy,
    nabirds_hierarchy,
)
from ranking_reg.data.registry import build_dataset
from ranking_reg.metrics.hierarchy import hierarchy_metrics
from ranking_reg.utils.errors import DataError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def aircraft_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("aircraft"))
    fx.make_aircraft(root, per_class=2)
    return root


@pytest.fixture(scope="module")
def nabirds_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nabirds"))
    fx.make_nabirds(root, per_class=2, leaves=fx.NABIRDS_ALL_LEAVES)
    return root


# -- parsing ---------------------------------------------------------------------------------------


def test_aircraft_hierarchy_of_each_level(aircraft_root):
    # variants 737-300, 737-800, F/A-18, Cessna 172, DC-3
    variant = aircraft_hierarchy(aircraft_root)
    assert variant == ClassHierarchy(
        ("family", "manufacturer"),
        {"family": [0, 0, 1, 2, 3], "manufacturer": [0, 0, 2, 1, 2]},
        {
            "family": ["Boeing 737", "F/A-18", "Cessna 172", "DC-3"],
            "manufacturer": ["Boeing", "Cessna", "McDonnell Douglas"],
        },
    )
    assert variant.num_classes == 5
    assert variant.parent_names("manufacturer")[4] == "McDonnell Douglas"
    family = aircraft_hierarchy(aircraft_root, level="family")
    assert family.levels == ("manufacturer",)
    assert family.parents == {"manufacturer": [0, 2, 1, 2]}
    assert aircraft_hierarchy(aircraft_root, level="manufacturer") is None
    assert build_hierarchy("aircraft", aircraft_root, level="variant", crop_banner=True) == variant


def test_aircraft_hierarchy_agrees_with_the_coarse_level_datasets(aircraft_root):
    """The parent of each image's variant is the label the family/manufacturer lists give it."""
    hierarchy = aircraft_hierarchy(aircraft_root)
    for split in ("train", "test"):
        variants = build_dataset("aircraft", aircraft_root, split)
        for level in hierarchy.levels:
            coarse = build_dataset("aircraft", aircraft_root, split, level=level)
            assert [p for p, _ in coarse.samples] == [p for p, _ in variants.samples]
            assert coarse.classes == hierarchy.names[level]
            assert coarse.targets == [hierarchy.parents[level][y] for y in variants.targets]


def _edit(path: str, old: str, new: str, count: int = 1) -> None:
    with open(path) as f:
        text = f.read()
    assert old in text
    with open(path, "w") as f:
        f.write(text.replace(old, new, count))


def test_aircraft_variant_in_two_families_is_a_data_error(tmp_path):
    fx.make_aircraft(str(tmp_path), per_class=2)
    base = tmp_path / "fgvc-aircraft-2013b" / "data"
    # the test image of 737-800 (the 4th image) moves to the family DC-3
    _edit(str(base / "images_family_test.txt"), "1000028 Boeing 737", "1000028 DC-3")
    with pytest.raises(DataError, match="not a tree.*'737-800'.*'Boeing 737'.*'DC-3'"):
        aircraft_hierarchy(str(tmp_path))
    _edit(str(base / "images_family_test.txt"), "1000028 DC-3", "1000028 Boeing 737")
    assert aircraft_hierarchy(str(tmp_path)).num_classes == 5
    # 737-800 (both images) made by Cessna: each variant still has one manufacturer, but the
    # family Boeing 737 now has two
    _edit(str(base / "images_manufacturer_trainval.txt"), "1000021 Boeing", "1000021 Cessna")
    _edit(str(base / "images_manufacturer_test.txt"), "1000028 Boeing", "1000028 Cessna")
    with pytest.raises(DataError, match="not a tree.*family 'Boeing 737'.*'Boeing'.*'Cessna'"):
        aircraft_hierarchy(str(tmp_path))
    with open(base / "variants.txt", "a") as f:
        f.write("747-400\n")  # a variant without images: its family is unknown
    with pytest.raises(DataError, match=r"variant '747-400' of .*variants.txt has no image"):
        aircraft_hierarchy(str(tmp_path))
    os.remove(base / "images_manufacturer_test.txt")
    with pytest.raises(DataError, match="images_manufacturer_test.txt does not exist"):
        aircraft_hierarchy(str(tmp_path))


def test_nabirds_hierarchy_parent_and_top_level_group(nabirds_root):
    # leaves 295 Bushtit, 313 Common Redpoll, 817 House Finch (Adult Male),
    # 900 Mallard (Breeding male), 930 Canada Goose
    assert nabirds_hierarchy(nabirds_root) == ClassHierarchy(
        ("parent", "group"),
        {"parent": [0, 2, 2, 3, 1], "group": [0, 0, 0, 1, 1]},
        {
            "parent": ["Perching Birds", "Ducks, Geese, and Swans", "Finches", "Mallard"],
            "group": ["Perching Birds", "Ducks, Geese, and Swans"],
        },
    )
    classes = build_dataset("nabirds", nabirds_root, "train").classes
    assert classes == [fx.NABIRDS_CLASSES[c] for c in fx.NABIRDS_ALL_LEAVES]


def test_nabirds_default_fixture_has_only_its_three_leaves(tmp_path):
    fx.make_nabirds(str(tmp_path), per_class=2)
    assert nabirds_hierarchy(str(tmp_path)) == ClassHierarchy(
        ("parent", "group"),
        {"parent": [0, 1, 1], "group": [0, 0, 0]},
        {"parent": ["Perching Birds", "Finches"], "group": ["Perching Birds"]},
    )


def test_nabirds_hierarchy_errors_name_the_file(tmp_path):
    fx.make_nabirds(str(tmp_path), per_class=2)
    tree = str(tmp_path / "nabirds" / "hierarchy.txt")
    _edit(tree, "313 22\n", "")
    with pytest.raises(DataError, match=r"class id 313 has images but no line in .*hierarchy.txt"):
        nabirds_hierarchy(str(tmp_path))
    _edit(tree, "1 0\n", "1 22\n313 22\n")  # 1 -> 22 -> 1
    with pytest.raises(DataError, match=r"hierarchy.txt has a cycle"):
        nabirds_hierarchy(str(tmp_path))
    _edit(tree, "1 22\n", "1 x\n")
    with pytest.raises(DataError, match=r"line 1 of .*hierarchy.txt \(1 x\)"):
        nabirds_hierarchy(str(tmp_path))
    os.remove(tree)
    with pytest.raises(DataError, match=r"class hierarchy .*hierarchy.txt does not exist"):
        nabirds_hierarchy(str(tmp_path))


def test_class_hierarchy_validates_and_relabels_a_subset():
    h = ClassHierarchy(
        ("a", "b"), {"a": [0, 1, 1, 2], "b": [0, 0, 0, 1]}, {"a": list("xyz"), "b": list("PQ")}
    )
    sub = h.subset([2, 3])
    assert sub.parents == {"a": [1, 2], "b": [0, 1]} and sub.names == h.names
    with pytest.raises(ValueError, match="parent id 3"):
        ClassHierarchy(("a",), {"a": [0, 3]}, {"a": ["x", "y"]})
    with pytest.raises(ValueError, match="same non-zero number"):
        ClassHierarchy(("a", "b"), {"a": [0, 0], "b": [0]}, {"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match="names has the levels"):
        ClassHierarchy(("a",), {"a": [0]}, {"b": ["x"]})


# -- the datamodule --------------------------------------------------------------------------------


def _datamodule(name: str, root: str | None, **options) -> FGVRDataModule:
    dm = FGVRDataModule(
        name,
        root,
        batch_size=4,
        samples_per_class=2,
        img_size=16,
        num_workers=0,
        val_fraction=0,
        **options,
    )
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("classes", ["all", "first_half", "second_half"])
@pytest.mark.parametrize("imbalance_ratio", [None, 2.0])
def test_datamodule_hierarchy_follows_the_class_subset(
    aircraft_root, nabirds_root, classes, imbalance_ratio
):
    for name, root in (("aircraft", aircraft_root), ("nabirds", nabirds_root)):
        full = build_hierarchy(name, root)
        all_classes = build_dataset(name, root, "test").classes
        dm = _datamodule(name, root, classes=classes, imbalance_ratio=imbalance_ratio)
        h = dm.class_hierarchy
        assert h is not None and h.num_classes == dm.num_classes
        # each kept class, found by name in the full dataset, keeps its parents
        for new, class_name in enumerate(dm.test_dataset.classes):
            old = all_classes.index(class_name)
            for level in full.levels:
                assert h.parent_names(level)[new] == full.parent_names(level)[old]
                assert h.parents[level][new] == full.parents[level][old]
    # by hand: the second half of the 5 NABirds leaves is House Finch, Mallard, Canada Goose
    if classes == "second_half":
        assert dm.class_hierarchy.parents == {"parent": [2, 3, 1], "group": [0, 1, 1]}


def test_datamodule_hierarchy_by_dataset(aircraft_root):
    assert _datamodule("digits", None).class_hierarchy is None
    family = _datamodule("aircraft", aircraft_root, level="family").class_hierarchy
    assert family.levels == ("manufacturer",) and family.num_classes == 4
    assert _datamodule("aircraft", aircraft_root, level="manufacturer").class_hierarchy is None


# -- the metrics -----------------------------------------------------------------------------------


def reference_metrics(predictions: list[int], labels: list[int], h: ClassHierarchy) -> dict:
    """Straight from the definitions of ranking_reg.metrics.hierarchy, one sample at a time."""
    out = {}
    for level in h.levels:
        parent = h.parents[level]
        same = [parent[p] == parent[y] for p, y in zip(predictions, labels, strict=True)]
        mistakes = [s for s, p, y in zip(same, predictions, labels, strict=True) if p != y]
        out[f"top1@{level}"] = sum(same) / len(same) if same else math.nan
        out[f"mistakes_within@{level}"] = sum(mistakes) / len(mistakes) if mistakes else math.nan
    return out


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-12) for k in a
    )


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_the_reference_on_random_predictions(seed):
    g = torch.Generator().manual_seed(seed)
    c = int(torch.randint(2, 30, (1,), generator=g))
    fine = torch.randint(0, max(1, c // 3), (c,), generator=g).tolist()
    coarse_of_fine = torch.randint(0, 3, (max(fine) + 1,), generator=g).tolist()
    h = ClassHierarchy(
        ("mid", "top"),
        {"mid": fine, "top": [coarse_of_fine[f] for f in fine]},
        {"mid": [f"m{i}" for i in range(max(fine) + 1)], "top": ["t0", "t1", "t2"]},
    )
    n = int(torch.randint(1, 300, (1,), generator=g))
    labels = torch.randint(0, c, (n,), generator=g)
    # right about half of the time, so mistakes and hits both occur
    predictions = torch.where(
        torch.rand(n, generator=g) < 0.5, labels, torch.randint(0, c, (n,), generator=g)
    )
    got = hierarchy_metrics(predictions, labels, h)
    assert _close(got, reference_metrics(predictions.tolist(), labels.tolist(), h))


def test_metrics_by_hand_on_the_aircraft_hierarchy(aircraft_root):
    h = aircraft_hierarchy(aircraft_root)  # families [0,0,1,2,3], manufacturers [0,0,2,1,2]
    labels = torch.tensor([0, 0, 1, 2, 4, 3])
    predictions = torch.tensor([0, 1, 0, 4, 3, 3])
    # right: samples 0 and 5; mistakes: 0->1 (same family), 1->0 (same family),
    # 2->4 (F/A-18 vs DC-3: other family, same manufacturer), 4->3 (DC-3 vs Cessna: neither)
    got = hierarchy_metrics(predictions, labels, h)
    assert got == {
        "top1@family": 4 / 6,
        "mistakes_within@family": 2 / 4,
        "top1@manufacturer": 5 / 6,
        "mistakes_within@manufacturer": 3 / 4,
    }
    perfect = hierarchy_metrics(labels, labels, h)
    assert perfect["top1@family"] == 1.0 and math.isnan(perfect["mistakes_within@family"])
    empty = hierarchy_metrics(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), h)
    assert all(math.isnan(v) for v in empty.values())
    with pytest.raises(ValueError, match="outside 0..4"):
        hierarchy_metrics(torch.tensor([5]), torch.tensor([0]), h)


# -- end to end -----------------------------------------------------------------------------------


def test_a_tiny_aircraft_run_writes_the_hierarchy_metrics(tmp_path):
    import json

    from conftest import TINY, compose_config

    from ranking_reg.train import run

    fx.make_aircraft(str(tmp_path / "data"), per_class=4)
    overrides = [
        *TINY,
        "data=aircraft",
        f"data.root={tmp_path / 'data'}",
        "data.img_size=32",
        "data.batch_size=4",
        "data.samples_per_class=2",
        "data.val_fraction=0",
        "data.num_workers=0",
        "metrics.knn.gallery=none",
    ]
    metrics = run(compose_config(overrides, output_dir=tmp_path / "run"))
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics, nan_ok=True)
    levels = ("family", "manufacturer")
    assert {f"test/{m}@{lvl}" for m in ("top1", "mistakes_within") for lvl in levels} <= set(
        on_disk
    )
    # a right variant has the right family, a right family the right manufacturer
    acc, family, maker = (on_disk[f"test/{k}"] for k in ("acc", "top1@family", "top1@manufacturer"))
    assert 0.0 <= acc <= family <= maker <= 1.0
