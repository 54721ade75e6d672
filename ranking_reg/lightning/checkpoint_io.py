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

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's resume and ``test(ckpt_path=...)`` read through here: always
        ``weights_only=True``, and an unreadable file is one paragraph."""
        return load_weights_only(path, map_location or "cpu")


def load_weights_only(
    path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)``; a missing, truncated or foreign file is a
    :class:`ConfigError` naming it. ``mmap=True`` maps the tensors instead of reading them (for
    a look at names and shapes only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"ckpt_path={path} is not a file. Give a checkpoint written by python -m"
            " ranking_reg.train, e.g. <run dir>/checkpoints/last.ckpt."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # truncated, not a torch file, foreign pickles: the user's to fix
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else "no detail"
        raise ConfigError(
            f"ckpt_path={path} could not be read as a checkpoint ({type(error).__name__}:"
            f" {detail}). It may be truncated (a copy that did not finish) or not a checkpoint;"
            " give a .ckpt written by python -m ranking_reg.train."
        ) from None


def read_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """A checkpoint written by ``ranking_reg.train``; any other file is a :class:`ConfigError`."""
    path = os.fspath(path)
    checkpoint = load_weights_only(path, map_location, mmap)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "run_config" not in hparams:
        raise ConfigError(
            f"ckpt_path={path} is a PyTorch file but not a ranking_reg checkpoint (it stores no"
            " run config); give a .ckpt written by python -m ranking_reg.train."
        )
    return checkpoint


def _describe(run_config: dict[str, Any]) -> str:
    backbone = (run_config.get("backbone") or {}).get("name", "?")
    data = (run_config.get("data") or {}).get("name", "?")
    return f"backbone={backbone}, data={data}"


def check_resumable(
    checkpoint: dict[str, Any], state_dict: dict[str, torch.Tensor], path: str | os.PathLike
) -> None:
    """Raise :class:`ConfigError` unless ``checkpoint`` holds weights of the same names and
    shapes as ``state_dict`` (the model this run builds): another backbone, embedding size or
    class count is named with the first differing tensors."""
    stored = checkpoint.get("state_dict") or {}
    missing = [k for k in state_dict if k not in stored]
    unexpected = [k for k in stored if k not in state_dict]
    reshaped = [
        f"{k} {tuple(stored[k].shape)} in the checkpoint vs {tuple(v.shape)} here"
        for k, v in state_dict.items()
        if k in stored and tuple(stored[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or reshaped):
        return
    problems = reshaped[:2] + [f"{k} missing from the checkpoint" for k in missing[:2]]
    problems += [f"{k} unknown here" for k in unexpected[:2]]
    trained = checkpoint.get("hyper_parameters", {}).get("run_config", {})
    raise ConfigError(
        f"ckpt_path={os.fspath(path)} does not fit the model of this run: it was trained with"
        f" {_describe(trained)} and {len(missing) + len(unexpected) + len(reshaped)} weight(s)"
        f" differ ({'; '.join(problems)}). Resume with the config it was trained with (its"
        " .hydra/config.yaml), or start a new run in another folder."
    )
