"""Benchmark: the prepared image cache (``data.cache_size``), cold build and warm reading.

On the generated photo-like 1000 x 750 JPEGs of :mod:`bench_input` (quality 90), per
``cache_size`` S:

- cold: wall-clock images/s of :func:`ranking_reg.data.image_cache.build_cache` writing the cache
  of all images into an empty folder (reduced-scale decode, LANCZOS to a shorter side of S, JPEG
  q90),
  with its thread pool on every usable core (``workers``); ``cpu_ms`` is the process CPU time per
  image summed over the threads (what the build costs whatever the core count);
- warm: images/s of one loader worker (one thread, ``time.thread_time``, as in
  :mod:`bench_input`) for the paper's training transform (``RandomResizedCrop(224)`` + flip +
  ToTensor + Normalize): torchvision's ``ImageFolder`` on the originals with torchvision's
  ``ToTensor`` + ``Normalize`` vs our ``ImageListDataset`` reading the cache with our
  ``train_transform`` (the same draws; its fused ``ToNormalizedTensor`` gives the same values), interleaved per image (rotating who goes first), each
  image's time the median of 3 repeats, files read once beforehand so both find them in the page
  cache. ``ratio`` = cached images/s / torchvision's (the issue's goal: >= 4x). One more row
  reads the same cache with uint8 worker output (``data.normalize_on_device``: the float
  conversion and normalisation then run on the accelerator), against the same torchvision
  pipeline.

    python -m experiments.benchmarks.bench_cache [--quick] [--images DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from torchvision.datasets import ImageFolder

from experiments.benchmarks.bench_input import (
    _warm_page_cache,
    make_jpegs,
    torchvision_transform,
    worker_seconds,
)
from ranking_reg.data.image_cache import build_cache
from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.transforms import train_transform

FULL = {
    "count": 500,
    "width": 1000,
    "height": 750,
    "img_size": 224,
    "cache_sizes": (224, 256, 320),
    "uint8_for": 256,
}
QUICK = {
    "count": 12,
    "width": 400,
    "height": 300,
    "img_size": 64,
    "cache_sizes": (80,),
    "uint8_for": 80,
}


def _workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run(quick: bool = False, cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per cache size: cold build images/s and warm one-worker images/s vs torchvision.

    The source JPEGs are generated under ``cache_dir`` (reused across runs, shared with
    :mod:`bench_input`) or a temporary folder; the image caches always start empty.
    """
    size = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(cache_dir) if cache_dir is not None else Path(tmp) / "sources"
        folder = make_jpegs(root, size["count"], size["width"], size["height"])
        transform = train_transform(size["img_size"])
        baseline = ImageFolder(str(folder), transform=torchvision_transform(size["img_size"]))
        sources = [p for p, _ in baseline.samples]
        _warm_page_cache(sources)
        rows = []
        for cache_size in size["cache_sizes"]:
            cached = ImageListDataset(baseline.samples, baseline.classes, transform=transform)
            row = _cold(cached, cache_size, Path(tmp) / f"cache-{cache_size}")
            _warm_page_cache(list(cached.cache.values()))
            row.update(_warm(baseline, cached, repeats=1 if quick else 3))
            row.update(
                images=len(baseline),
                image_wh=f"{size['width']}x{size['height']}",
                img_size=size["img_size"],
                mb_per_image=round(
                    sum(os.path.getsize(p) for p in sources) / 1e6 / len(sources), 3
                ),
                cached_kb_per_image=round(
                    sum(os.path.getsize(p) for p in cached.cache.values()) / 1e3 / len(sources),
                    1,
                ),
            )
            rows.append({"bench": "cache", "variant": f"cache_size={cache_size}", **row})
            if cache_size == size["uint8_for"]:
                # the same cache read by a worker that hands uint8 over (data.normalize_on_device:
                # ToTensor + Normalize run on the accelerator), against the same full
                # torchvision pipeline: what a GPU run with both switches asks of a worker
                uint8_transform = train_transform(size["img_size"], normalize=False)
                uint8 = ImageListDataset(
                    baseline.samples,
                    baseline.classes,
                    transform=uint8_transform,
                    cache=cached.cache,
                )
                both = {**row, **_warm(baseline, uint8, repeats=1 if quick else 3)}
                variant = f"cache_size={cache_size} + uint8 output"
                rows.append({"bench": "cache", "variant": variant, **both})
    return rows


def _cold(dataset: ImageListDataset, cache_size: int, folder: Path) -> dict:
    workers = _workers()
    wall, cpu = time.perf_counter(), time.process_time()
    report = build_cache(dataset, cache_size, str(folder), workers=workers, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert report.written == len(dataset), report
    return {
        "cache_size": cache_size,
        "workers": workers,
        "cold_ips": len(dataset) / wall,
        "cold_cpu_ms": 1e3 * cpu / len(dataset),
    }


def _warm(baseline: ImageFolder, cached: ImageListDataset, repeats: int) -> dict:
    seconds = worker_seconds([baseline, cached], repeats)
    n = len(baseline)
    torchvision_ips, cached_ips = n / seconds[0], n / seconds[1]
    return {
        "torchvision_ips": torchvision_ips,
        "cached_ips": cached_ips,
        "ratio": cached_ips / torchvision_ips,
    }


def markdown_table(rows: list[dict]) -> str:
    """Cold build (all cores) and warm one-worker images/s, ratio = cached / torchvision."""
    lines = [
        "| variant | images | image | MB/img | cached kB/img | cold img/s (workers) | "
        "cold CPU ms/img | crop | torchvision img/s | cached img/s | speed-up |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['images']} | {r['image_wh']} | {r['mb_per_image']:.2f} | "
            f"{r['cached_kb_per_image']:.1f} | {r['cold_ips']:.0f} ({r['workers']}) | "
            f"{r['cold_cpu_ms']:.1f} | {r['img_size']} | {r['torchvision_ips']:.1f} | "
            f"{r['cached_ips']:.1f} | {r['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a dozen small JPEGs only")
    parser.add_argument("--images", help="folder to generate the JPEGs in (reused across runs)")
    args = parser.parse_args()
    print(markdown_table(run(quick=args.quick, cache_dir=args.images)))


if __name__ == "__main__":
    main()
