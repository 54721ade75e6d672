"""``export``: the exported model gives the module's two outputs (any batch size), and the
sidecar's preprocessing, applied by hand, is the eval transform."""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli
from hydra.utils import instantiate
from PIL import Image

from ranking_reg.data.transforms import eval_transform
from ranking_reg.export import export, file_sha256, sidecar_path
from ranking_reg.lightning import RankingRegModule
from ranking_reg.models import export as writers
from ranking_reg.utils.errors import ConfigError, UserError


def _config(ckpt, out_dir, *overrides: str):
    return compose_config([f"ckpt_path={ckpt}", *overrides], output_dir=out_dir, name="export")


@pytest.fixture(scope="module")
def last_ckpt(digits_checkpoint):
    return digits_checkpoint[0] / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def reference(last_ckpt):
    """The module's own forward in eval mode on a batch of 5 (the export traces 2, checks 3)."""
    module = RankingRegModule.load_from_checkpoint(last_ckpt).eval()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = module(images)
    return images, output.logits.numpy(), output.embedding.numpy()


def _export(ckpt, out_dir, kind: str, name: str):
    cfg = _config(ckpt, out_dir, f"format={kind}", f"out={out_dir / name}")
    sidecar = export(cfg)
    assert sidecar_path(out_dir / name) == f"{out_dir / name}.json"
    assert json.loads((out_dir / f"{name}.json").read_text()) == sidecar
    return out_dir / name, sidecar


@pytest.fixture(scope="module")
def exported_onnx(last_ckpt, tmp_path_factory):
    """(model file, sidecar) of the digits checkpoint as ONNX: ~4 s, mostly torch.export's and
    onnxscript's start-up."""
    return _export(last_ckpt, tmp_path_factory.mktemp("onnx"), "onnx", "model.onnx")


@pytest.fixture(scope="module")
def exported_torchscript(last_ckpt, tmp_path_factory):
    return _export(last_ckpt, tmp_path_factory.mktemp("torchscript"), "torchscript", "model.pt")


def _close(got, expected) -> None:
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert np.abs(g - e).max() <= 1e-4


@pytest.mark.slow
def test_onnx_file_gives_both_heads_for_any_batch_size(exported_onnx, reference, last_ckpt):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    path, sidecar = exported_onnx
    images, logits, embedding = reference
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert (given.name, given.shape) == ("images", ["batch", 3, 32, 32])
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding"]
    _close(session.run(["logits", "embedding"], {"images": images.numpy()}), (logits, embedding))
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)

    assert sidecar["input"] == {
        **sidecar["input"],
        "name": "images",
        "shape": ["batch", 3, 32, 32],
        "dtype": "float32",
        "layout": "NCHW",
        "channels": "RGB",
    }
    outputs = {o["name"]: o["shape"] for o in sidecar["outputs"]}
    assert outputs == {"logits": ["batch", 10], "embedding": ["batch", 256]}
    assert sidecar["classes"] == [str(d) for d in range(10)]
    assert sidecar["checkpoint"]["sha256"] == file_sha256(str(last_ckpt))
    model_opset = {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""]
    assert sidecar["opset"] == model_opset and sidecar["torch_version"] == torch.__version__
    assert max(sidecar["check"]["max_abs_diff"].values()) <= 1e-4


def test_torchscript_file_gives_both_heads_for_any_batch_size(
    exported_torchscript, reference, last_ckpt
):
    path, sidecar = exported_torchscript
    images, logits, embedding = reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        got = [t.numpy() for t in loaded(images)]
    _close(got, (logits, embedding))
    assert sidecar["input"]["shape"] == ["batch", 3, 32, 32]
    assert sidecar["opset"] is None and sidecar["exporter"] == "torch.jit.trace"
    assert sidecar["checkpoint"]["path"] == str(last_ckpt)


# -- the sidecar's preprocessing, applied by hand ----------------------------------------------
def _by_hand(image: Image.Image, spec: dict) -> np.ndarray:
    """The documented steps with PIL and numpy only, read from the sidecar's numbers."""
    array = None
    for step in spec["steps"]:
        op = step["op"]
        if op == "convert":
            image = image.convert(step["mode"])
        elif op == "resize_shorter_side":
            width, height = image.size
            short, long = min(width, height), max(width, height)
            if short != step["size"]:
                new_long = int(step["size"] * long / short)
                size = (step["size"], new_long) if width <= height else (new_long, step["size"])
                image = image.resize(size, Image.BILINEAR)
        elif op == "resize":
            height, width = step["size"]
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
        elif op == "central_fraction":
            width, height = image.size
            top = int((height - height * step["fraction"]) / 2)
            left = int((width - width * step["fraction"]) / 2)
            image = image.crop((left, top, width - left, height - top))
        elif op == "center_crop":
            crop_h, crop_w = step["size"]
            pixels = np.asarray(image)
            pad_h, pad_w = max(crop_h - pixels.shape[0], 0), max(crop_w - pixels.shape[1], 0)
            pad = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
            pixels = np.pad(pixels, pad)
            top = round((pixels.shape[0] - crop_h) / 2)
            left = round((pixels.shape[1] - crop_w) / 2)
            image = Image.fromarray(pixels[top : top + crop_h, left : left + crop_w])
        elif op == "to_float":
            array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) * step["scale"]
        elif op == "normalize":
            mean = np.array(step["mean"], dtype=np.float32)[:, None, None]
            std = np.array(step["std"], dtype=np.float32)[:, None, None]
            array = (array - mean) / std
        else:
            raise AssertionError(f"undocumented step {op}")
    return array


@pytest.mark.parametrize(
    ("img_size", "resize_size", "augment"),
    [
        (32, 32, "rrc"),  # the checkpoint's own (checked against its sidecar below)
        (32, None, "rrc"),
        (32, 29, "rrc"),  # shorter than the crop: padded
        (32, 40, "resize_crop"),
        (32, 28, "resize_crop"),
        (32, None, "inception"),
    ],
)
def test_the_documented_preprocessing_is_the_eval_transform(img_size, resize_size, augment):
    spec = writers.preprocessing_spec(img_size, resize_size, augment)
    pixels = np.random.default_rng(0).integers(0, 256, (37, 48, 3), dtype=np.uint8)
    # 48 x 37 -> shorter side 32 makes 41 x 32: a centre crop whose offset 4.5 rounds to even
    for image in (Image.fromarray(pixels), Image.fromarray(pixels[:, :, 0]).convert("L")):
        expected = eval_transform(img_size, resize_size, augment)(image.convert("RGB")).numpy()
        got = _by_hand(image, spec)
        assert got.shape == expected.shape == (3, img_size, img_size)
        assert np.abs(got - expected).max() <= 1e-5


def test_the_sidecar_documents_the_checkpoints_eval_transform(exported_torchscript, last_ckpt):
    spec = exported_torchscript[1]["preprocessing"]
    checkpoint = torch.load(last_ckpt, weights_only=True)
    data = checkpoint["hyper_parameters"]["run_config"]["data"]
    trained = (data["img_size"], data["resize_size"], data["augment"])
    assert (spec["img_size"], spec["resize_size"], spec["augment"]) == trained == (32, 32, "rrc")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8))
    expected = eval_transform(*trained)(image).numpy()
    assert np.abs(_by_hand(image, spec) - expected).max() <= 1e-5


# -- errors ---------------------------------------------------------------------------------------
def test_bad_options_are_config_errors(last_ckpt, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="format=keras is unknown"):
        export(_config(last_ckpt, tmp_path, "format=keras"))
    with pytest.raises(ConfigError, match="is not a file"):
        export(_config(tmp_path / "missing.ckpt", tmp_path))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="is not a folder"):
        export(_config(last_ckpt, tmp_path, f"out={tmp_path / 'a_file' / 'model.onnx'}"))
    with pytest.raises(ConfigError, match="opset=11"):
        export(_config(last_ckpt, tmp_path, "opset=11"))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    with pytest.raises(ConfigError, match=r"pip install 'ranking_reg\[export\]'"):
        export(_config(last_ckpt, tmp_path))


def test_a_failed_check_writes_nothing(last_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "max_abs_diffs", lambda *a: {"logits": 0.5, "embedding": 0.0})
    out = tmp_path / "model.pt"
    with pytest.raises(UserError, match="differs from PyTorch by up to 0.5"):
        export(_config(last_ckpt, tmp_path, "format=torchscript", f"out={out}"))
    assert list(tmp_path.iterdir()) == []


def test_the_cli_reports_a_bad_format_in_one_paragraph(last_ckpt, tmp_path):
    result = run_cli(
        "ranking_reg.export", f"ckpt_path={last_ckpt}", "format=tflite", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "format=tflite is unknown" in result.stderr


# -- a timm backbone ------------------------------------------------------------------------------
def _resnet18() -> torch.nn.Module:
    cfg = compose_config(["backbone=resnet18", "backbone.pretrained=false", "data.img_size=64"])
    cfg.model.net.num_classes = 5
    torch.manual_seed(0)
    return writers.TwoOutputs(instantiate(cfg.model.net)).eval()


def test_a_resnet18_network_exports_to_torchscript():
    """A timm backbone traces with both heads. (Its ONNX export works too, 1e-7 from PyTorch,
    but costs ~5 s of the dynamo exporter; the ONNX path is tested on the checkpoint above.)"""
    model = _resnet18()
    example, images = torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64)
    data = writers.torchscript_bytes(model, example)
    assert max(writers.max_abs_diffs("torchscript", data, model, images).values()) <= 1e-4
