"""Batched forward passes of a two-head module over images: logits, softmax probabilities and
L2-normalised embeddings, with a per-item error instead of a failed batch.

An :class:`ImageItems` dataset yields ``(position, tensor or None, error)``: the image at
``position`` decoded by ``load`` and passed through ``transform``; with ``catch=True`` a
:class:`~ranking_reg.utils.errors.DataError` of one image becomes its error message and the other
images of the batch go on. :func:`embed` runs the module once per batch (``torch.inference_mode``;
on CUDA under bf16 autocast unless ``bf16=False``) and returns float32 arrays of the readable
items in position order. Probabilities are ``softmax(logits)`` computed in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ranking_reg.utils.errors import ConfigError, DataError

DEVICES = ("auto", "cpu", "cuda")


class ImageItems(Dataset):
    """``count`` images: item i is ``(i, transform(load(i)), "")`` or ``(i, None, message)``."""

    def __init__(
        self, load: Callable[[int], Any], count: int, transform: Callable, catch: bool = True
    ) -> None:
        self.load = load
        self.count = count
        self.transform = transform
        self.catch = catch

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return index, self.transform(self.load(index)), ""
        except DataError as error:
            if not self.catch:
                raise
            return index, None, " ".join(str(error).split())


Batch = tuple[list[int], torch.Tensor | None, dict[int, str]]


def collate(items: list[tuple[int, torch.Tensor | None, str]]) -> Batch:
    """(positions of the readable items, their stacked tensors or None, {position: error})."""
    ok = [(i, t) for i, t, _ in items if t is not None]
    errors = {i: e for i, t, e in items if t is None}
    images = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], images, errors


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` without a GPU is a ConfigError."""
    if device not in DEVICES:
        raise ConfigError(f"device={device}: expects one of {'|'.join(DEVICES)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is visible; use device=auto or cpu.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def forward_batch(
    module: torch.nn.Module, images: torch.Tensor, device: torch.device, bf16: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, embeddings) of one batch, float32 on the CPU (bf16 autocast on CUDA only)."""
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if bf16 and device.type == "cuda"
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        output = module(images.to(device, non_blocking=True))
    return output.logits.float().cpu(), output.embedding.float().cpu()


@dataclass
class Embedded:
    """The readable items (``positions``, ascending) with their outputs, and the errors."""

    positions: list[int] = field(default_factory=list)
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    errors: dict[int, str] = field(default_factory=dict)


def embed(
    module: torch.nn.Module,
    items: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    bf16: bool = True,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "predict",
) -> Embedded:
    """One forward pass per item of ``items`` (an :class:`ImageItems`), in batches."""
    from tqdm.auto import tqdm

    device = device if isinstance(device, torch.device) else resolve_device(device)
    module = module.to(device).eval()
    batches = -(-len(items) // batch_size)
    loader = DataLoader(
        items,
        batch_size=batch_size,
        shuffle=False,
        num_workers=0 if batches <= 1 else min(num_workers, batches),
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    out = Embedded()
    logits, embeddings = [], []
    with tqdm(total=len(items), disable=not progress, desc=desc, unit="img") as bar:
        for positions, images, errors in loader:
            out.errors.update(errors)
            if images is not None:
                batch_logits, batch_embeddings = forward_batch(module, images, device, bf16)
                logits.append(batch_logits)
                embeddings.append(batch_embeddings)
                out.positions += positions
            bar.update(len(positions) + len(errors))
    if logits:
        all_logits = torch.cat(logits)
        out.logits = all_logits.numpy()
        out.probs = torch.softmax(all_logits, dim=1).numpy()
        out.embeddings = torch.cat(embeddings).numpy()
    return out
