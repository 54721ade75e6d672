"""The identity of a checkpoint's weights: a sha256 over its state dict.

The digest covers, for every key in sorted order, the key, the tensor's dtype and shape, and its
raw bytes. It depends on the weights only, so copying or renaming the checkpoint file keeps it,
and a change of any one value changes it. A gallery index stores the fingerprint of the
checkpoint that embedded it; predict refuses an index whose fingerprint differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def state_dict_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of ``state_dict`` (see the module docstring); non-tensor entries are hashed
    by their ``repr``."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode("utf-8") + b"\0")
        if torch.is_tensor(value):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode() + b"\0")
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
