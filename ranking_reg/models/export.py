"""Exported inference models: both heads as one graph, as ONNX or TorchScript, and their inputs.

:class:`TwoOutputs` wraps a :class:`~ranking_reg.models.two_head.TwoHeadNet` so that its forward
returns the tuple ``(logits, embedding)``: the embedding is the L2-normalised one of the
embedding head, exactly what the module's forward gives in eval mode. :func:`onnx_bytes` and
:func:`torchscript_bytes` serialise it with torch's own exporters; :func:`max_abs_diffs` runs
the serialised model on a batch (onnxruntime on CPU, ``torch.jit.load``) and compares both
outputs with PyTorch. :func:`preprocessing_spec` describes the eval transform
(:func:`ranking_reg.data.transforms.eval_transform`) as an ordered list of steps that another
runtime can apply by hand; the export sidecar carries it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ranking_reg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_CENTRAL_FRACTION,
    default_resize,
    eval_transform,
)

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "embedding")
BATCH_AXIS = "batch"
# torch.export specialises a dimension whose example size is 0 or 1 to that constant, so a
# dynamic batch is traced with 2 images.
DYNAMIC_TRACE_BATCH = 2


class TwoOutputs(nn.Module):
    """``images -> (logits, embedding)`` of a TwoHeadNet (the GAP features are left out)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.net(images)
        return output.logits, output.embedding


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """The ONNX optimizer logs each pass at INFO, which Hydra's logging config prints."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch 2.14 marks every torch.jit function deprecated (FutureWarning) in favour of
    torch.export; TorchScript files still load with torch.jit.load and in C++ (libtorch)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning
        )
        yield


def onnx_bytes(
    model: nn.Module, example: torch.Tensor, opset: int | None = None, dynamic_batch: bool = True
) -> tuple[bytes, int]:
    """The ONNX model of ``model`` traced on ``example``, and the opset it was written with.

    Uses the ``torch.export``-based exporter (``dynamo=True``, torch's default since 2.9, needs
    onnxscript): the TorchScript-based one is deprecated and announced for removal. It exports
    small_cnn and the timm ResNets on CPU with outputs equal to PyTorch's to ~1e-7; its start-up
    (~4 s of CPU, whatever the model) does not matter for a one-off export.
    ``opset=None`` takes the exporter's recommended opset.
    """
    # keyed by the name of TwoOutputs.forward's argument
    dynamic_shapes = {"images": {0: torch.export.Dim(BATCH_AXIS, min=1)}} if dynamic_batch else None
    with warnings.catch_warnings(), _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            external_data=False,  # one self-contained file: every backbone here is far below 2 GB
            verbose=False,
        )
    proto = program.model_proto
    version = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto.SerializeToString(), int(version)


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The TorchScript (``torch.jit.trace``) file of ``model`` traced on ``example``.

    Traced, not scripted: ``torch.jit.script`` rejects many timm models and the NamedTuple of
    TwoHeadNet, while these networks have no data-dependent control flow, and the batch size
    stays free in the trace (``flatten(1)`` and the mean over H, W do not record it). Tracing's
    own check (a second trace, compared graph by graph) is off: it doubles the time, and the
    export's check compares the outputs of the saved file on another batch size instead.
    """
    buffer = io.BytesIO()
    with _quiet_jit(), torch.no_grad():
        torch.jit.save(torch.jit.trace(model.eval(), example, check_trace=False), buffer)
    return buffer.getvalue()


def run_exported(kind: str, data: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, embedding)`` of a serialised model (``kind`` in :data:`FORMATS`) on ``images``."""
    if kind == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        logits, embedding = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return logits, embedding
    with _quiet_jit(), torch.no_grad():
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        logits, embedding = loaded(torch.from_numpy(images))
    return logits.numpy(), embedding.numpy()


def max_abs_diffs(
    kind: str, data: bytes, model: nn.Module, images: torch.Tensor
) -> dict[str, float]:
    """Largest absolute difference between the exported model and ``model``, per output."""
    with torch.no_grad():
        expected = [t.numpy() for t in model.eval()(images)]
    got = run_exported(kind, data, images.numpy())
    return {
        name: float(np.abs(g - e).max()) if e.size else 0.0
        for name, g, e in zip(OUTPUT_NAMES, got, expected, strict=True)
    }


# -- preprocessing ----------------------------------------------------------------------------
def _center_crop(size: int) -> dict[str, Any]:
    return {
        "op": "center_crop",
        "size": [size, size],
        "description": (
            f"cut the central {size} x {size} pixels: top = round((height - {size}) / 2), left ="
            f" round((width - {size}) / 2), rounding halves to even (Python's round). A side"
            f" shorter than {size} is first padded with zeros: (({size} - side) // 2) before, the"
            " rest after."
        ),
    }


def _resize_square(size: int) -> dict[str, Any]:
    return {
        "op": "resize",
        "size": [size, size],
        "interpolation": "bilinear",
        "antialias": True,
        "description": (
            f"resize to {size} x {size} (height x width) ignoring the aspect ratio, bilinear with"
            " antialiasing (PIL Image.resize with Image.BILINEAR)."
        ),
    }


def preprocessing_spec(
    img_size: int, resize_size: int | None = None, augment: str = "rrc"
) -> dict[str, Any]:
    """The eval transform ``eval_transform(img_size, resize_size, augment)`` as data: its
    geometric steps with their numbers, then the conversion to a normalised float tensor."""
    reference = eval_transform(img_size, resize_size, augment)  # raises on an unknown augment
    side = default_resize(img_size, resize_size)
    steps: list[dict[str, Any]] = [
        {
            "op": "convert",
            "mode": "RGB",
            "description": "decode the image as 8-bit RGB (grey, palette and RGBA converted).",
        }
    ]
    if augment == "rrc":
        steps.append(
            {
                "op": "resize_shorter_side",
                "size": side,
                "interpolation": "bilinear",
                "antialias": True,
                "description": (
                    f"scale so that the shorter side is {side} px, keeping the aspect ratio: the"
                    f" longer side becomes floor({side} * longer / shorter); bilinear with"
                    " antialiasing (PIL Image.resize with Image.BILINEAR); an image whose"
                    f" shorter side is already {side} px is left as it is."
                ),
            }
        )
        steps.append(_center_crop(img_size))
    elif augment == "resize_crop":
        steps += [_resize_square(side), _center_crop(img_size)]
    else:
        fraction = INCEPTION_CENTRAL_FRACTION
        steps.append(
            {
                "op": "central_fraction",
                "fraction": fraction,
                "description": (
                    f"keep the central {fraction:.1%} of each side (tf.image.central_crop): top ="
                    f" floor((height - height * {fraction}) / 2), left = floor((width - width *"
                    f" {fraction}) / 2), crop height - 2 * top rows by width - 2 * left columns."
                ),
            }
        )
        steps.append(_resize_square(img_size))
    steps += [
        {
            "op": "to_float",
            "scale": 1 / 255,
            "description": (
                "pixel values / 255 as float32 in [0, 1], channels first: H x W x 3 (R, G, B)"
                " becomes 3 x H x W."
            ),
        },
        {
            "op": "normalize",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "description": "per channel (R, G, B): (x - mean[c]) / std[c] (ImageNet statistics).",
        },
    ]
    return {
        "augment": augment,
        "img_size": img_size,
        "resize_size": None if augment == "inception" else side,
        "crop_size": [img_size, img_size],
        "central_fraction": INCEPTION_CENTRAL_FRACTION if augment == "inception" else None,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "steps": steps,
        "torchvision": " ".join(repr(reference).split()),
        "batch": f"stack the images into a float32 N x 3 x {img_size} x {img_size} array (NCHW).",
    }
