"""Benchmark: ``data.normalize_on_device``, a loader worker's images/s with and without it.

On the photo-like 1000 x 750 JPEGs of :mod:`experiments.benchmarks.bench_input` (the same
generator and files), in one process and one thread (a DataLoader worker's budget), times our
training pipeline (:class:`~ranking_reg.data.image_list.ImageListDataset` +
:func:`~ranking_reg.data.transforms.train_transform`, ``RandomResizedCrop(224)`` + flip) ending

- as today: ``ToTensor`` + ``Normalize`` (a float32 tensor: 4 bytes per value) -- the baseline;
- with ``normalize=False`` (what ``data.normalize_on_device=true`` gives the workers):
  ``PILToTensor`` (a uint8 tensor, 1 byte per value; the float conversion and the ImageNet
  normalisation then run on the accelerator after the transfer, not in the worker),

for ``decode_size`` none (full-size decode) and 256 (the experiment presets). Same method as
bench_input: this thread's CPU time, samples interleaved (rotating who goes first), each image's
time the median of 3 repeats with the same seed for both pipelines (identical random crops).
``ratio`` = uint8 images/s / float images/s. ``normalize_cpu_ms`` is what
:func:`~ranking_reg.data.transforms.normalize_batch` costs per image on this CPU (one thread,
batches of 64): the work that moves to the device (or, with no GPU, to the main process).

    python -m experiments.benchmarks.bench_uint8 [--quick] [--images DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import ImageFolder

from experiments.benchmarks.bench_input import (
    FULL,
    QUICK,
    _warm_page_cache,
    make_jpegs,
    worker_seconds,
)
from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.transforms import normalize_batch, train_transform
from ranking_reg.metrics.gemm import one_torch_thread

PRESET_DECODE = 256  # conf/experiment presets: data.decode_size=256


def run(quick: bool = False, cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Images/s of one worker, float vs uint8 pipeline, per ``decode_size``; one row each.

    The JPEGs are bench_input's first set (500 x 1000x750; quick: 12 x 400x300), generated under
    ``cache_dir`` (reused) or a temporary folder."""
    size = (QUICK if quick else FULL)[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(cache_dir) if cache_dir is not None else Path(tmp)
        folder = make_jpegs(root, size["count"], size["width"], size["height"])
        img_size = size["img_size"]
        decode_sizes = (None, round(img_size * 256 / 224) if quick else PRESET_DECODE)
        return [
            _measure(folder, img_size, d, size, repeats=1 if quick else 3) for d in decode_sizes
        ]


def _measure(
    folder: Path, img_size: int, decode_size: int | None, size: dict, repeats: int
) -> dict:
    listing = ImageFolder(str(folder))
    samples, classes = listing.samples, listing.classes
    datasets = [
        ImageListDataset(
            samples,
            classes,
            transform=train_transform(img_size, normalize=normalize),
            decode_size=decode_size,
        )
        for normalize in (True, False)
    ]
    n = len(samples)
    _warm_page_cache([p for p, _ in samples])
    # the same crop for both pipelines: reseeded before every call
    seconds = worker_seconds(datasets, repeats, same_draws=True)
    with one_torch_thread():  # one DataLoader worker's budget
        normalize_ms = _normalize_cpu_ms(img_size)
    float_ips, uint8_ips = n / seconds[0], n / seconds[1]
    values = 3 * img_size * img_size
    return {
        "bench": "uint8",
        "variant": f"decode_size={decode_size}",
        "decode_size": decode_size,
        "images": n,
        "image_wh": f"{size['width']}x{size['height']}",
        "img_size": img_size,
        "float_ips": float_ips,
        "uint8_ips": uint8_ips,
        "ratio": uint8_ips / float_ips,
        "float_kb_per_image": 4 * values / 1024,
        "uint8_kb_per_image": values / 1024,
        "normalize_cpu_ms": normalize_ms,
    }


def _normalize_cpu_ms(img_size: int, batch: int = 64, repeats: int = 5) -> float:
    """Median CPU ms per image of :func:`normalize_batch` on a uint8 batch (current threads)."""
    images = torch.randint(0, 256, (batch, 3, img_size, img_size), dtype=torch.uint8)
    normalize_batch(images)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        normalize_batch(images)
        times.append(time.thread_time() - start)
    return 1e3 * float(np.median(times)) / batch


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (one worker's images/s, ratio = uint8 / float)."""
    lines = [
        "| worker output | images | image | crop | float32 img/s | uint8 img/s | speed-up |"
        " KB/img float32 -> uint8 | normalize_batch CPU ms/img |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['images']} | {r['image_wh']} | {r['img_size']} | "
            f"{r['float_ips']:.1f} | {r['uint8_ips']:.1f} | {r['ratio']:.2f}x | "
            f"{r['float_kb_per_image']:.0f} -> {r['uint8_kb_per_image']:.0f} | "
            f"{r['normalize_cpu_ms']:.3f} |"
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
