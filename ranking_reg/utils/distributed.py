"""Cross-process helpers that behave as identities in a single process.

Why our own: PML's ``DistributedMinerWrapper`` calls ``get_world_size()`` unguarded and fails
in one process; the gather below works with 1 or N processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_local_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes (rank order); gradients flow into the local part.

    All processes must pass tensors of the same shape (P x K training batches are).
    """
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    parts[rank()] = tensor
    return torch.cat(parts, dim=0)


def gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate tensors whose first dimension differs between processes (no gradient)."""
    if world_size() == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)], dim=0)
