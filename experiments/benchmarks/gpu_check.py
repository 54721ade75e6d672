"""GPU check (< 5 minutes on one GPU): two-head overhead, input starvation, DDP smoke; one table.

1. ``synthetic``: ResNet-50, bf16 autocast, channels_last, P x K = 8 x 4 at 224 px, random
   images already on the GPU: train-step throughput of two-head + semi-hard vs softmax only
   (:func:`experiments.benchmarks.bench_two_head.measure`; the paper: about 2 % overhead).
2. ``loader``: what the real input pipeline alone delivers (images/s), ``ImageListDataset``
   (``decode_size`` = crop size) + the training transform + ``num_workers`` workers, on
   generated photo-like 1000 x 750 JPEGs.
3. ``real input``: step 1 fed by that loader. If its throughput is well below step 1's, the GPU
   is starved by the input pipeline (more workers, smaller ``decode_size``, or GPU decoding).
4. ``ddp smoke``: with more than one GPU, ``python -m ranking_reg.train trainer=ddp`` for 2 steps
   on the embedded digits (the project's real DDP path); skipped with one GPU.

``--cpu`` runs the same code on the CPU (``--quick``: tiny sizes) to test the script without a
GPU; without ``--cpu`` and without CUDA it stops with one clear paragraph.

    experiments/benchmarks/gpu_check.sh [--cpu] [--quick] [--out results.json] [--ddp]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from experiments.benchmarks import bench_input
from experiments.benchmarks.bench_two_head import VARIANTS, measure, synthetic_batches
from ranking_reg.utils.errors import ConfigError, report_user_errors
from ranking_reg.utils.io import write_json_atomic

REPO = Path(__file__).resolve().parents[2]
STARVED_BELOW = 0.9  # real-input throughput / synthetic throughput under which the GPU waits

GPU = {
    "backbone": "resnet50",
    "P": 8,
    "K": 4,
    "img_size": 224,
    "warmup": 10,
    "steps": 30,
    "images": 512,
    "wh": (1000, 750),
}
QUICK = {
    "backbone": "resnet18",
    "P": 2,
    "K": 4,
    "img_size": 64,
    "warmup": 1,
    "steps": 2,
    "images": 16,
    "wh": (400, 300),
}
CPU_FULL = {**GPU, "warmup": 1, "steps": 3, "images": 64}


def _make_one(args: tuple[str, int, int, int, int]) -> str:
    root, index, label, width, height = args
    path = Path(root) / f"class_{label:02d}" / f"img_{index:05d}.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        import numpy as np

        image = bench_input.photo_like(width, height, np.random.default_rng([0, index]))
        tmp = path.with_suffix(".jpg.tmp")
        image.save(tmp, format="JPEG", quality=bench_input.QUALITY)
        os.replace(tmp, path)
    return str(path)


def make_jpegs_parallel(
    root: Path, count: int, classes: int, width: int, height: int, workers: int
) -> list[tuple[str, int]]:
    """``bench_input``'s photo-like JPEGs, generated on ``workers`` processes; (path, label)s."""
    jobs = [(str(root), i, i % classes, width, height) for i in range(count)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            paths = list(pool.map(_make_one, jobs, chunksize=8))
    else:
        paths = [_make_one(job) for job in jobs]
    return [(p, i % classes) for i, p in enumerate(paths)]


class PKBatches:
    """Random P x K index batches over ``labels`` forever (classes with >= K images)."""

    def __init__(self, labels: list[int], p: int, k: int, seed: int = 0) -> None:
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_class.setdefault(label, []).append(index)
        self.classes = [c for c, idx in self.by_class.items() if len(idx) >= k]
        if len(self.classes) < p:
            raise ConfigError(f"P={p} needs {p} classes with >= {k} images each.")
        self.p, self.k = p, k
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            pick = torch.randperm(len(self.classes), generator=self.generator)[: self.p]
            batch: list[int] = []
            for c in pick.tolist():
                items = self.by_class[self.classes[c]]
                order = torch.randperm(len(items), generator=self.generator)[: self.k]
                batch += [items[i] for i in order.tolist()]
            yield batch


def real_loader(
    samples: list[tuple[str, int]], classes: int, config: dict, workers: int, device: torch.device
) -> DataLoader:
    from ranking_reg.data.image_list import ImageListDataset
    from ranking_reg.data.transforms import train_transform

    img_size = config["img_size"]
    dataset = ImageListDataset(
        samples,
        [f"class_{c:02d}" for c in range(classes)],
        transform=train_transform(img_size),
        decode_size=img_size,
    )
    return DataLoader(
        dataset,
        batch_sampler=PKBatches(dataset.targets, config["P"], config["K"]),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def loader_throughput(loader_iter: Iterator, batches: int) -> float:
    """Images/s the loader alone delivers (after its workers have filled their queues once)."""
    next(loader_iter)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += len(next(loader_iter)[1])
    return images / (time.perf_counter() - start)


def ddp_smoke(gpus: int, cpu: bool, out_dir: Path) -> dict:
    """Two training steps of the real entry point under DDP (gloo on CPU, NCCL on GPUs)."""
    overrides = [
        "trainer=ddp_cpu" if cpu else "trainer=ddp",
        f"trainer.devices={2 if cpu else gpus}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "test=false",
        "backbone=small_cnn" if cpu else "backbone=resnet50",
        "backbone.pretrained=false",
        f"paths.output_dir={out_dir}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ranking_reg.train", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, WANDB_MODE="offline", HYDRA_FULL_ERROR="1"),
    )
    seconds = time.perf_counter() - start
    ok = proc.returncode == 0 and (out_dir / "checkpoints" / "last.ckpt").exists()
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return {"ok": ok, "returncode": proc.returncode, "seconds": seconds, "tail": tail}


def _device(cpu: bool) -> torch.device:
    if cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False; torch"
            f" {torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine"
            " with a CUDA build of torch, or pass --cpu (with --quick for a fast run) to check"
            " the script itself on the CPU."
        )
    return torch.device("cuda")


def run_checks(
    cpu: bool = False, quick: bool = False, ddp: bool = False, workers: int | None = None
) -> list[dict]:
    """All checks; one row dict each (see the module doc)."""
    threads = torch.get_num_threads()
    try:
        return _run_checks(_device(cpu), quick, ddp, workers)
    finally:
        torch.set_num_threads(threads)


def _run_checks(device: torch.device, quick: bool, ddp: bool, workers: int | None) -> list[dict]:
    config = QUICK if quick else (CPU_FULL if device.type == "cpu" else GPU)
    # The GPU recipe; CPU bf16 autocast runs ~10x slower than fp32 here, so --cpu uses fp32.
    bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        # On a CPU shared with other processes, 2+ intra-op threads spin against each other
        # (10x slower steps measured on a loaded 2-core machine); one thread is predictable.
        torch.set_num_threads(1)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 16)
    rows: list[dict] = []
    setting = (
        f"{config['backbone']}, {config['P']}x{config['K']} @ {config['img_size']} px, "
        f"{'bf16' if bf16 else 'fp32'}, channels_last"
    )

    synthetic = {
        v: synthetic_batches(config["P"], config["K"], config["img_size"], device, True)
        for v in VARIANTS
    }
    base = measure(
        config["backbone"],
        config["img_size"],
        synthetic,
        config["warmup"],
        config["steps"],
        device,
        bf16=bf16,
        channels_last=True,
        clock="wall",
    )
    rows.append({"check": "synthetic", "setting": setting, **base})

    with tempfile.TemporaryDirectory() as tmp:
        width, height = config["wh"]
        # At least P classes of at least K images each.
        classes = max(config["P"], min(bench_input.CLASSES, config["images"] // config["K"]))
        samples = make_jpegs_parallel(Path(tmp), config["images"], classes, width, height, workers)
        loader = real_loader(samples, classes, config, workers, device)
        shared = iter(loader)
        supply = loader_throughput(shared, max(4, config["steps"]))
        rows.append(
            {
                "check": "loader",
                "setting": f"{workers} workers, decode_size={config['img_size']}, "
                f"{width}x{height} JPEGs",
                "loader_ips": supply,
            }
        )
        real = measure(
            config["backbone"],
            config["img_size"],
            {v: shared for v in VARIANTS},
            config["warmup"],
            config["steps"],
            device,
            bf16=bf16,
            channels_last=True,
            clock="wall",  # waits for the loader's workers must count
        )
        starved = real["two_head_ips"] < STARVED_BELOW * base["two_head_ips"]
        rows.append({"check": "real input", "setting": setting, "starved": starved, **real})
        del shared, loader

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus > 1 or ddp:
        with tempfile.TemporaryDirectory() as tmp:
            smoke = ddp_smoke(gpus, cpu=device.type == "cpu", out_dir=Path(tmp) / "run")
        rows.append({"check": "ddp smoke", "setting": f"{max(gpus, 2)} processes", **smoke})
    else:
        rows.append({"check": "ddp smoke", "setting": f"{gpus} GPU", "skipped": True})
    return rows


def table(rows: list[dict], device_name: str) -> str:
    """The one table the script prints."""
    lines = [
        f"GPU check on {device_name}, torch {torch.__version__}",
        "",
        "| check | setting | softmax img/s | two-head img/s | overhead | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        if "two_head_ips" in r:
            verdict = "ok"
            if r["check"] == "real input":
                verdict = "GPU STARVED by input" if r["starved"] else "input keeps up"
            lines.append(
                f"| {r['check']} | {r['setting']} | {r['softmax_ips']:.0f} | "
                f"{r['two_head_ips']:.0f} | {r['overhead_pct']:+.1f} % | {verdict} |"
            )
        elif r["check"] == "loader":
            lines.append(f"| loader | {r['setting']} | {r['loader_ips']:.0f} (supply) | | | |")
        elif r.get("skipped"):
            lines.append(f"| ddp smoke | {r['setting']} | | | | skipped (needs > 1 GPU) |")
        else:
            verdict = "ok" if r["ok"] else f"FAILED (exit {r['returncode']})"
            lines.append(f"| ddp smoke | {r['setting']}, {r['seconds']:.0f} s | | | | {verdict} |")
    return "\n".join(lines)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (tests the script)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (resnet18 at 64 px)")
    parser.add_argument("--ddp", action="store_true", help="run the DDP smoke even with 1 GPU")
    parser.add_argument("--workers", type=int, help="loader workers (default: cores, max 16)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run_checks(cpu=args.cpu, quick=args.quick, ddp=args.ddp, workers=args.workers)
    device_name = "CPU" if args.cpu else torch.cuda.get_device_name(0)
    print(table(rows, device_name))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.out:
        write_json_atomic(args.out, {"device": device_name, "rows": rows})
    smoke_failed = any(r["check"] == "ddp smoke" and r.get("ok") is False for r in rows)
    return 1 if smoke_failed else 0


if __name__ == "__main__":
    sys.exit(main())
