"""Checkpoints written whole or not at all.

Lightning's ``TorchCheckpointIO`` streams straight into the target file, so a run killed while
saving leaves a truncated ``last.ckpt`` that cannot be resumed. We save to a temporary file in the
same folder and ``os.replace`` it (atomic on POSIX).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ranking_reg.utils.io import atomic_writer


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None
    ) -> None:
        with atomic_writer(path, "wb") as stream:
            torch.save(checkpoint, stream)
