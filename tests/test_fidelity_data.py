"""The authors' data protocol as switches: val_fraction=0, augment=resize_crop|inception, and the
config keys for them (class_sampling is checked in tests/test_pk_sampler.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ranking_reg.config.schema import SCHEMA, check_value
from ranking_reg.data.datamodule import FGVRDataModule
from ranking_reg.data.pk_sampler import CLASS_SAMPLING
from ranking_reg.data.registry import build_dataset
from ranking_reg.data.splits import SplitView
from ranking_reg.data.transforms import (
    AUGMENTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_transform,
)
from ranking_reg.utils.errors import ConfigError


def _image(width=120, height=80, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _digits(**options):
    module = FGVRDataModule(
        "digits",
        batch_size=16,
        img_size=32,
        resize_size=32,
        num_workers=0,
        pin_memory=False,
        flip=False,
        **options,
    )
    module.setup()
    return module


# -- val_fraction = 0 --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_val():
    return _digits(val_fraction=0.0)


def test_val_fraction_zero_trains_on_the_whole_training_split(no_val):
    module = no_val
    base = build_dataset("digits", None, "train")
    assert len(module.train_dataset) == len(base)
    assert module.train_dataset.targets == [int(label) for _, label in base.samples]
    assert module.val_dataset is None and module.has_validation is False
    assert module.val_dataloader() == []
    assert module.test_dataset is not None and len(module.test_dataset) > 0
    with pytest.raises(ValueError, match="no validation split"):
        module.eval_dataset("val")
    images, labels, _ = next(iter(module.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16,)


def test_a_positive_val_fraction_still_holds_out_a_validation_split():
    module = _digits(val_fraction=0.1)
    assert module.has_validation and len(module.val_dataset) > 0
    assert len(module.train_dataset) + len(module.val_dataset) == len(
        build_dataset("digits", None, "train")
    )


# -- the config keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("data.val_fraction", [0, 0.0, 0.5], [1.0, -0.1]),
        ("data.augment", list(AUGMENTS), ["random", 1]),
        ("data.class_sampling", list(CLASS_SAMPLING), ["balanced", None]),
    ],
)
def test_schema_rules_of_the_new_keys(key, good, bad):
    for value in good:
        check_value(key, value)
    for value in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_value(key, value)
    assert SCHEMA[key].accepts


def test_unknown_choices_are_refused_by_the_code_that_implements_them():
    # (the config schema refuses them before anything is built: tests above)
    with pytest.raises(ConfigError, match="data.augment=random"):
        FGVRDataModule("digits", augment="random").setup()
    unknown = FGVRDataModule("digits", class_sampling="balanced")
    unknown.setup()
    with pytest.raises(ConfigError, match="data.class_sampling=balanced"):
        unknown.train_dataloader()
    module = _digits(class_sampling="proportional", augment="resize_crop")
    loader = module.train_dataloader()
    assert loader.batch_sampler.batch_sampler.class_sampling == "proportional"
    assert isinstance(module.train_dataset.transform.transforms[1], T.RandomCrop)
    assert FGVRDataModule("digits").class_sampling == "uniform"
    assert FGVRDataModule("digits").augment == "rrc"


# -- augment -----------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("flip", [True, False])
def test_every_augment_gives_img_size_tensors_and_honours_flip(augment, flip):
    image = _image()
    train = train_transform(48, flip=flip, augment=augment)
    assert train(image).shape == (3, 48, 48)
    assert eval_transform(48, augment=augment)(image).shape == (3, 48, 48)
    flips = [t for t in train.transforms if isinstance(t, T.RandomHorizontalFlip)]
    assert len(flips) == int(flip)


def test_resize_crop_is_the_authors_square_resize_then_crop():
    image = _image(120, 80)
    hand = T.Compose(
        [
            T.Resize((256, 256), antialias=True),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    assert torch.equal(eval_transform(224, augment="resize_crop")(image), hand(image))
    train = train_transform(224, augment="resize_crop")
    assert train.transforms[0].size == [256, 256] or tuple(train.transforms[0].size) == (256, 256)
    assert isinstance(train.transforms[1], T.RandomCrop) and train.transforms[1].size == (224, 224)
    # an explicit resize_size replaces 256
    assert tuple(train_transform(32, augment="resize_crop", resize_size=40).transforms[0].size) == (
        40,
        40,
    )


def test_inception_eval_keeps_the_central_87_5_percent():
    # A 64 x 64 image: the central 87.5 % is the 56 x 56 square from (4, 4); its border is red.
    inner = np.random.default_rng(1).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    pixels[4:60, 4:60] = inner
    out = eval_transform(56, augment="inception")(Image.fromarray(pixels))
    expected = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(Image.fromarray(inner)))
    assert torch.allclose(out, expected, atol=1e-6)
    # non-square: tf.image.central_crop's offsets, then a square resize (aspect ignored)
    image = _image(64, 48)
    hand = T.Compose(
        [
            T.Lambda(lambda im: im.crop((4, 3, 60, 45))),
            T.Resize((32, 32), antialias=True),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    assert torch.equal(eval_transform(32, augment="inception")(image), hand(image))


def test_inception_train_crop_ranges():
    crop = train_transform(48, augment="inception").transforms[0]
    assert isinstance(crop, T.RandomResizedCrop)
    assert crop.scale == (0.05, 1.0) and crop.ratio == (0.75, 1.33)


class _Base:
    classes = ["a"]

    def __init__(self):
        self.samples = [("x.jpg", 0)]

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return _image(90, 70, seed=i), 0


@pytest.mark.parametrize("augment", AUGMENTS)
def test_seeded_per_sample_augmentation_still_applies(augment):
    view = SplitView(_Base(), None, train_transform(48, augment=augment))
    first, again, other = view[(0, 11)][0], view[(0, 11)][0], view[(0, 12)][0]
    assert torch.equal(first, again) and not torch.equal(first, other)
