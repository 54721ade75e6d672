"""Export a checkpoint for inference:
``python -m ranking_reg.export ckpt_path=CKPT format=onnx|torchscript out=FILE``.

FILE holds the checkpoint's network with one input, ``images`` (float32 N x 3 x S x S, RGB,
normalised; S is the checkpoint's ``data.img_size``), and two outputs: ``logits`` (N x classes)
and ``embedding`` (N x D, the L2-normalised embedding head: what the module's forward gives in
eval mode). The batch dimension is free unless ``dynamic_batch=false``. ``out`` defaults to
``model.onnx`` / ``model.pt`` in the Hydra output folder.

Beside it, ``FILE.json`` (the sidecar) documents how to feed it: the input name, shape, dtype
and layout, the checkpoint's eval preprocessing as steps with their numbers (augment kind,
resize size, crop size, mean and std), the output names and shapes, the class names, the
checkpoint's path and sha256, the torch version, the opset and the check's differences.

``check=true`` (default) runs the serialised model (onnxruntime on CPU, ``torch.jit.load``) on a
random batch of a size other than the traced one and fails, as one paragraph, unless both
outputs are within 1e-4 of PyTorch. Both files are written whole (temporary file + rename), and
only once the check has passed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ranking_reg.utils.errors import ConfigError, UserError, report_user_errors
from ranking_reg.utils.paths import CONFIG_DIR

FORMATS = ("onnx", "torchscript")  # = models.export.FORMATS, kept here to fail before torch loads
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4
SIDECAR_VERSION = 1  # raised when a key of the sidecar changes meaning or goes away
CHECK_BATCH = 3  # differs from the traced batch (2): the check also proves the batch is free
USAGE = (
    "python -m ranking_reg.export ckpt_path=<run dir>/checkpoints/last.ckpt"
    " format=onnx|torchscript out=model.onnx"
)


def sidecar_path(out: str | os.PathLike) -> str:
    """Where the preprocessing of an exported ``out`` is documented: ``out`` + ``.json``."""
    return os.fspath(out) + ".json"


def _check_options(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError(f"ckpt_path is required. Usage: {USAGE}")
    if not os.path.isfile(str(cfg.ckpt_path)):  # before torch loads: a typo fails at once
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not a file. Give a checkpoint written by python -m"
            " ranking_reg.train, e.g. <run dir>/checkpoints/last.ckpt."
        )
    if cfg.format not in FORMATS:
        raise ConfigError(
            f"format={cfg.format} is unknown; use onnx (onnxruntime, TensorRT, ...) or"
            f" torchscript (torch.jit.load, libtorch). Usage: {USAGE}"
        )
    opset = cfg.get("opset")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 18):
        raise ConfigError(
            f"opset={opset}: give an ONNX opset of 18 or newer (the torch.export-based exporter"
            " cannot convert to older ones), or opset=null for torch's recommended one."
        )
    for key in ("dynamic_batch", "check"):
        if not isinstance(cfg.get(key), bool):
            raise ConfigError(f"{key}={cfg.get(key)} must be true or false.")
    size = cfg.get("batch_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"batch_size={size} must be a positive integer.")


def _check_dependencies(kind: str, check: bool) -> None:
    needed = ["onnx", "onnxscript"] if kind == "onnx" else []
    if kind == "onnx" and check:
        needed.append("onnxruntime")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"format=onnx needs {' and '.join(missing)} (not installed). Install the export"
            " extra: pip install 'ranking_reg[export]' (onnx, onnxscript, onnxruntime)"
            + (", or skip the check with check=false." if missing == ["onnxruntime"] else ".")
        )


def output_path(cfg: DictConfig) -> str:
    """``cfg.out``, or ``model.onnx`` / ``model.pt`` in the Hydra output folder; checked to be a
    file name in a folder that can be written (created when missing)."""
    out = cfg.get("out") or os.path.join(cfg.paths.output_dir, "model" + SUFFIXES[cfg.format])
    out = os.path.abspath(os.path.expanduser(str(out)))
    if os.path.isdir(out):
        raise ConfigError(f"out={out} is a folder; give a file name, e.g. out={out}/model.onnx.")
    existing = os.path.dirname(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not os.path.isdir(existing) else "cannot be written"
        raise ConfigError(
            f"out={out}: {existing} {what}; give a file in a folder you can write to."
        )
    return out


def file_sha256(path: str) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks (checkpoints reach hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(
    cfg: DictConfig,
    checkpoint: dict[str, Any],
    net: Any,
    out: str,
    opset: int | None,
    check: dict[str, Any] | None,
) -> dict[str, Any]:
    """The sidecar: everything a runtime needs to feed the exported model and read its outputs
    (``check``: the check's batch size, tolerance and differences, None without a check)."""
    import torch

    from ranking_reg.models.export import BATCH_AXIS, INPUT_NAME, preprocessing_spec

    hparams = checkpoint["hyper_parameters"]
    run_config = hparams["run_config"]
    data = run_config["data"]
    size = int(data["img_size"])
    batch: int | str = BATCH_AXIS if cfg.dynamic_batch else int(cfg.batch_size)
    classes = [str(c) for c in hparams.get("classes") or []]
    return {
        "sidecar_version": SIDECAR_VERSION,
        "format": cfg.format,
        "model_file": os.path.basename(out),
        "input": {
            "name": INPUT_NAME,
            "shape": [batch, 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "description": "images after the steps of `preprocessing`, stacked into a batch.",
        },
        "outputs": [
            {
                "name": "logits",
                "shape": [batch, int(net.classifier.out_features)],
                "dtype": "float32",
                "description": "class scores before the softmax, in the order of `classes`.",
            },
            {
                "name": "embedding",
                "shape": [batch, int(net.embedder.out_features)],
                "dtype": "float32",
                "description": "the embedding head, L2-normalised (unit norm): compare with a"
                " dot product (cosine) or the Euclidean distance.",
            },
        ],
        "dynamic_batch": bool(cfg.dynamic_batch),
        "preprocessing": preprocessing_spec(
            size, data.get("resize_size"), data.get("augment", "rrc")
        ),
        "classes": classes,
        "backbone": run_config["model"]["net"]["backbone"].get("name"),
        "checkpoint": {
            "path": os.path.abspath(str(cfg.ckpt_path)),
            "sha256": file_sha256(str(cfg.ckpt_path)),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
        "torch_version": torch.__version__,
        "exporter": "torch.onnx.export(dynamo=True)" if cfg.format == "onnx" else "torch.jit.trace",
        "opset": opset,
        "check": check,
    }


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` as ``cfg.format`` to ``cfg.out`` with its sidecar; returns the
    sidecar's content."""
    _check_options(cfg)
    _check_dependencies(cfg.format, cfg.check)
    out = output_path(cfg)
    import torch

    from ranking_reg.lightning.checkpoint_io import read_checkpoint
    from ranking_reg.lightning.module import RankingRegModule
    from ranking_reg.models import export as writers
    from ranking_reg.utils.io import atomic_writer, write_json_atomic

    checkpoint = read_checkpoint(cfg.ckpt_path)
    module = RankingRegModule.from_checkpoint(checkpoint)
    # The module's forward in eval mode is its net's: channels_last only changes the memory
    # layout and compile=true only the kernels, and neither belongs in an exported graph.
    net = module.net.to(memory_format=torch.contiguous_format).float().eval()
    model = writers.TwoOutputs(net).eval()
    size = int(checkpoint["hyper_parameters"]["run_config"]["data"]["img_size"])
    traced = writers.DYNAMIC_TRACE_BATCH if cfg.dynamic_batch else int(cfg.batch_size)
    generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    example = torch.randn(traced, 3, size, size, generator=generator)
    opset: int | None = None
    if cfg.format == "onnx":
        data, opset = writers.onnx_bytes(model, example, cfg.get("opset"), cfg.dynamic_batch)
    else:
        data = writers.torchscript_bytes(model, example)
    check = None
    if cfg.check:
        checked = CHECK_BATCH if cfg.dynamic_batch else int(cfg.batch_size)
        images = torch.randn(checked, 3, size, size, generator=generator)
        diffs = writers.max_abs_diffs(cfg.format, data, model, images)
        runtime = "onnxruntime (CPU)" if cfg.format == "onnx" else "torch.jit.load"
        shown = ", ".join(f"{name} {value:.2e}" for name, value in diffs.items())
        print(f"check: max |{runtime} - PyTorch| on a batch of {checked}: {shown}")
        worst = max(diffs.values())
        if not worst <= TOLERANCE:  # also catches NaN
            raise UserError(
                f"the exported {cfg.format} model differs from PyTorch by up to {worst:.3g} on a"
                f" random batch of {checked} ({shown}; tolerance {TOLERANCE:g}), so {out} was not"
                " written. Try another opset, format=torchscript, or check=false to write it"
                " anyway."
            )
        check = {"batch_size": checked, "tolerance": TOLERANCE, "max_abs_diff": diffs}
    sidecar = describe(cfg, checkpoint, net, out, opset, check)
    try:
        with atomic_writer(out, "wb") as stream:
            stream.write(data)
        write_json_atomic(sidecar_path(out), sidecar)
    except OSError as error:
        raise ConfigError(f"out={out} could not be written ({error.strerror or error}).") from None
    megabytes = len(data) / 2**20
    extra = f", opset {opset}" if opset is not None else ""
    print(f"wrote {out} ({megabytes:.1f} MiB{extra}) and its preprocessing {sidecar_path(out)}")
    return sidecar


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@report_user_errors
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
