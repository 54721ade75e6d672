"""What inference needs from a checkpoint of ours: the module in eval mode, its class names,
its evaluation transform and its fingerprint.

The transform is the checkpoint's own evaluation pipeline,
``eval_transform(img_size, resize_size, augment)`` of the data config stored with it
(``hyper_parameters["run_config"]["data"]``): a new image goes through exactly what the test
split went through. ``decode_size`` (JPEG reduced-scale decoding) is taken from there too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ranking_reg.inference.fingerprint import state_dict_fingerprint


@dataclass
class LoadedCheckpoint:
    path: str
    module: torch.nn.Module
    run_config: dict[str, Any]
    classes: list[str]
    transform: Callable
    decode_size: int | None
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def class_names(hparams: dict[str, Any], num_classes: int) -> list[str]:
    """The trained class names (``hyper_parameters["classes"]``), or ``"0".."C-1"``."""
    names = [str(c) for c in hparams.get("classes") or []]
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read ``path`` (a ConfigError for anything but a checkpoint of ours) and rebuild its module
    with pretrained weights off, in eval mode on the CPU."""
    from ranking_reg.data.transforms import eval_transform
    from ranking_reg.lightning.checkpoint_io import read_checkpoint
    from ranking_reg.lightning.module import RankingRegModule

    path = os.fspath(path)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    module = RankingRegModule.from_checkpoint(checkpoint).eval()
    data = hparams["run_config"]["data"]
    transform = eval_transform(
        int(data["img_size"]), data.get("resize_size"), augment=data.get("augment", "rrc")
    )
    return LoadedCheckpoint(
        path=path,
        module=module,
        run_config=hparams["run_config"],
        classes=class_names(hparams, module.num_classes),
        transform=transform,
        decode_size=data.get("decode_size"),
        fingerprint=state_dict_fingerprint(checkpoint["state_dict"]),
    )
