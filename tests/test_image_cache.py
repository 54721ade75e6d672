"""The prepared image cache (``data.cache_size``): pixels, freshness, one writer, prepare."""

from __future__ import annotations

import multiprocessing
import os

import dataset_fixtures as fx
import numpy as np
import pytest
from PIL import Image

from ranking_reg.data import prepare as prep
from ranking_reg.data.image_cache import MANIFEST, build_cache
from ranking_reg.data.registry import build_dataset
from ranking_reg.utils.errors import ConfigError, DataError


def _smooth_sources(dataset, size=(120, 90)) -> None:
    """Replace the fixture's random-noise JPEGs by smooth ones (JPEG-comparable pixels)."""
    for path, _ in dataset.samples:
        fx.write_gradient_jpeg(path, size)


def _cached_files(folder: str) -> dict[str, int]:
    """Cached JPEG -> mtime_ns, for every file of the cache folder."""
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(folder)
        for f in files
        if f.endswith(".jpg")
    }


def test_cached_images_are_the_cropped_source_resized_same_order(tmp_path):
    fx.make_aircraft(str(tmp_path))
    options = {"crop_banner": True, "use_bbox": True}
    plain = build_dataset("aircraft", tmp_path, "train", **options)
    _smooth_sources(plain)
    cached = build_dataset("aircraft", tmp_path, "train", cache_size=24, progress=False, **options)
    assert cached.samples == plain.samples and cached.targets == plain.targets
    assert len(cached.cache) == len(plain)
    assert all(
        p.startswith(str(tmp_path / ".rr_cache" / "aircraft-24")) for p in cached.cache.values()
    )
    for i in range(len(plain)):
        source = plain.load_image(i)  # boxed + banner-cropped, full resolution
        w, h = source.size
        s = 24 / min(w, h)
        target = (24, round(h * s)) if w <= h else (round(w * s), 24)
        expected = source.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        got = cached.load_image(i)
        assert got.size == target and min(got.size) == 24
        diff = np.abs(np.asarray(got, np.float32) - np.asarray(expected, np.float32))
        assert diff.mean() < 4, (i, diff.mean())  # JPEG q90 4:2:0 of a smooth image


def test_small_images_are_never_upscaled(tmp_path):
    fx.make_folder(str(tmp_path), {"a": 2, "b": 2})  # 40 x 30 JPEGs
    cached = build_dataset("folder", tmp_path, "train", cache_size=64, progress=False)
    assert len(cached.cache) == len(cached)
    assert all(cached.load_image(i).size == (40, 30) for i in range(len(cached)))


def test_changed_source_is_recached_and_unchanged_ones_are_not_rewritten(tmp_path):
    fx.make_folder(str(tmp_path), {"a": 3, "b": 3})
    first = build_dataset("folder", tmp_path, "train", cache_size=16, progress=False)
    folder = first.cache_report.cache_dir
    assert first.cache_report.written == len(first)
    before = _cached_files(folder)
    changed, _ = first.samples[0]
    fx.write_gradient_jpeg(changed, (60, 40))
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a visible change
    again = build_dataset("folder", tmp_path, "train", cache_size=16, progress=False)
    assert (again.cache_report.written, again.cache_report.kept) == (1, len(first) - 1)
    after = _cached_files(folder)
    assert {p: t for p, t in after.items() if p != again.cache[changed]} == {
        p: t for p, t in before.items() if p != first.cache[changed]
    }
    assert again.load_image(0).size == (24, 16)  # the new 60 x 40 source at a shorter side 16
    third = build_dataset("folder", tmp_path, "train", cache_size=16, progress=False)
    assert third.cache_report.written == 0 and _cached_files(folder) == after


def _build_in_process(root, cache_dir, barrier, results) -> None:
    dataset = build_dataset("folder", root, "train", progress=False)
    barrier.wait()
    report = build_cache(dataset, 16, cache_dir, progress=False)
    results.put(report.written)


def test_concurrent_first_use_writes_each_file_once(tmp_path):
    root, cache_dir = str(tmp_path / "data"), str(tmp_path / "cache")
    fx.make_folder(root, {"a": 8, "b": 8})
    n = len(build_dataset("folder", root, "train"))
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_build_in_process, args=(root, cache_dir, barrier, results))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert [w.exitcode for w in workers] == [0, 0]
    written = sorted(results.get(timeout=5) for _ in workers)
    assert written == [0, n]  # one process wrote every file, the other waited and reused them
    assert len(_cached_files(cache_dir)) == n


def test_prepare_cache_size_builds_both_splits(tmp_path, capsys):
    fx.make_folder(str(tmp_path), {"a": 4, "b": 4})
    assert (
        prep.main(["folder", "--root", str(tmp_path), "--cache-size", "16", "--no-progress"]) == 0
    )
    folder = tmp_path / ".rr_cache" / "folder-16"
    assert (folder / MANIFEST).is_file() and len(_cached_files(str(folder))) == 8
    out = capsys.readouterr().out
    assert "folder train:" in out and "folder test:" in out
    train = build_dataset("folder", tmp_path, "train", cache_size=16, progress=False)
    assert train.cache_report.written == 0 and len(train.cache) == len(train)
    with pytest.raises(SystemExit) as exit_info:
        prep.main(["folder", "--root", str(tmp_path), "--cache-size", "0", "--no-progress"])
    assert exit_info.value.code == 2


def test_cache_dir_option_and_the_options_every_image_dataset_lists(tmp_path):
    from ranking_reg.data.registry import accepted_options

    fx.make_folder(str(tmp_path), {"a": 3, "b": 3})
    # what the DataModule passes: its data.* dataset keys, the cache's included
    dataset = build_dataset(
        "folder", tmp_path, "test", cache_size=16, cache_dir=str(tmp_path / ".elsewhere")
    )
    assert len(_cached_files(str(tmp_path / ".elsewhere"))) == len(dataset) > 0
    for name in ("aircraft", "cars", "csv", "dogs", "flowers102", "folder", "nabirds"):
        assert {"cache_size", "cache_dir"} <= set(accepted_options(name)), name
    assert "cache_size" not in accepted_options("digits")


def test_prepare_options_reach_the_dataset(tmp_path):
    from ranking_reg.data.image_cache import parse_option

    assert [parse_option(t) for t in ("use_bbox=true", "a=null", "n=3", "f=0.5", "p=x.csv")] == [
        ("use_bbox", True),
        ("a", None),
        ("n", 3),
        ("f", 0.5),
        ("p", "x.csv"),
    ]
    fx.make_folder(str(tmp_path / "data"), {"a": 4, "b": 4})
    argv = ["folder", "--root", str(tmp_path / "data"), "--cache-size", "16", "--no-progress"]
    argv += ["--cache-dir", str(tmp_path / "c"), "--option", "test_fraction=0.5"]
    assert prep.main(argv) == 0
    test = build_dataset("folder", tmp_path / "data", "test", test_fraction=0.5)
    assert len(test) == 4 and len(_cached_files(str(tmp_path / "c"))) == 8


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "256"])
def test_bad_cache_size_is_a_config_error(tmp_path, bad):
    with pytest.raises(ConfigError, match="data.cache_size"):
        build_dataset("folder", tmp_path, "train", cache_size=bad)


def test_digits_refuse_a_cache():
    with pytest.raises(ConfigError, match="digits does not read image files"):
        build_dataset("digits", None, "train", cache_size=16)


def test_corrupt_source_keeps_todays_behaviour(tmp_path):
    fx.make_folder(str(tmp_path), {"a": 3, "b": 3})
    plain = build_dataset("folder", tmp_path, "train")
    bad = plain.samples[1][0]
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    cached = build_dataset("folder", tmp_path, "train", cache_size=16, progress=False)
    assert cached.cache_report.unreadable == 1 and bad not in cached.cache
    with pytest.raises(DataError, match=os.path.basename(bad)):
        cached.load_image(1)
    skipping = build_dataset(
        "folder", tmp_path, "train", cache_size=16, skip_corrupt=True, progress=False
    )
    assert skipping.cache_report.written == 0  # the unreadable source is not retried
    with pytest.warns(RuntimeWarning, match="skipping unreadable"):
        _, label = skipping[1]
    assert label == skipping.samples[2][1]
