"""Benchmark: training input pipeline, ours vs torchvision's default, images/s of one worker.

On generated photo-like JPEGs (smooth colour fields + mid-frequency texture + sensor-like noise,
1000 x 750, quality 90: the size of a typical NABirds / Stanford Dogs photo), in one process and
one thread (what one DataLoader worker gets: PyTorch sets ``torch.set_num_threads(1)`` in
workers), times the paper's training transform (``RandomResizedCrop(224)`` + flip + ToTensor +
Normalize) behind

- torchvision: ``ImageFolder`` (PIL full-size decode, ``convert("RGB")``) with torchvision's
  transforms as documented (:func:`torchvision_transform`) -- the baseline;
- ours: :class:`ranking_reg.data.image_list.ImageListDataset` with ``decode_size`` (libjpeg's
  reduced-scale DCT decoding through PIL ``draft``: the shorter side stays >= ``decode_size``),
  for ``decode_size`` = none (the dataset's own overhead), ``img_size`` and the 256 the
  experiment presets use, with :func:`ranking_reg.data.transforms.train_transform` (the same
  random draws; its fused ``ToNormalizedTensor`` gives the same values as the pair).

Time is this thread's CPU time (``time.thread_time``), i.e. images/s of a worker that has a core
to itself: on a shared machine wall time mostly measures the scheduler. Samples are interleaved
(baseline, variant 1, variant 2, ... per image, rotating who goes first) so that cache and clock
effects hit all of them alike; files are read once beforehand so every variant finds them in the
page cache; each image's time is the median of 3 repeats (fresh random crops). ``ratio`` = our
images/s / torchvision's.

    python -m experiments.benchmarks.bench_input [--quick] [--images DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from ranking_reg.data.image_list import ImageListDataset
from ranking_reg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform
from ranking_reg.metrics.gemm import one_torch_thread

# The set (500 x 1000x750), plus fewer 2000x1500 ones (high-resolution sources such as
# some Stanford Cars photos) to show how the speed-up grows with the image size.
FULL = (
    {"count": 500, "width": 1000, "height": 750, "img_size": 224},
    {"count": 100, "width": 2000, "height": 1500, "img_size": 224},
)
QUICK = ({"count": 12, "width": 400, "height": 300, "img_size": 64},)
CLASSES = 10
QUALITY = 90


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A JPEG-realistic RGB image: what makes a JPEG slow or fast to decode is its frequency
    content, so mix a smooth colour field, mid-frequency texture and fine noise (a flat or
    pure-noise image would under- or over-state decode cost)."""
    smooth = rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(smooth).resize((width, height), Image.BICUBIC), np.float32)
    texture = rng.normal(128, 40, (height // 16, width // 16, 3)).clip(0, 255).astype(np.uint8)
    mid = np.asarray(Image.fromarray(texture).resize((width, height), Image.BILINEAR), np.float32)
    noise = rng.normal(0, 4, (height, width, 1)).astype(np.float32)  # luminance-like grain
    pixels = 0.7 * base + 0.3 * mid + noise
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_jpegs(root: Path, count: int, width: int, height: int, seed: int = 0) -> Path:
    """``count`` photo-like JPEGs in ``CLASSES`` ImageFolder class folders under ``root``.

    Reused when ``root`` already holds them (the sizes are part of the folder name); each file is
    written to a temporary name and renamed, so an interrupted run leaves no half file behind.
    """
    folder = root / f"jpegs_{count}_{width}x{height}_q{QUALITY}_s{seed}"
    for i in range(count):
        path = folder / f"class_{i % CLASSES:02d}" / f"img_{i:05d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        image = photo_like(width, height, np.random.default_rng([seed, i]))
        tmp = path.with_suffix(".jpg.tmp")
        image.save(tmp, format="JPEG", quality=QUALITY)
        os.replace(tmp, path)
    return folder


def _warm_page_cache(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(f.read())
    return total


def run(
    quick: bool = False,
    cache_dir: str | os.PathLike | None = None,
    decode_sizes: tuple[int | None, ...] | None = None,
) -> list[dict]:
    """Images/s of torchvision's ``ImageFolder`` and of ours per ``decode_size``; one row each.

    JPEGs are generated under ``cache_dir`` (reused across runs) or a temporary folder.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(cache_dir) if cache_dir is not None else Path(tmp)
        for size in QUICK if quick else FULL:
            img_size = size["img_size"]
            sizes = decode_sizes or (None, img_size, round(img_size * 256 / 224))
            folder = make_jpegs(root, size["count"], size["width"], size["height"])
            rows += _measure(folder, img_size, sizes, size, repeats=1 if quick else 3)
    return rows


def worker_seconds(datasets: Sequence[Any], repeats: int, same_draws: bool = False) -> list[float]:
    """One loader worker's CPU seconds (``time.thread_time``, one torch thread) to produce every
    item of each of ``datasets`` (all of the same length), timed side by side: item by item,
    rotating which dataset goes first, each item's time the median of ``repeats`` (drops
    one-off stalls from other processes). ``same_draws`` reseeds torch before every call so
    that every dataset gets the same random augmentation of an item."""
    n = len(datasets[0])
    seconds = [0.0] * len(datasets)
    with one_torch_thread():  # one DataLoader worker's budget
        torch.manual_seed(0)
        for i in range(min(4, n)):  # warm-up: imports, allocator, PIL plugin init
            for dataset in datasets:
                dataset[i]
        for i in range(n):
            # Rotate who goes first so that cache/frequency effects do not favour one variant.
            order = [(i + j) % len(datasets) for j in range(len(datasets))]
            per_image: list[list[float]] = [[] for _ in datasets]
            for repeat in range(repeats):
                for j in order:
                    if same_draws:
                        torch.manual_seed(1000 * i + repeat)
                    start = time.thread_time()
                    datasets[j][i]
                    per_image[j].append(time.thread_time() - start)
            for j, values in enumerate(per_image):
                seconds[j] += float(np.median(values))
    return seconds


def torchvision_transform(img_size: int) -> T.Compose:
    """The baseline's pipeline as torchvision's documentation writes it: RandomResizedCrop +
    flip + ``ToTensor`` + ``Normalize`` (the same random draws as ``train_transform``, whose
    last step is the fused, bit-identical ``ToNormalizedTensor``)."""
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _measure(
    folder: Path, img_size: int, decode_sizes: tuple, size: dict, repeats: int
) -> list[dict]:
    transform = train_transform(img_size)
    baseline = ImageFolder(str(folder), transform=torchvision_transform(img_size))
    ours = {
        d: ImageListDataset(baseline.samples, baseline.classes, transform=transform, decode_size=d)
        for d in decode_sizes
    }
    n = len(baseline)
    megabytes = _warm_page_cache([p for p, _ in baseline.samples]) / 1e6
    seconds = worker_seconds([baseline, *ours.values()], repeats)
    torchvision_ips = n / seconds[0]
    rows = []
    for decode_size, elapsed in zip(ours, seconds[1:], strict=True):
        ours_ips = n / elapsed
        rows.append(
            {
                "bench": "input",
                "variant": f"decode_size={decode_size}",
                "decode_size": decode_size,
                "images": n,
                "image_wh": f"{size['width']}x{size['height']}",
                "mb_per_image": round(megabytes / n, 3),
                "img_size": img_size,
                "torchvision_ips": torchvision_ips,
                "ours_ips": ours_ips,
                "ratio": ours_ips / torchvision_ips,
            }
        )
    return rows


def stage_times(folder: Path, img_size: int, limit: int = 200) -> dict[str, float]:
    """Median CPU ms per stage of both pipelines on the JPEGs of ``folder`` (where time goes).

    ``draft 1/s`` is the decode at libjpeg scale 1/s (what ``decode_size`` selects); the crop
    stage is ``RandomResizedCrop`` on the full or the 1/2-scale image.
    """
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms import functional as F

    crop = RandomResizedCrop(img_size, antialias=True)
    times: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):
        start = time.thread_time()
        out = fn(*args)
        times.setdefault(name, []).append(time.thread_time() - start)
        return out

    def decode(path: str, scale: int) -> Image.Image:
        with Image.open(path) as im:
            if scale > 1:
                im.draft("RGB", (im.size[0] // scale, im.size[1] // scale))
            return im.convert("RGB")

    paths = sorted(str(p) for p in folder.rglob("*.jpg"))[:limit]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in paths:
            full = timed("decode full size", decode, path, 1)
            half = timed("decode draft 1/2", decode, path, 2)
            timed("decode draft 1/4", decode, path, 4)
            timed("decode draft 1/8", decode, path, 8)
            timed("RandomResizedCrop on full size", crop, full)
            cropped = timed("RandomResizedCrop on 1/2 scale", crop, half)
            tensor = timed("ToTensor", F.to_tensor, cropped)
            timed("Normalize", F.normalize, tensor, IMAGENET_MEAN, IMAGENET_STD)
    finally:
        torch.set_num_threads(threads)
    return {name: 1e3 * float(np.median(values)) for name, values in times.items()}


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (images/s of one worker, ratio = ours / torchvision)."""
    lines = [
        "| ours | images | image | MB/img | crop | torchvision img/s | ours img/s | speed-up |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['images']} | {r['image_wh']} | {r['mb_per_image']:.2f} | "
            f"{r['img_size']} | {r['torchvision_ips']:.1f} | {r['ours_ips']:.1f} | "
            f"{r['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a dozen small JPEGs only")
    parser.add_argument("--images", help="folder to generate the JPEGs in (reused across runs)")
    parser.add_argument(
        "--stages", action="store_true", help="also print the median CPU ms of each stage"
    )
    args = parser.parse_args()
    print(markdown_table(run(quick=args.quick, cache_dir=args.images)))
    if args.stages:
        size = (QUICK if args.quick else FULL)[0]
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(args.images) if args.images else Path(tmp)
            folder = make_jpegs(root, size["count"], size["width"], size["height"])
            stages = stage_times(folder, size["img_size"])
        print(f"\nmedian CPU ms per stage, {size['width']}x{size['height']} JPEGs:\n")
        print("| stage | ms |\n|---|---:|")
        print("\n".join(f"| {name} | {ms:.2f} |" for name, ms in stages.items()))


if __name__ == "__main__":
    main()
