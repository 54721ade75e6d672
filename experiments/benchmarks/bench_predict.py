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
``overhead_pct`` = 100 x (ratio - 1). The forward passes dominate both sides, so their noise
from run to run (a few %) dominates ``overhead_pct``; ``finish_pct`` times the part after the
network alone (search, JSON rows, files) as a % of the plain loop's time. The clock is the process's CPU time with one torch thread
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


def embed_step(model: TwoHeadNet, images: torch.Tensor, batch: int) -> Embedded:
    """predict's forward part: the DataLoader over the items, batched forward, softmax."""
    items = ImageItems(images.__getitem__, len(images), transform=lambda x: x)
    return embed(model, items, batch_size=batch, device="cpu", progress=False)


def finish_step(embedded: Embedded, gallery: GalleryIndex, out: str) -> None:
    """predict's part after the network: neighbour search, JSON rows, the three files."""
    neighbors = gallery.search(embedded.embeddings, NEIGHBORS)
    paths = [f"inputs/{i:06d}.jpg" for i in range(len(embedded.positions))]
    rows = prediction_rows(paths, embedded, gallery.classes, TOPK, gallery, neighbors)
    write_predictions(out, rows, embedded.embeddings, paths)


def predict_pipeline(
    model: TwoHeadNet, images: torch.Tensor, batch: int, gallery: GalleryIndex, out: str
) -> Embedded:
    """Everything ``predict`` does to already-transformed images (module docstring)."""
    embedded = embed_step(model, images, batch)
    finish_step(embedded, gallery, out)
    return embedded


def measure(setting: dict, rounds: int, threads: int = 1) -> dict:
    """One row: CPU seconds of the plain loop and of the predict pipeline (its forward part and
    the part after it), and their ratio."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model(setting["backbone"], setting["img_size"])
        torch.manual_seed(1)
        size = setting["img_size"]
        images = torch.randn(setting["images"], 3, size, size)
        batches = list(images.split(setting["batch"]))
        gallery = synthetic_gallery(setting["gallery"])
        times: dict[str, list[float]] = {"model": [], "embed": [], "finish": []}
        with tempfile.TemporaryDirectory() as out:
            # warm-up (the first search imports the metrics package)
            embedded = embed_step(model, images, setting["batch"])
            finish_step(embedded, gallery, out)
            plain_loop(model, batches)
            for r in range(rounds):
                for variant in ("model", "predict") if r % 2 == 0 else ("predict", "model"):
                    start = _clock()
                    if variant == "model":
                        plain_loop(model, batches)
                        times["model"].append(_clock() - start)
                        continue
                    embedded = embed_step(model, images, setting["batch"])
                    middle = _clock()
                    finish_step(embedded, gallery, out)
                    times["embed"].append(middle - start)
                    times["finish"].append(_clock() - middle)
    finally:
        torch.set_num_threads(previous)
    predict = [e + f for e, f in zip(times["embed"], times["finish"], strict=True)]
    ratio = statistics.median(p / m for p, m in zip(predict, times["model"], strict=True))
    model_s, predict_s = statistics.median(times["model"]), statistics.median(predict)
    finish_s = statistics.median(times["finish"])
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
        "finish_s": finish_s,
        "model_ips": setting["images"] / model_s,
        "predict_ips": setting["images"] / predict_s,
        "ratio": ratio,
        "overhead_pct": 100.0 * (ratio - 1.0),
        "finish_pct": 100.0 * finish_s / model_s,
    }


def run(quick: bool = False, rounds: int | None = None) -> list[dict]:
    """One row per setting (:data:`FULL`, or :data:`QUICK`)."""
    settings = QUICK if quick else FULL
    return [measure(s, rounds or (2 if quick else 4)) for s in settings]


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (overhead: predict / model - 1)."""
    lines = [
        "| backbone | img | images | batch | gallery | model (img/s) | predict (img/s) "
        "| overhead | search + json + files |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['img_size']} | {r['images']} | {r['batch']} | "
            f"{r['gallery']} | {r['model_ips']:.1f} | {r['predict_ips']:.1f} | "
            f"{r['overhead_pct']:+.1f} % | {r['finish_pct']:.1f} % |"
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
