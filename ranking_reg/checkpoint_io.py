"""Checkpoints written whole or not at all.

Lightning's ``TorchCheckpointIO`` streams straight into the target file, so a run killed while
saving leaves a truncated ``last.ckpt`` that cannot be resumed. We save to a temporary file in the
same folder and ``os.replace`` it (atomic on POSIX).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None
    ) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(checkpoint, stream)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
