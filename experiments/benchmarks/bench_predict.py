"""Benchmark: what ``predict`` costs on top of the network's forward passes, CPU.

On the same pre-transformed batches (the image transform is excluded from both sides) and the
same two-head network (random weights: speed only), times

- ``model``: a plain loop ``model(batch)`` under ``torch.inference_mode`` -- the baseline;
- ``predict``: what :func:`ranking_reg.predict.predict` runs per image after decoding and
  transforming it: :func:`ranking_reg.inference.embedder.embed` (a DataLoader over the items,
  the batched forward, per-item error bookkeeping, softmax), the exact neighbour search of the
  embeddings in a gallery (:class:`ranking_reg.inference.gallery.GalleryIndex`, ``kind=exact``),
  the top-k classes and neighbours as JSON rows, and ``predictions.jsonl`` + ``embeddings.npy``
  + ``paths.txt`` written to a temporary folder.

Rounds alternate model, predict / predict, model / ... after a warm-up; ``ratio`` is the median
over the rounds of predict time / model time (a round's two runs are adjacent in time) and
``overhead_pct`` = 100 x (ratio - 1). The clock is the process's CPU time with one torch thread
(a shared machine's wall time mostly measures the scheduler). The issue's target: the extras
cost <= 10 %.

    python -m experiments.benchmarks.bench_predict [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from ranking_reg.inference.embedder import Embedded, ImageItems, embed
from ranking_reg.inference.gallery import GalleryIndex
from ranking_reg.inference.records import prediction_rows, write_predictions
from ranking_reg.models.backbones import build_backbone
from ranking_reg.models.two_head import TwoHeadNet

NUM_CLASSES = 555  # NABirds
# resnet50 at 224 px, the paper's network; a gallery the size of NABirds' training split
FULL = (
    {"backbone": "resnet18", "img_size": 224, "images": 64, "batch": 32, "gallery": 23_929},
    {"backbone": "resnet50", "img_size": 224, "images": 64, "batch": 32, "gallery": 23_929},
)
QUICK = ({"backbone": "small_cnn", "img_size": 32, "images": 64, "batch": 16, "gallery": 1_000},)
TOPK, NEIGHBORS = 5, 5


def _clock() -> float:
    return time.process_time()


def build_model(backbone: str, img_size: int, seed: int = 0) -> TwoHeadNet:
    torch.manual_seed(seed)
    net = build_backbone(backbone, img_size, pretrained=False)
    return TwoHeadNet(net, NUM_CLASSES, embedding_dim=256).eval()


def synthetic_gallery(n: int, dim: int = 256, seed: int = 0) -> GalleryIndex:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, NUM_CLASSES, n)
    classes = [f"class {c}" for c in range(NUM_CLASSES)]
    paths = [f"gallery/{i:06d}.jpg" for i in range(n)]
    return GalleryIndex(x, labels, classes, paths, fingerprint="0" * 64)


def plain_loop(model: TwoHeadNet, batches: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for batch in batches:
            model(batch)


def predict_pipeline(
    model: TwoHeadNet, images: torch.Tensor, batch: int, gallery: GalleryIndex, out: str
) -> Embedded:
    """Everything ``predict`` does to already-transformed images (module docstring)."""
    items = ImageItems(images.__getitem__, len(images), transform=lambda x: x)
    embedded = embed(model, items, batch_size=batch, device="cpu", progress=False)
    neighbors = gallery.search(embedded.embeddings, NEIGHBORS)
    paths = [f"inputs/{i:06d}.jpg" for i in range(len(images))]
    classes = gallery.classes
    rows = prediction_rows(paths, embedded, classes, TOPK, gallery, neighbors)
    write_predictions(out, rows, embedded.embeddings, paths)
    return embedded


def measure(setting: dict, rounds: int, threads: int = 1) -> dict:
    """One row: CPU seconds of the plain loop and of the predict pipeline, and their ratio."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model(setting["backbone"], setting["img_size"])
        torch.manual_seed(1)
        size = setting["img_size"]
        images = torch.randn(setting["images"], 3, size, size)
        batches = list(images.split(setting["batch"]))
        gallery = synthetic_gallery(setting["gallery"])
        with tempfile.TemporaryDirectory() as out:
            embedded = predict_pipeline(model, images, setting["batch"], gallery, out)  # warm-up
            plain_loop(model, batches)
            times: dict[str, list[float]] = {"model": [], "predict": []}
            for r in range(rounds):
                order = ("model", "predict") if r % 2 == 0 else ("predict", "model")
                for variant in order:
                    start = _clock()
                    if variant == "model":
                        plain_loop(model, batches)
                    else:
                        predict_pipeline(model, images, setting["batch"], gallery, out)
                    times[variant].append(_clock() - start)
    finally:
        torch.set_num_threads(previous)
    ratios = [p / m for p, m in zip(times["predict"], times["model"], strict=True)]
    ratio = statistics.median(ratios)
    model_s, predict_s = statistics.median(times["model"]), statistics.median(times["predict"])
    return {
        "bench": "predict",
        "backbone": setting["backbone"],
        "img_size": setting["img_size"],
        "images": setting["images"],
        "batch": setting["batch"],
        "gallery": setting["gallery"],
        "embedding_dim": int(embedded.embeddings.shape[1]),
        "threads": threads,
        "rounds": rounds,
        "model_s": model_s,
        "predict_s": predict_s,
        "model_ips": setting["images"] / model_s,
        "predict_ips": setting["images"] / predict_s,
        "ratio": ratio,
        "overhead_pct": 100.0 * (ratio - 1.0),
    }


def run(quick: bool = False, rounds: int | None = None) -> list[dict]:
    """One row per setting (:data:`FULL`, or :data:`QUICK`)."""
    settings = QUICK if quick else FULL
    return [measure(s, rounds or (2 if quick else 4)) for s in settings]


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| backbone | img | images | batch | gallery | model (img/s) | predict (img/s) "
        "| overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['img_size']} | {r['images']} | {r['batch']} | "
            f"{r['gallery']} | {r['model_ips']:.1f} | {r['predict_ips']:.1f} | "
            f"{r['overhead_pct']:+.1f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small_cnn at 32 px only")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 4, quick 2)")
    args = parser.parse_args()
    rows = run(quick=args.quick, rounds=args.rounds)
    print(f"torch {torch.__version__}, 1 thread, CPU time\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
