"""The images an ``inputs=`` path names, in a defined order, and how one image is decoded.

``inputs`` is one of:

- an image file (extension in :data:`IMAGE_EXTENSIONS`, any case): that image;
- a folder: every image file under it, recursively, in *sorted walk order*: the paths relative
  to the folder sorted component by component, names compared as Python strings (code points):
  ``a/z.png`` before ``b.png``, and ``b/a.png`` before ``b.png`` (the folder ``b`` sorts before
  the file ``b.png``), i.e. a depth-first walk that visits each folder's entries, files and
  folders together, in sorted name order. Files with other extensions and hidden entries (a name
  starting with ``.``) are skipped; symbolic links are followed, a folder reached twice (a link
  cycle) is walked once;
- a list file (any other file): ``*.csv`` is read in the format of the ``csv`` dataset parser
  (``path,label[,split]`` rows, an optional header, ``#`` comment lines; only ``path`` is used),
  any other file as one path per line (blank and ``#`` lines skipped). Relative paths are
  resolved against the list file's folder; the order is the file's.

Listed paths are not checked here: a missing or undecodable file becomes an error row of the
predictions, not a failure of the run. Decoding is the training datasets' own
(:class:`~ranking_reg.data.image_list.ImageListDataset`): any PIL mode (grey, RGBA, CMYK,
palette, ...) is converted with ``convert("RGB")``, and ``decode_size`` applies libjpeg's
reduced-scale decoding exactly as the checkpoint's data config did.
"""

from __future__ import annotations

import csv
import io
import os

from PIL import Image

from ranking_reg.data.image_list import _open_region
from ranking_reg.data.parsers._common import read_text
from ranking_reg.data.parsers.csv_list import HEADER_PATH
from ranking_reg.utils.errors import ConfigError, DataError

# torchvision's ImageFolder extensions (what the folder dataset reads)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def walk_images(folder: str) -> list[str]:
    """Image files under ``folder`` in sorted walk order (module docstring), joined to it."""
    found: list[str] = []
    seen: set[str] = set()  # real paths of the folders visited: a symlink cycle ends here

    def visit(directory: str) -> None:
        real = os.path.realpath(directory)
        if real in seen:
            return
        seen.add(real)
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    visit(entry.path)
                elif is_image_file(entry.name):
                    found.append(entry.path)

    visit(folder)
    return found


def read_list_file(path: str) -> list[str]:
    """The paths a list file names, resolved against its folder (module docstring)."""
    text = read_text(path, "the list file")
    base = os.path.dirname(path)
    names: list[str] = []
    if path.lower().endswith(".csv"):
        for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            row = [cell.strip() for cell in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            if number == 1 and row[0].lower() in HEADER_PATH:
                continue
            names.append(row[0])
    else:
        names = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    return [name if os.path.isabs(name) else os.path.join(base, name) for name in names]


def gather_inputs(inputs: str) -> list[str]:
    """The image paths of ``inputs``, in input order; a DataError when it names none."""
    if not os.path.exists(inputs):
        raise ConfigError(
            f"inputs={inputs} does not exist; give an image, a folder of images or a list file"
            " (one path per line, or a csv of path,label rows)."
        )
    if os.path.isdir(inputs):
        paths = walk_images(inputs)
        what = f"the folder {inputs} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
    elif is_image_file(inputs):
        return [inputs]
    else:
        paths = read_list_file(inputs)
        what = f"the list file {inputs} lists no images"
    if not paths:
        raise DataError(f"inputs={inputs}: {what}; there is nothing to predict.")
    return paths


def load_image(path: str, decode_size: int | None = None) -> Image.Image:
    """The RGB image at ``path``; a DataError naming the file when it cannot be decoded."""
    try:
        return _open_region(path, None, 0, decode_size)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an image") from None
    # PIL's UnidentifiedImageError is an OSError; a decompression bomb is neither
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise DataError(f"{path} cannot be decoded as an image ({detail})") from None
