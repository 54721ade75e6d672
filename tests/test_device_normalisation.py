"""data.normalize_on_device: uint8 from the workers, float + ImageNet normalisation after the
transfer (FGVRDataModule.on_after_batch_transfer) -- equal to the default path, seeding unchanged,
float32 reaching the module, predict's transform still the normalising one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config
from lightning.pytorch.callbacks import Callback
from PIL import Image

from ranking_reg.data.datamodule import FGVRDataModule
from ranking_reg.data.splits import SplitView
from ranking_reg.data.transforms import (
    AUGMENTS,
    eval_transform,
    normalize_batch,
    train_transform,
)


class _Images:
    """A base dataset of random RGB images of mixed sizes (what the parsers give: PIL, label)."""

    def __init__(self, count: int = 6) -> None:
        rng = np.random.default_rng(0)
        sizes = [(120, 80), (80, 120), (97, 61), (64, 64), (150, 100), (71, 90)]
        self.images = [
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in sizes[:count]
        ]
        self.samples = [(f"img{i}", i % 2) for i in range(count)]
        self.classes = ["a", "b"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.samples[index][1]


def _pipelines(stage: str, augment: str, normalize: bool):
    if stage == "train":
        return train_transform(48, flip=True, augment=augment, normalize=normalize)
    return eval_transform(48, augment=augment, normalize=normalize)


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("stage", ["train", "eval"])
def test_uint8_path_then_normalize_batch_equals_the_default_transform(augment, stage):
    base = _Images()
    default = SplitView(base, None, _pipelines(stage, augment, normalize=True))
    uint8 = SplitView(base, None, _pipelines(stage, augment, normalize=False))
    # (position, seed) keys: the per-sample seeding of seeded.py, so the random draws must match
    keys = [(i, 1000 + 7 * i) for i in range(len(base))]
    expected = torch.stack([default[k][0] for k in keys])
    raw = torch.stack([uint8[k][0] for k in keys])
    assert raw.dtype == torch.uint8 and raw.shape == expected.shape == (len(keys), 3, 48, 48)
    got = normalize_batch(raw)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    assert normalize_batch(expected) is expected  # already normalised: left alone


@pytest.mark.parametrize("size", [(224, 224), (37, 51), (1, 3)])
def test_fused_to_normalized_tensor_equals_torchvision_exactly(size):
    from torchvision import transforms as T

    from ranking_reg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToNormalizedTensor

    rng = np.random.default_rng(size[0])
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    fused = ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)
    rgb = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    got = fused(rgb)
    assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == (3, *size)
    assert torch.equal(got, reference(rgb))  # the same operations: bit-identical
    grey = Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).convert("RGB")
    assert torch.equal(fused(grey), reference(grey))
    # anything else (here an H x W x 3 array) goes through torchvision's pair
    array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    assert torch.equal(fused(array), reference(array))


def test_normalize_batch_refuses_other_integer_types():
    with pytest.raises(TypeError, match="uint8"):
        normalize_batch(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


def _digits(normalize_on_device: bool, augment: str = "rrc") -> FGVRDataModule:
    module = FGVRDataModule(
        "digits",
        batch_size=16,
        img_size=32,
        resize_size=32,
        eval_batch_size=64,
        num_workers=0,
        pin_memory=False,
        flip=True,  # digits keep flip=False in their config; here it exercises the flip draw
        crop_scale=(0.5, 1.0),
        augment=augment,
        normalize_on_device=normalize_on_device,
    )
    module.setup("fit")
    return module


@pytest.mark.parametrize("augment", AUGMENTS)
def test_data_module_batches_are_equal_after_the_transfer_hook(augment):
    default, on_device = _digits(False, augment), _digits(True, augment)
    assert FGVRDataModule("digits").normalize_on_device is False
    assert FGVRDataModule("digits", normalize_on_device=None).normalize_on_device is False
    pairs = [
        (default.train_dataloader(), on_device.train_dataloader()),
        (default.test_dataloader(), on_device.test_dataloader()),
    ]
    for loader_a, loader_b in pairs:
        batch_a, batch_b = next(iter(loader_a)), next(iter(loader_b))
        assert batch_a[0].dtype == torch.float32 and batch_b[0].dtype == torch.uint8
        assert default.on_after_batch_transfer(batch_a, 0) is batch_a  # default: untouched
        moved = on_device.on_after_batch_transfer(batch_b, 0)
        assert moved[0].dtype == torch.float32
        assert torch.allclose(moved[0], batch_a[0], rtol=0, atol=1e-6)
        assert torch.equal(moved[1], batch_a[1]) and torch.equal(moved[2], batch_a[2])


class _InputDtypes(Callback):
    """Records the dtype of the images reaching the LightningModule's forward, per stage."""

    def __init__(self) -> None:
        self.seen: dict[str, set[torch.dtype]] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        def record(module, args) -> None:
            state = trainer.state.stage.value if trainer.state.stage else "?"
            self.seen.setdefault(state, set()).add(args[0].dtype)

        if not getattr(pl_module, "_dtype_hook", False):
            pl_module.register_forward_pre_hook(record)
            pl_module._dtype_hook = True


def test_training_with_normalize_on_device_feeds_float32_and_matches_predict(tmp_path):
    from ranking_reg.inference.checkpoint import load_checkpoint
    from ranking_reg.train import run

    dtypes = _InputDtypes()
    overrides = [
        *TINY,
        "logger=none",
        "trainer.limit_train_batches=2",
        "data.normalize_on_device=true",
    ]
    metrics = run(compose_config(overrides, output_dir=tmp_path), extra_callbacks=[dtypes])
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert "test/knn_acc@1" in metrics  # the gallery/val test loaders went through the hook too
    assert {"train", "validate", "test"} <= set(dtypes.seen)
    assert set().union(*dtypes.seen.values()) == {torch.float32}

    # predict's path (its own normalising eval transform) and the device path give equal logits
    best = next((tmp_path / "checkpoints").glob("best-*.ckpt"))
    loaded = load_checkpoint(best)
    assert loaded.run_config["data"]["normalize_on_device"] is True
    data = _digits(True)
    images, _, positions = next(iter(data.test_dataloader()))
    device_path = data.on_after_batch_transfer([images, None, positions], 0)[0]
    view = data.test_dataset
    predict_path = torch.stack([loaded.transform(view.load_image(int(p))) for p in positions])
    assert predict_path.dtype == torch.float32
    assert torch.allclose(device_path, predict_path, rtol=0, atol=1e-6)
    with torch.inference_mode():
        logits_device = loaded.module(device_path).logits
        logits_predict = loaded.module(predict_path).logits
    assert torch.allclose(logits_device, logits_predict, rtol=0, atol=1e-6)


def test_true_half_precision_gets_its_dtype_after_the_hook():
    # the precision plugin converts a batch before the transfer, when its images are uint8
    import lightning as L

    data = _digits(True)
    data.trainer = L.Trainer(
        precision="bf16-true", accelerator="cpu", logger=False, enable_checkpointing=False
    )
    images, labels, positions = next(iter(data.test_dataloader()))
    moved = data.on_after_batch_transfer((images, labels, positions), 0)
    assert isinstance(moved, tuple) and moved[0].dtype == torch.bfloat16
    assert torch.equal(moved[1], labels)
