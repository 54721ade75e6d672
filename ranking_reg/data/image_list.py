"""A dataset of image files with integer labels: the one class every parser returns.

It follows torchvision's ``ImageFolder`` convention (``.samples`` as ``(path, label)``,
``.targets``, ``.classes``, ``.class_to_idx``) and adds what the fine-grained benchmarks need on
top of a plain loader:

- ``boxes``: an optional crop per image (``path -> (x0, y0, x1, y1)`` in pixels of the original
  image, PIL's convention: 0-based, right/bottom exclusive), e.g. the bird/car/dog boxes;
- ``crop_bottom``: pixels cut off the bottom of every image (FGVC-Aircraft's 20-pixel copyright
  banner, Maji et al. 2013, README of the dataset);
- ``decode_size``: JPEG reduced-scale decoding (libjpeg's DCT scaling through PIL's
  ``Image.draft``) when the image is much larger than the network input, keeping the region that
  is used (box or whole image) at least ``decode_size`` pixels on its shorter side;
- ``skip_corrupt``: a corrupt or truncated file either raises :class:`DataError` naming it, or is
  reported once and replaced by the next readable sample;
- ``cache``: source path -> a prepared, already cropped and downscaled copy
  (:mod:`ranking_reg.data.image_cache`, ``data.cache_size``) that is read instead of the source;
  ``samples`` keep the source paths.

torchvision's datasets have none of these hooks (their loader sees only a path), hence our own.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ranking_reg.utils.errors import DataError

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

# Powers of two libjpeg can scale by while decoding (PIL's JpegImagePlugin.draft).
_JPEG_SCALES = (8, 4, 2, 1)


def _open_region(
    path: str, box: Box | None, crop_bottom: int, decode_size: int | None
) -> Image.Image:
    """Decode ``path`` and return the RGB crop ``box`` (minus the bottom banner).

    Raises the PIL/OS error of a corrupt file; the caller turns it into a DataError.
    """
    with Image.open(path) as im:
        width, height = im.size
        x0, y0, x1, y1 = 0.0, 0.0, float(width), float(max(height - crop_bottom, 1))
        if box is not None:
            bx0, by0, bx1, by1 = box
            x0, y0 = max(x0, bx0), max(y0, by0)
            x1, y1 = min(x1, bx1), min(y1, by1)
            if x1 - x0 < 1 or y1 - y0 < 1:  # a box outside the image: fall back to the image
                x0, y0, x1, y1 = 0.0, 0.0, float(width), float(max(height - crop_bottom, 1))
        scale = 1
        if decode_size and im.format == "JPEG":
            limit = min(x1 - x0, y1 - y0) / decode_size
            scale = next(s for s in _JPEG_SCALES if s <= limit) if limit >= 1 else 1
            if scale > 1:
                # Asking for (W // s, H // s) makes PIL pick exactly s: W // (W // s) lies in
                # [s, 2s) for every W >= s.
                drafted = im.draft("RGB", (width // scale, height // scale))
                # draft returns the original extent in decoded pixels: (0, 0, W / s, H / s).
                scale = round(width / drafted[1][2]) if drafted is not None else 1
        im.load()
        if scale > 1:
            w, h = im.size
            x0, y0 = math.floor(x0 / scale), math.floor(y0 / scale)
            x1, y1 = min(math.ceil(x1 / scale), w), min(math.ceil(y1 / scale), h)
        region = (int(x0), int(y0), int(x1), int(y1))
        if region != (0, 0, *im.size):
            im = im.crop(region)
        # convert() copies even an RGB image (~0.3 ms at 341 x 256, as much as decoding it)
        return im if im.mode == "RGB" else im.convert("RGB")


class ImageListDataset(Dataset):
    """Images listed as ``(path, label)`` with class names; see the module docstring."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: Callable | None = None,
        boxes: dict[str, Box] | None = None,
        crop_bottom: int = 0,
        skip_corrupt: bool = False,
        decode_size: int | None = None,
        cache: dict[str, str] | None = None,
    ) -> None:
        self.samples: list[tuple[str, int]] = [(str(p), int(y)) for p, y in samples]
        self.classes: list[str] = list(classes)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.targets: list[int] = [y for _, y in self.samples]
        self.transform = transform
        self.boxes = boxes
        self.crop_bottom = int(crop_bottom)
        self.skip_corrupt = bool(skip_corrupt)
        self.decode_size = int(decode_size) if decode_size else None
        self.cache = cache
        self._reported: set[str] = set()
        bad = [y for y in self.targets if not 0 <= y < len(self.classes)]
        if bad:
            raise DataError(
                f"label {bad[0]} is outside 0..{len(self.classes) - 1} for "
                f"{len(self.classes)} classes; the list file that produced it is inconsistent."
            )

    @property
    def imgs(self) -> list[tuple[str, int]]:
        """Alias of ``samples`` (torchvision's ImageFolder keeps both)."""
        return self.samples

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index`` with the box/banner crops applied, untransformed
        (its cached copy when there is one; a cached file that cannot be read is reported once
        and the source is read instead)."""
        cached = self.cache.get(self.samples[index][0]) if self.cache else None
        if cached is not None:
            try:
                return _open_region(cached, None, 0, self.decode_size)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
                if cached not in self._reported:
                    self._reported.add(cached)
                    message = f"cached image {cached} is unreadable ({error}); reading the source"
                    log.warning(message)
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
        return self.load_source(index)

    def load_source(self, index: int, decode_size: int | None = None) -> Image.Image:
        """:meth:`load_image` from the source file, ignoring the cache; ``decode_size`` replaces
        the dataset's own (the cache decodes at its ``cache_size``)."""
        path = self.samples[index][0]
        box = self.boxes.get(path) if self.boxes else None
        decode_size = decode_size if decode_size is not None else self.decode_size
        try:
            return _open_region(path, box, self.crop_bottom, decode_size)
        except FileNotFoundError as error:
            raise DataError(
                f"image file {path} does not exist (it was listed when the dataset was built); "
                "restore it or prepare the dataset again."
            ) from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DataError(
                f"image file {path} is corrupt or truncated and cannot be decoded ({error}); "
                "replace the file, delete it from the list, or set "
                "data.skip_corrupt=true to skip unreadable images with a warning."
            ) from error

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not self.skip_corrupt:
            return self._transformed(index, self.load_image(index))
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            try:
                image = self.load_image(i)
            except DataError as error:
                self._report(self.samples[i][0], error)
                continue
            return self._transformed(i, image)
        raise DataError(
            f"none of the {n} images of this dataset can be decoded (first: "
            f"{self.samples[0][0] if n else 'none'}); check the dataset folder."
        )

    def _transformed(self, index: int, image: Image.Image) -> tuple[Any, int]:
        label = self.samples[index][1]
        return (self.transform(image) if self.transform is not None else image), label

    def _report(self, path: str, error: DataError) -> None:
        if path in self._reported:
            return
        self._reported.add(path)
        message = f"skipping unreadable image {path}: {error.__cause__ or error}"
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def subset(self, indices: Sequence[int]) -> ImageListDataset:
        """A dataset of the samples at ``indices``, same classes/options (e.g. the long tail)."""
        return ImageListDataset(
            [self.samples[i] for i in indices],
            self.classes,
            transform=self.transform,
            boxes=self.boxes,
            crop_bottom=self.crop_bottom,
            skip_corrupt=self.skip_corrupt,
            decode_size=self.decode_size,
            cache=self.cache,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes"
            f"{', boxes' if self.boxes else ''}"
            f"{f', crop_bottom={self.crop_bottom}' if self.crop_bottom else ''}"
            f"{', cached' if self.cache else ''})"
        )
