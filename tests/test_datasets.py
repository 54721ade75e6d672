"""The dataset parsers, ImageListDataset and build_dataset, on tiny trees in the real layouts."""

from __future__ import annotations

import os
import shutil
import warnings

import dataset_fixtures as fx
import numpy as np
import pytest
import torch
from PIL import Image

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.registry import (
    REGISTRY,
    accepted_options,
    build_dataset,
    dataset_names,
    register_dataset,
)
from ranking_reg.utils.errors import ConfigError, DataError

torch.set_num_threads(1)

MAKERS = {
    "aircraft": fx.make_aircraft,
    "flowers102": fx.make_flowers102,
    "cars": fx.make_cars,
    "dogs": fx.make_dogs,
    "nabirds": fx.make_nabirds,
}
FOLDERS = {
    "aircraft": "fgvc-aircraft-2013b/data",
    "flowers102": "flowers-102",
    "cars": "stanford_cars",
    "dogs": "stanford_dogs",
    "nabirds": "nabirds",
}
WITH_BOXES = ("aircraft", "cars", "dogs", "nabirds")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Every dataset built once under its own root: name -> (root, Expected)."""
    out = {}
    for name, make in MAKERS.items():
        root = str(tmp_path_factory.mktemp(name))
        out[name] = (root, make(root))
    return out


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- every parser against its fixture -------------------------------------------------------------


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_parser_reads_the_real_layout(trees, name, split):
    root, expected = trees[name]
    ds = build_dataset(name, root, split)
    assert ds.samples == expected.splits[split]
    assert ds.targets == [y for _, y in expected.splits[split]]
    assert ds.classes == expected.classes
    assert ds.class_to_idx == {c: i for i, c in enumerate(expected.classes)}
    assert len(ds) == len(expected.splits[split])
    image, label = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert label == expected.splits[split][0][1]


@pytest.mark.parametrize("name", WITH_BOXES)
def test_use_bbox_crops_to_the_annotated_box(trees, name):
    root, expected = trees[name]
    ds = build_dataset(
        name, root, "test", use_bbox=True, **({"crop_banner": False} if name == "aircraft" else {})
    )
    for i, (path, _) in enumerate(ds.samples):
        box = expected.boxes[path]
        with Image.open(path) as im:
            reference = im.convert("RGB").crop(tuple(int(v) for v in box))
        assert ds.load_image(i).size == reference.size
        assert np.array_equal(pixels(ds.load_image(i)), pixels(reference))


def test_torchvision_parsers_agree_where_they_exist(trees, monkeypatch):
    """torchvision reads aircraft/flowers/cars (no boxes); its lists are our reference."""
    from torchvision.datasets import FGVCAircraft, Flowers102, StanfordCars

    root, _ = trees["aircraft"]
    for level in ("variant", "family", "manufacturer"):
        for split, tv_split in (("train", "trainval"), ("test", "test")):
            tv = FGVCAircraft(root, split=tv_split, annotation_level=level)
            ours = build_dataset("aircraft", root, split, level=level)
            assert ours.samples == list(zip(tv._image_files, tv._labels, strict=True))
            assert ours.classes == tv.classes
    root, _ = trees["flowers102"]
    # torchvision insists on the md5 of the real .mat files, which a fixture cannot have.
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)
    tv_lists = {s: Flowers102(root, split=s) for s in ("train", "val", "test")}
    tv = {
        s: [(str(p), y) for p, y in zip(d._image_files, d._labels, strict=True)]
        for s, d in tv_lists.items()
    }
    assert build_dataset("flowers102", root, "train").samples == tv["train"] + tv["val"]
    assert build_dataset("flowers102", root, "test").samples == tv["test"]
    root, _ = trees["cars"]
    for split in ("train", "test"):
        tv = StanfordCars(root, split=split)
        ours = build_dataset("cars", root, split)
        assert ours.samples == [(p, int(y)) for p, y in tv._samples]
        assert ours.classes == tv.classes


def test_aircraft_levels_and_names_with_spaces_and_slashes(trees):
    root, _ = trees["aircraft"]
    variant = build_dataset("aircraft", root, "train")
    assert len(variant.classes) == 5 and "F/A-18" in variant.classes
    assert variant.classes[variant.targets[-1]] == "DC-3"
    maker = build_dataset("aircraft", root, "train", level="manufacturer")
    assert maker.classes == fx.AIRCRAFT_MANUFACTURERS
    # variants F/A-18 (2) and DC-3 (4) are both McDonnell Douglas (2)
    by_variant = dict(zip(variant.samples, maker.targets, strict=True))
    assert {by_variant[s] for s in variant.samples if s[1] in (2, 4)} == {2}
    with pytest.raises(ConfigError, match="level"):
        build_dataset("aircraft", root, "train", level="model")


def test_aircraft_banner_is_cropped_by_default(trees):
    root, expected = trees["aircraft"]
    path = expected.splits["train"][0][0]
    with Image.open(path) as im:
        full = im.convert("RGB")
    cropped = build_dataset("aircraft", root, "train").load_image(0)
    assert full.size == (40, 50) and cropped.size == (40, 30)
    assert np.array_equal(pixels(cropped), pixels(full.crop((0, 0, 40, 30))))
    kept = build_dataset("aircraft", root, "train", crop_banner=False).load_image(0)
    assert np.array_equal(pixels(kept), pixels(full))


def test_cars_original_single_file_layout(tmp_path):
    expected = fx.make_cars(str(tmp_path), layout="original")
    for split in ("train", "test"):
        ds = build_dataset("cars", str(tmp_path), split, use_bbox=True)
        assert ds.samples == expected.splits[split]
        assert ds.classes == fx.CAR_NAMES
        assert ds.boxes == {p: expected.boxes[p] for p, _ in ds.samples}


def test_dogs_lists_under_lists_folder_and_box_union(tmp_path):
    expected = fx.make_dogs(str(tmp_path), lists_subdir=True)
    ds = build_dataset("dogs", str(tmp_path), "test", use_bbox=True)
    assert ds.samples == expected.splits["test"]
    assert ds.classes == ["Chihuahua", "Japanese_spaniel", "African_hunting_dog"]
    two_dogs = ds.samples[0][0]  # k == 1: two boxes, (2,3,20,25) and (15,1,38,12)
    assert ds.boxes[two_dogs] == (2.0, 1.0, 39.0, 26.0)
    shutil.rmtree(tmp_path / "stanford_dogs" / "Annotation")
    with pytest.raises(DataError, match="Annotation"):
        build_dataset("dogs", str(tmp_path), "test", use_bbox=True)


def test_nabirds_sparse_ids_map_to_leaves_in_id_order(trees):
    root, expected = trees["nabirds"]
    ds = build_dataset("nabirds", root, "train")
    assert ds.classes == ["Bushtit", "Common Redpoll", "House Finch (Adult Male)"]
    for path, label in ds.samples:
        class_id = int(os.path.basename(os.path.dirname(path)))
        assert label == fx.NABIRDS_LEAVES.index(class_id)


# -- ImageListDataset: decode_size, corrupt files, transform --------------------------------------


def test_decode_size_uses_reduced_jpeg_decoding(tmp_path):
    path = fx.write_gradient_jpeg(str(tmp_path / "big.jpg"), (400, 320))
    with Image.open(path) as im:
        full = im.convert("RGB")
    fast = ImageListDataset([(path, 0)], ["a"], decode_size=64).load_image(0)
    # min(400, 320) / 64 = 5 -> libjpeg scale 1/4 -> 100 x 80, still >= 64 on the short side
    assert fast.size == (100, 80)
    reference = full.resize(fast.size, Image.BILINEAR)
    assert np.abs(pixels(fast) - pixels(reference)).mean() < 3
    exact = ImageListDataset([(path, 0)], ["a"], decode_size=300).load_image(0)
    assert np.array_equal(pixels(exact), pixels(full))  # 320 / 300 < 2: no reduction


def test_decode_size_rescales_boxes_and_banner(tmp_path):
    path = fx.write_gradient_jpeg(str(tmp_path / "big.jpg"), (400, 320))
    box = (40.0, 40.0, 360.0, 296.0)  # 320 x 256: 256 / 64 = 4 -> scale 1/4
    with Image.open(path) as im:
        reference = im.convert("RGB").crop((40, 40, 360, 296))
    fast = ImageListDataset([(path, 0)], ["a"], boxes={path: box}, decode_size=64).load_image(0)
    assert fast.size == (80, 64) and min(fast.size) >= 64
    assert np.abs(pixels(fast) - pixels(reference.resize(fast.size, Image.BILINEAR))).mean() < 3
    banner = ImageListDataset([(path, 0)], ["a"], crop_bottom=20, decode_size=64).load_image(0)
    assert banner.size == (100, 75)  # 300 rows left of 320 -> 75 at scale 1/4


def test_decode_size_leaves_non_jpeg_alone(tmp_path):
    path = str(tmp_path / "big.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)).save(path)
    image = ImageListDataset([(path, 0)], ["a"], decode_size=32).load_image(0)
    assert image.size == (300, 200)


@pytest.fixture
def broken(tmp_path):
    good = [fx.write_jpeg(str(tmp_path / f"ok{i}.jpg"), seed=i) for i in range(3)]
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    truncated = tmp_path / "truncated.jpg"
    data = open(fx.write_jpeg(str(tmp_path / "whole.jpg"), (200, 150), seed=9), "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    samples = [(good[0], 0), (str(garbage), 1), (str(truncated), 1), (good[1], 0), (good[2], 1)]
    return samples


@pytest.mark.parametrize("index,name", [(1, "garbage.jpg"), (2, "truncated.jpg")])
def test_corrupt_image_raises_data_error_naming_it(broken, index, name):
    ds = ImageListDataset(broken, ["a", "b"])
    with pytest.raises(DataError, match=name) as info:
        ds[index]
    assert "skip_corrupt" in str(info.value)


def test_skip_corrupt_warns_once_per_file_and_returns_next_readable(broken):
    ds = ImageListDataset(broken, ["a", "b"], skip_corrupt=True, transform=lambda im: im.size)
    with pytest.warns(RuntimeWarning) as record:
        size, label = ds[1]
    assert (size, label) == ((40, 30), 0)  # sample 3, the next readable one
    assert sorted(os.path.basename(str(w.message).split(":")[0].split()[-1]) for w in record) == [
        "garbage.jpg",
        "truncated.jpg",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[2] == ((40, 30), 0)  # already reported: no second warning
    assert ds[4] == ((40, 30), 1)


def test_transform_and_subset_keep_the_contract(trees):
    root, _ = trees["flowers102"]
    ds = build_dataset("flowers102", root, "test", transform=lambda im: im.size)
    assert ds[0] == ((40, 30), ds.targets[0])
    ds.transform = None
    assert isinstance(ds[0][0], Image.Image)
    sub = ds.subset([5, 1])
    assert sub.samples == [ds.samples[5], ds.samples[1]] and sub.classes == ds.classes
    with pytest.raises(DataError, match="outside"):
        ImageListDataset([("x.jpg", 3)], ["a", "b"])


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAKERS)
def test_missing_dataset_folder_names_path_and_prepare_command(tmp_path, name):
    with pytest.raises(DataError) as info:
        build_dataset(name, str(tmp_path), "train")
    message = str(info.value)
    assert name in message
    assert os.path.join(str(tmp_path), FOLDERS[name]) in message
    assert f"python -m ranking_reg.data.prepare {name} --root {tmp_path}" in message


@pytest.mark.parametrize("name", MAKERS)
def test_list_naming_a_missing_image_names_both_files(tmp_path, name):
    expected = MAKERS[name](str(tmp_path))
    missing = expected.splits["test"][-1][0]
    os.remove(missing)
    with pytest.raises(DataError) as info:
        build_dataset(name, str(tmp_path), "test")
    message = str(info.value)
    assert missing in message
    list_files = {
        "aircraft": "images_variant_test.txt",
        "flowers102": "setid.mat",
        "cars": "cars_test_annos_withlabels.mat",
        "dogs": "test_list.mat",
        "nabirds": "images.txt",
    }
    assert os.path.join(expected.folder, list_files[name]) in message


def test_missing_list_file_is_named(tmp_path):
    expected = fx.make_aircraft(str(tmp_path))
    os.remove(os.path.join(expected.folder, "images_variant_test.txt"))
    with pytest.raises(DataError, match="images_variant_test.txt"):
        build_dataset("aircraft", str(tmp_path), "test")


def test_unknown_option_dataset_and_split_raise_config_error(trees):
    root, _ = trees["flowers102"]
    with pytest.raises(ConfigError, match="'use_bbox'.*flowers102|flowers102.*'use_bbox'"):
        build_dataset("flowers102", root, "train", use_bbox=True)
    with pytest.raises(ConfigError, match="crop_banenr"):
        build_dataset("aircraft", root, "train", crop_banenr=False)
    with pytest.raises(ConfigError, match="imagenet"):
        build_dataset("imagenet", root, "train")
    with pytest.raises(ConfigError, match="split"):
        build_dataset("flowers102", root, "val")


def test_register_dataset_and_option_check_for_external_builders(tmp_path):
    calls = []

    def build_toy(root, split, transform=None, size: int = 3):
        calls.append((root, split, size))
        return ImageListDataset([], ["x"])

    register_dataset("toy", build_toy)
    try:
        assert "toy" in dataset_names()
        build_dataset("toy", tmp_path, "test", size=5)
        assert calls == [(str(tmp_path), "test", 5)]
        assert accepted_options("toy") == ["size"]
        with pytest.raises(ConfigError, match="'colour'"):
            build_dataset("toy", tmp_path, "test", colour=1)
    finally:
        REGISTRY.pop("toy")
    assert {"aircraft", "nabirds", "flowers102", "cars", "dogs", "folder", "csv"} <= set(
        dataset_names()
    )


# -- bring-your-own: folder and csv ---------------------------------------------------------------


def test_folder_dataset_splits_each_class_reproducibly(tmp_path):
    paths = fx.make_folder(str(tmp_path), {"cat": 10, "dog": 5, "eel": 1})
    train = build_dataset("folder", str(tmp_path), "train")
    test = build_dataset("folder", str(tmp_path), "test")
    assert train.classes == test.classes == ["cat", "dog", "eel"]
    counts = {
        s: np.bincount(d.targets, minlength=3).tolist()
        for s, d in (("train", train), ("test", test))
    }
    assert counts == {"train": [8, 4, 1], "test": [2, 1, 0]}  # round(n * 0.2), >= 1 train
    assert sorted(p for p, _ in train.samples + test.samples) == sorted(sum(paths.values(), []))
    assert build_dataset("folder", str(tmp_path), "test").samples == test.samples
    other = build_dataset("folder", str(tmp_path), "test", split_seed=1)
    assert other.samples != test.samples
    assert len(build_dataset("folder", str(tmp_path), "test", test_fraction=0.5)) == 8


def test_folder_dataset_with_train_and_test_subfolders(tmp_path):
    fx.make_folder(str(tmp_path), {"a": 4, "b": 3}, presplit=True)
    train = build_dataset("folder", str(tmp_path), "train")
    test = build_dataset("folder", str(tmp_path), "test")
    assert train.classes == ["a", "b"]
    assert train.targets == [0, 0, 1, 1] and test.targets == [0, 0, 1]
    assert all(f"{os.sep}train{os.sep}" in p for p, _ in train.samples)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("folder", str(tmp_path / "nope"), "train")


def test_csv_list_with_split_column_names_and_ints(tmp_path):
    imgs = [fx.write_jpeg(str(tmp_path / "img" / f"{i}.jpg"), seed=i) for i in range(6)]
    rel = [os.path.relpath(p, tmp_path) for p in imgs]
    rows = [
        (rel[0], "zebra", "train"),
        (imgs[1], "ant", "train"),
        (rel[2], "zebra", "test"),
        (rel[3], "ant", "trainval"),
        (rel[4], "moth", "test"),
        (rel[5], "moth", "train"),
    ]
    fx.write_csv(str(tmp_path / "lists" / "all.csv"), rows)
    train = build_dataset("csv", str(tmp_path), "train", list_file="lists/all.csv")
    assert train.classes == ["ant", "moth", "zebra"]
    assert train.samples == [(imgs[0], 2), (imgs[1], 0), (imgs[3], 0), (imgs[5], 1)]
    test = build_dataset("csv", str(tmp_path), "test", list_file=str(tmp_path / "lists/all.csv"))
    assert test.samples == [(imgs[2], 2), (imgs[4], 1)]
    # integer labels, sparse: numeric order, mapped to 0..C-1; no header row
    fx.write_csv(
        str(tmp_path / "ints.csv"),
        [(rel[0], 7, "train"), (rel[1], 3, "test"), (rel[2], 10, "train")],
        header=None,
    )
    ints = build_dataset("csv", str(tmp_path), "train", list_file="ints.csv")
    assert ints.classes == ["3", "7", "10"] and ints.targets == [1, 2]


def test_csv_per_split_files_and_fraction_split(tmp_path):
    imgs = [fx.write_jpeg(str(tmp_path / f"{i}.jpg"), seed=i) for i in range(6)]
    fx.write_csv(
        str(tmp_path / "train.csv"),
        [(p, i % 2) for i, p in enumerate(imgs[:4])],
        header="path,label",
    )
    fx.write_csv(str(tmp_path / "test.csv"), [(imgs[4], 0), (imgs[5], 2)], header="path,label")
    train = build_dataset("csv", str(tmp_path), "train", list_file="{split}.csv")
    test = build_dataset("csv", str(tmp_path), "test", list_file="{split}.csv")
    assert train.classes == test.classes == ["0", "1", "2"]
    assert test.targets == [0, 2] and train.targets == [0, 1, 0, 1]
    whole = build_dataset("csv", str(tmp_path), "test", list_file="train.csv", test_fraction=0.5)
    assert sorted(whole.targets) == [0, 1]


def test_csv_errors_name_the_files(tmp_path):
    with pytest.raises(ConfigError, match="list_file"):
        build_dataset("csv", str(tmp_path), "train")
    with pytest.raises(DataError, match="nope.csv"):
        build_dataset("csv", str(tmp_path), "train", list_file="nope.csv")
    img = fx.write_jpeg(str(tmp_path / "a.jpg"))
    list_file = fx.write_csv(str(tmp_path / "l.csv"), [(img, 0, "train"), ("gone.jpg", 1, "train")])
    with pytest.raises(DataError) as info:
        build_dataset("csv", str(tmp_path), "train", list_file="l.csv")
    assert list_file in str(info.value) and os.path.join(str(tmp_path), "gone.jpg") in str(
        info.value
    )
    fx.write_csv(str(tmp_path / "bad.csv"), [(img, 0, "holdout")])
    with pytest.raises(DataError, match="holdout"):
        build_dataset("csv", str(tmp_path), "train", list_file="bad.csv")


# -- conf/data/*.yaml -----------------------------------------------------------------------------

CONF = os.path.join(os.path.dirname(__file__), os.pardir, "ranking_reg", "conf")


def _datamodule_keys() -> set[str]:
    """The FGVRDataModule's own arguments; every other data key goes to the parser."""
    import inspect

    from ranking_reg.data import FGVRDataModule

    params = inspect.signature(FGVRDataModule.__init__).parameters
    return {"_target_"} | {n for n in params if n not in ("self", "dataset_options")}


DATAMODULE_KEYS = _datamodule_keys()


# every preset in conf/data (the _-prefixed files are shared bases, not presets)
PRESETS = sorted(
    f.removesuffix(".yaml")
    for f in os.listdir(os.path.join(CONF, "data"))
    if f.endswith(".yaml") and not f.startswith("_")
)


def test_data_presets_compose_and_name_only_accepted_options():
    from hydra import compose, initialize_config_dir

    base = ["aircraft", "cars", "digits", "dogs", "flowers102", "nabirds"]
    assert set(base + [f"{b}_lt" for b in base] + ["csv", "folder"]) <= set(PRESETS)
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        # One composition, each preset in its own package (one each takes ~1 s); the
        # ordinary `+data=<preset>` gives the same node, shown for a preset with a defaults list.
        every = compose(config_name=None, overrides=[f"+data@{p}={p}" for p in PRESETS])
        single = compose(config_name=None, overrides=["+data=aircraft_lt"]).data
    assert single == every.aircraft_lt
    for preset in PRESETS:
        cfg = every[preset]
        assert DATAMODULE_KEYS <= set(cfg), preset
        options = set(cfg) - DATAMODULE_KEYS
        assert options <= set(accepted_options(cfg.name)), preset
        assert bool(options) == (cfg.name != "digits"), preset  # digits: embedded, no options
        assert cfg.imbalance_ratio == (10 if preset.endswith("_lt") else None), preset
        assert cfg.name == preset.removesuffix("_lt"), preset
