"""Checkpoints written whole or not at all, and read back safely.

Lightning's ``TorchCheckpointIO`` streams straight into the target file, so a run killed while
saving leaves a truncated ``last.ckpt`` that cannot be resumed. We save to a temporary file in the
same folder and ``os.replace`` it (atomic on POSIX). Reading uses ``weights_only=True``: a
checkpoint of this project holds only tensors and plain containers, and nothing in a file a user
points us at gets to run code.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ranking_reg.utils.errors import ConfigError
from ranking_reg.utils.io import atomic_writer


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None
    ) -> None:
        with atomic_writer(path, "wb") as stream:
            torch.save(checkpoint, stream)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint written by ``ranking_reg.train``; any other file is a :class:`ConfigError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"ckpt_path={path} is not a file. Give a checkpoint written by python -m"
            " ranking_reg.train, e.g. <run dir>/checkpoints/last.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated, not a torch file, foreign pickles: the user's to fix
        raise ConfigError(
            f"ckpt_path={path} could not be read as a checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'}). Give a .ckpt"
            " written by python -m ranking_reg.train."
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "run_config" not in hparams:
        raise ConfigError(
            f"ckpt_path={path} is a PyTorch file but not a ranking_reg checkpoint (it stores no"
            " run config); give a .ckpt written by python -m ranking_reg.train."
        )
    return checkpoint
