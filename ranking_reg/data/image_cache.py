"""A prepared image cache (``data.cache_size``): every image of a split written once, small.

What it does: on first use, each image of an :class:`ImageListDataset` is decoded, cropped as the
dataset crops it (bounding box, aircraft banner), downscaled so that its *shorter side* is
``cache_size`` pixels (aspect kept; an image already that small or smaller is never upscaled)
and written as a JPEG (quality 90, 4:2:0 chroma) under ``cache_dir``. Later runs and epochs
decode the small files: the entropy decoding of a 256-pixel JPEG costs a fraction of the
original's (docs/PERFORMANCE.md, input pipeline), so a loader worker delivers several times more
images per second. ``cache_size=256`` with ``augment=resize_crop`` is the authors' 256 x 256
pre-resize done once instead of every epoch (the square resize then works on the cached image).

Choices, and why:

- Resampling: a JPEG source is decoded at the largest libjpeg DCT scale (1/2, 1/4, 1/8) that
  keeps the cropped region's shorter side >= ``cache_size`` (``decode_size=cache_size`` of
  :class:`ImageListDataset`, as Pillow's ``thumbnail`` does; half the build time of a 1000 x 750
  photo, 0.5 grey levels from a full-size decode), then ``Image.resize`` with LANCZOS and
  ``reducing_gap=3.0`` (:func:`resize_shorter`): Pillow first shrinks by an integer factor
  while the result stays >= 3x the target, which its documentation calls indistinguishable from
  a full Lanczos resampling.
- Format: JPEG at quality 90 (FFCV's default too) with 4:2:0 chroma, as camera JPEGs: the
  cached image differs from the exact resize by about 2 grey levels on average (tests allow a
  mean of 4). Smaller and faster to decode than q95 (16 vs 24 kB, 0.41 vs 0.55 ms for 341 x 256
  photo-like images on a 2-core EPYC) or 4:4:4 (~30 % slower), and several times faster than a
  PNG: the warm path's speed is the point of the cache.
- Freshness: a cached file is keyed by the source's absolute path, the crop (box, banner) and
  ``cache_size``; ``manifest.json`` in the cache folder records each source's fingerprint, its
  byte size and ``mtime_ns`` (a ``stat``, not a content hash: checking 50,000 images costs
  ~0.1 s). A source whose fingerprint changed is cached again; an unchanged one is never
  rewritten.
- Safety: each file is written to a temporary name and renamed (atomic); the manifest too. One
  process builds while the others wait on ``fcntl.flock`` of ``<cache_dir>/.lock``, so DDP ranks
  or several jobs on one dataset write each file once, whatever launched them (no
  ``torch.distributed`` needed).
- Corrupt or missing sources are not cached: the dataset keeps reading the source for them, so
  they raise the same DataError (or are skipped with ``skip_corrupt``) as without a cache.
- Parallel: a thread pool (Pillow releases the GIL while decoding, resizing and encoding), all
  usable cores by default, with a tqdm progress bar.

``python -m ranking_reg.data.prepare NAME --cache-size S`` (:func:`prepare_cache`) writes it
ahead of time. torchvision has no persistent resized-image cache (its transforms run every
epoch), hence ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from PIL import Image
from tqdm import tqdm

from ranking_reg.utils.errors import ConfigError, DataError
from ranking_reg.utils.io import atomic_writer

log = logging.getLogger(__name__)

QUALITY = 90
SUBSAMPLING = 2  # 4:2:0, as camera JPEGs: decodes ~30 % faster than 4:4:4
RESAMPLE = Image.Resampling.LANCZOS
REDUCING_GAP = 3.0
VERSION = 1  # part of every key: a change of the recipe above invalidates old files
MANIFEST = "manifest.json"
LOCK = ".lock"
_SAVE_EVERY = 1000  # images between manifest saves (an interrupted build keeps its progress)


def check_cache_size(value: Any) -> int | None:
    """``value`` as a positive int, None for off; ConfigError naming ``data.cache_size``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"data.cache_size={value!r}: expects a positive integer (the shorter side in pixels "
            "of the cached images, e.g. 256) or null (no cache)."
        )
    return value


def default_cache_dir(root: str | os.PathLike, name: str, size: int) -> str:
    """``<root>/.rr_cache/<name>-<size>``: next to the data, one folder per dataset and size."""
    base = os.path.abspath(os.path.expanduser(os.fspath(root)))
    return os.path.join(base, ".rr_cache", f"{name}-{size}")


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """``image`` scaled so that its shorter side is ``size`` (aspect kept, never upscaled)."""
    width, height = image.size
    short = min(width, height)
    if short <= size:
        return image
    scale = size / short
    if width == short:
        target = (size, max(1, round(height * scale)))
    else:
        target = (max(1, round(width * scale)), size)
    return image.resize(target, RESAMPLE, reducing_gap=REDUCING_GAP)


def fingerprint(path: str) -> str | None:
    """``"<bytes>:<mtime_ns>"`` of ``path``, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_key(path: str, box: Any, crop_bottom: int, size: int) -> str:
    """The name of a cached image: a hash of what determines its pixels."""
    text = f"v{VERSION}|{os.path.abspath(path)}|{tuple(box) if box else None}|{crop_bottom}|{size}"
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, key[:2], key + ".jpg")


@dataclass
class CacheReport:
    """What :func:`build_cache` did: files written, reused, and sources it could not read."""

    cache_dir: str
    written: int = 0
    kept: int = 0
    unreadable: int = 0


def _read_manifest(cache_dir: str) -> dict[str, str]:
    try:
        with open(os.path.join(cache_dir, MANIFEST), encoding="utf-8") as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(payload, dict) or payload.get("version") != VERSION:
        return {}
    entries = payload.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_manifest(cache_dir: str, entries: dict[str, str]) -> None:
    with atomic_writer(os.path.join(cache_dir, MANIFEST)) as f:
        json.dump({"version": VERSION, "entries": entries}, f, separators=(",", ":"))


@contextlib.contextmanager
def _locked(handle: Any, cache_dir: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``handle`` (``<cache_dir>/.lock``); waits for its holder."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("waiting for another process to finish the image cache in %s", cache_dir)
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def _write_one(dataset: Any, index: int, size: int, target: str) -> bool:
    """Cache sample ``index``; False when its source cannot be read (left to the dataset)."""
    try:
        image = dataset.load_source(index, decode_size=size)
    except DataError:
        return False
    image = resize_shorter(image, size)
    try:
        with atomic_writer(target, "wb") as f:
            image.save(f, format="JPEG", quality=QUALITY, subsampling=SUBSAMPLING)
    except OSError as error:
        raise DataError(
            f"the cached image {target} cannot be written ({error}); free space there, set "
            "data.cache_dir to another folder, or data.cache_size=null to read the originals."
        ) from error
    return True


def _plan(dataset: Any, size: int, cache_dir: str) -> list[tuple[int, str, str, str | None]]:
    """``(index, key, cached file, fingerprint)`` of every sample, in the dataset's order."""
    plan = []
    for index, (path, _) in enumerate(dataset.samples):
        box = dataset.boxes.get(path) if dataset.boxes else None
        key = cache_key(path, box, dataset.crop_bottom, size)
        plan.append((index, key, cache_path(cache_dir, key), fingerprint(path)))
    return plan


def _stale(plan: list, entries: dict[str, str]) -> list:
    """Entries of ``plan`` whose manifest record is missing, outdated or lacks its file."""
    stale = []
    for item in plan:
        _, key, target, print_ = item
        if print_ is None:
            continue  # a missing source: the dataset reports it as without a cache
        recorded = entries.get(key)
        if recorded == "unreadable:" + print_:
            continue
        if recorded != print_ or not os.path.isfile(target):
            stale.append(item)
    return stale


def build_cache(
    dataset: Any,
    size: int,
    cache_dir: str,
    workers: int | None = None,
    progress: bool = True,
    label: str = "images",
) -> CacheReport:
    """Write the missing or outdated cached images of ``dataset``; see the module docstring.

    Sets ``dataset.cache`` (source path -> cached file) for every sample that has one, and
    ``dataset.cache_report``. Returns how many files were written, kept and left uncached
    (unreadable sources).
    """
    size = check_cache_size(size)
    cache_dir = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    plan = _plan(dataset, size, cache_dir)
    report = CacheReport(cache_dir)
    entries = _read_manifest(cache_dir)
    stale = _stale(plan, entries)
    if stale:
        try:
            os.makedirs(cache_dir, exist_ok=True)
            lock = open(os.path.join(cache_dir, LOCK), "a")  # noqa: SIM115 - closed below
        except OSError as error:
            raise DataError(
                f"the image cache folder {cache_dir} cannot be written ({error}); set "
                "data.cache_dir to a writable folder, or data.cache_size=null to read the "
                "originals."
            ) from error
        with lock, _locked(lock, cache_dir):
            entries = _read_manifest(cache_dir)  # another process may have built it meanwhile
            stale = _stale(plan, entries)
            _build(dataset, size, stale, entries, cache_dir, workers, progress, label, report)
    ready = {key for key, value in entries.items() if not value.startswith("unreadable:")}
    dataset.cache = {
        dataset.samples[index][0]: target for index, key, target, _ in plan if key in ready
    }
    report.kept = len(dataset.cache) - report.written
    dataset.cache_report = report
    return report


def _build(
    dataset: Any,
    size: int,
    stale: list,
    entries: dict[str, str],
    cache_dir: str,
    workers: int | None,
    progress: bool,
    label: str,
    report: CacheReport,
) -> None:
    if not stale:
        return
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    workers = max(1, workers or os.cpu_count() or 1)
    bar = tqdm(
        total=len(stale),
        desc=f"caching {label} at {size}px",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(_write_one, dataset, index, size, target): (key, print_)
                for index, key, target, print_ in stale
            }
            for done, future in enumerate(as_completed(futures), 1):
                key, print_ = futures[future]
                if future.result():
                    entries[key] = print_
                    report.written += 1
                else:
                    entries[key] = "unreadable:" + print_
                    report.unreadable += 1
                bar.update()
                if done % _SAVE_EVERY == 0:
                    _write_manifest(cache_dir, entries)
    finally:
        bar.close()
        _write_manifest(cache_dir, entries)


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with YAML-like values (true/false/null, numbers, else a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        from argparse import ArgumentTypeError

        raise ArgumentTypeError(f"{text!r}: expects KEY=VALUE, e.g. use_bbox=true")
    words = {"true": True, "false": False, "null": None}
    if value.lower() in words:
        return key, words[value.lower()]
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def prepare_cache(
    name: str,
    root: str,
    cache_size: int,
    cache_dir: str | None = None,
    options: dict | None = None,
    progress: bool = True,
) -> list:
    """Write the image cache of both splits of ``name`` (``data.cache_size=cache_size``).

    Returns one :class:`CacheReport` per split (``python -m ranking_reg.data.prepare NAME
    --cache-size S``). ``cache_dir``
    None is the training default (``<root>/.rr_cache/<name>-<size>``).
    """
    from ranking_reg.data.registry import build_dataset

    size = check_cache_size(cache_size)
    reports = []
    for split in ("train", "test"):
        dataset = build_dataset(
            name,
            root,
            split,
            cache_size=size,
            cache_dir=cache_dir,
            progress=progress,
            **(options or {}),
        )
        reports.append(dataset.cache_report)
        print(
            f"{name} {split}: {len(dataset.cache)} of {len(dataset)} images cached at {size}px "
            f"in {dataset.cache_report.cache_dir} ({dataset.cache_report.written} written)"
        )
    return reports
