"""Benchmark: train-step cost of the two-head network vs softmax only (Taha et al. 2020, §4).

The paper reports that the embedding head + triplet loss add about 2 % to a training step on a
GPU. Both variants share the backbone architecture, the batch and the optimizer (SGD, momentum
0.9); one step = forward, loss, backward, ``optimizer.step()``:

- softmax only: backbone -> GAP -> fc -> cross-entropy (:class:`SoftmaxOnly`);
- two-head: :class:`ranking_reg.models.two_head.TwoHeadNet` (GAP -> fc, flatten -> fc(256) -> L2) with
  cross-entropy + 1.0 x :func:`ranking_reg.losses.semihard_triplet_loss` (margin 0.2).

Steps alternate A B, B A, A B ... after a warm-up; ``ratio`` is the median over the pairs of
two-head time / softmax time (a pair's two steps are adjacent in time, so load from other
processes hits both alike) and ``ratio_iqr`` its interquartile range, the noise to read it with. On CPU the clock is the process's CPU time with one torch
thread (a shared machine's wall time mostly measures the scheduler); on CUDA it is wall time
between synchronisations. ``overhead_pct`` = 100 x (ratio - 1).

:func:`measure` is also what ``gpu_check.py`` runs (bf16 autocast, channels_last, real loader).

    python -m experiments.benchmarks.bench_two_head [--quick] [--backbones resnet18,resnet50]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ranking_reg.losses import semihard_triplet_loss
from ranking_reg.models.backbones import build_backbone
from ranking_reg.models.two_head import TwoHeadNet

Batch = tuple[torch.Tensor, torch.Tensor]
VARIANTS = ("softmax", "two_head")
NUM_CLASSES = 100  # FGVC-Aircraft's variants
TRIPLET_WEIGHT = 1.0
MARGIN = 0.2

FULL = {
    "backbones": ("resnet18", "resnet50"),
    "classes_per_batch": 4,  # P x K = 4 x 4 = 16 (the paper's 8 x 4 = 32 is a GPU batch)
    "samples_per_class": 4,
    "img_size": 224,
    "warmup": 1,
    "steps": 7,
}
QUICK = {
    "backbones": ("resnet18",),
    "classes_per_batch": 2,
    "samples_per_class": 4,
    "img_size": 64,
    "warmup": 1,
    "steps": 2,
}


class SoftmaxOnly(nn.Module):
    """The baseline network: backbone -> global average pooling -> fc (no embedding head)."""

    def __init__(self, features: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).mean(dim=(2, 3)))


def build_models(
    backbone: str, img_size: int, num_classes: int = NUM_CLASSES, seed: int = 0
) -> dict[str, nn.Module]:
    """Both variants with identically initialised backbones (random weights: speed only)."""
    models: dict[str, nn.Module] = {}
    for variant in VARIANTS:
        torch.manual_seed(seed)
        net = build_backbone(backbone, img_size, pretrained=False)
        if variant == "softmax":
            models[variant] = SoftmaxOnly(net.features, net.channels, num_classes)
        else:
            models[variant] = TwoHeadNet(net, num_classes, embedding_dim=256)
    return models


def _loss(variant: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    if variant == "softmax":
        return F.cross_entropy(model(images), labels)
    out = model(images)
    triplet = semihard_triplet_loss(out.embedding, labels, margin=MARGIN)
    return F.cross_entropy(out.logits, labels) + TRIPLET_WEIGHT * triplet


def make_step(
    variant: str, model: nn.Module, device: torch.device, bf16: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One SGD training step of ``model`` (lr 0.01, momentum 0.9, the paper's optimizer)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        with autocast:
            loss = _loss(variant, model, images, labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def synthetic_batches(
    classes_per_batch: int,
    samples_per_class: int,
    img_size: int,
    device: torch.device,
    channels_last: bool = False,
) -> Iterator[Batch]:
    """The same P x K batch of random images forever (already on ``device``)."""
    generator = torch.Generator().manual_seed(0)
    size = classes_per_batch * samples_per_class
    images = torch.randn(size, 3, img_size, img_size, generator=generator).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(classes_per_batch).repeat_interleave(samples_per_class).to(device)
    while True:
        yield images, labels


def _clock(device: torch.device, kind: str) -> Callable[[], float]:
    if device.type == "cuda":

        def wall() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return wall
    return time.process_time if kind == "cpu" else time.perf_counter


def measure(
    backbone: str,
    img_size: int,
    batches: dict[str, Iterator[Batch]],
    warmup: int,
    steps: int,
    device: torch.device,
    bf16: bool = False,
    channels_last: bool = False,
    clock: str = "cpu",
) -> dict:
    """Median step seconds of each variant; ``batches[variant]`` feeds that variant's steps.

    The time of a step includes fetching its batch and moving it to ``device``, so a real
    loader's waits land on the step that consumed the batch. ``clock="cpu"``: this process's CPU
    time on a CPU device (robust to other load, blind to loader workers); ``"wall"``: wall time
    (always on CUDA, after synchronising).
    """
    models = build_models(backbone, img_size)
    step_fns = {}
    for variant, model in models.items():
        model.to(device).train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        step_fns[variant] = make_step(variant, model, device, bf16)
    now = _clock(device, clock)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(warmup + steps):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]  # A B, B A, ...
        for variant in order:
            start = now()
            images, labels = next(batches[variant])
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = step_fns[variant](images, labels.to(device, non_blocking=True))
            elapsed = now() - start
            if not torch.isfinite(loss):
                raise RuntimeError(f"{variant} step {i}: the loss is {loss.item()}")
            if i >= warmup:
                times[variant].append(elapsed)
    softmax_s = statistics.median(times["softmax"])
    two_head_s = statistics.median(times["two_head"])
    # Ratios of the two steps of each A B / B A pair: adjacent in time, so slow drifts in the
    # machine's load cancel; their median is the estimate and their quartiles its noise.
    pairs = [t / s for s, t in zip(times["softmax"], times["two_head"], strict=True)]
    ratio = statistics.median(pairs)
    quartiles = (
        statistics.quantiles(pairs, n=4, method="inclusive")
        if len(pairs) > 1
        else [ratio, ratio, ratio]
    )
    batch_size = int(labels.numel())
    return {
        "backbone": backbone,
        "device": device.type,
        "clock": "wall" if device.type == "cuda" else clock,
        "precision": "bf16" if bf16 else "fp32",
        "channels_last": channels_last,
        "batch": batch_size,
        "img_size": img_size,
        "steps": steps,
        "params_softmax_m": sum(p.numel() for p in models["softmax"].parameters()) / 1e6,
        "params_two_head_m": sum(p.numel() for p in models["two_head"].parameters()) / 1e6,
        "softmax_s": softmax_s,
        "two_head_s": two_head_s,
        "softmax_ips": batch_size / softmax_s,
        "two_head_ips": batch_size / two_head_s,
        "ratio": ratio,
        "ratio_iqr": [quartiles[0], quartiles[2]],
        "overhead_pct": 100.0 * (ratio - 1.0),
    }


def run(
    quick: bool = False, threads: int = 1, backbones: tuple[str, ...] | None = None
) -> list[dict]:
    """CPU rows, one per backbone (fp32, ``threads`` torch threads; see the module doc)."""
    config = QUICK if quick else FULL
    device = torch.device("cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for backbone in backbones or config["backbones"]:
            batches = {
                v: synthetic_batches(
                    config["classes_per_batch"],
                    config["samples_per_class"],
                    config["img_size"],
                    device,
                )
                for v in VARIANTS
            }
            row = measure(
                backbone,
                config["img_size"],
                batches,
                config["warmup"],
                config["steps"],
                device,
            )
            rows.append({"bench": "two_head", "threads": threads, **row})
    finally:
        torch.set_num_threads(previous)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (median seconds per step)."""
    lines = [
        "| backbone | device | precision | batch | px | params softmax / two-head (M) "
        "| softmax (s/step) | two-head (s/step) | ratio (IQR) | overhead |",
        "|---|---|---|---:|---:|---|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['device']} | {r['precision']} | {r['batch']} | "
            f"{r['img_size']} | {r['params_softmax_m']:.1f} / {r['params_two_head_m']:.1f} | "
            f"{r['softmax_s']:.3f} | {r['two_head_s']:.3f} | {r['ratio']:.3f} "
            f"({r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f}) | "
            f"{r['overhead_pct']:+.1f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64 px, 2 steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--backbones", help="comma-separated timm names (default: per mode)")
    args = parser.parse_args()
    backbones = tuple(args.backbones.split(",")) if args.backbones else None
    print(markdown_table(run(quick=args.quick, threads=args.threads, backbones=backbones)))


if __name__ == "__main__":
    main()
