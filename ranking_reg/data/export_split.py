"""Write one split of a configured dataset as PNG files: ``python -m ranking_reg.data.export_split
data=<name> split=test out=DIR [data.<key>=value ...]``.

Each image is the dataset's own decoded RGB image (boxes and banner crops applied, as a model's
transform receives it), saved losslessly as ``DIR/<class>/<position>.png`` (``position``: its
index in the split, six digits, so a sorted walk of ``DIR`` lists the split in order; ``/`` in a
class name becomes ``_``). ``DIR/<split>.csv`` lists them in the format of the ``csv`` dataset
parser (``path,label`` with a header, paths relative to ``DIR``, the label the class name), so
``python -m ranking_reg.predict inputs=DIR/test.csv`` predicts the split in its own order and
``data=csv data.root=DIR data.list_file=test.csv`` reads it back as a dataset. The data options
are the ``train`` config's (``data=<name>``, ``data.root=...``); ``split`` is ``train`` (the
whole training split, before any validation carve) or ``test``.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from typing import Any

from ranking_reg.utils.errors import ConfigError, report_user_errors
from ranking_reg.utils.io import atomic_writer, write_text_atomic
from ranking_reg.utils.paths import CONFIG_DIR

USAGE = (
    "python -m ranking_reg.data.export_split data=<name> split=train|test out=DIR [data.root=...]"
)


def parse_args(argv: list[str]) -> tuple[str, str, list[str]]:
    """(split, out, the overrides for the data config) of ``key=value`` arguments."""
    split, out, overrides = "test", None, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument {arg!r} is not key=value. Usage: {USAGE}")
        if key == "split":
            split = value
        elif key == "out":
            out = value
        elif key == "data" or key.startswith(("data.", "+data.", "~data.")):
            overrides.append(arg)
        else:
            raise ConfigError(f"unknown option {key}. Usage: {USAGE}")
    if split not in ("train", "test"):
        raise ConfigError(f"split={split}: expects train or test.")
    if not out:
        raise ConfigError(f"out is required. Usage: {USAGE}")
    return split, out, overrides


def split_base(overrides: list[str], split: str) -> Any:
    """The untransformed ``split`` dataset of the data config ``overrides`` compose."""
    from hydra import compose, initialize_config_dir

    from ranking_reg.utils.hydra_utils import build

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = build(cfg.data, "data")
    datamodule.setup("test")
    view = datamodule.train_dataset if split == "train" else datamodule.test_dataset
    return view.base


def folder_names(classes: list[str]) -> list[str]:
    """One folder name per class: the name with path separators replaced, made unique."""
    names: list[str] = []
    for label, name in enumerate(classes):
        safe = name.replace(os.sep, "_").replace("/", "_").strip() or f"class{label}"
        names.append(safe if safe not in names and safe not in (".", "..") else f"{safe}-{label}")
    return names


def export_split(dataset: Any, out: str, split: str) -> str:
    """Write ``dataset``'s images and ``out/<split>.csv`` (module docstring); returns the csv."""
    classes = [str(c) for c in dataset.classes]
    folders = folder_names(classes)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["path", "label"])
    for position in range(len(dataset)):
        label = int(dataset.targets[position])
        relative = f"{folders[label]}/{position:06d}.png"
        path = os.path.join(out, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_writer(path, "wb") as stream:
            dataset.load_image(position).save(stream, format="PNG")
        writer.writerow([relative, classes[label]])
    list_file = os.path.join(out, f"{split}.csv")
    write_text_atomic(list_file, rows.getvalue())
    return list_file


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    split, out, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    dataset = split_base(overrides, split)
    list_file = export_split(dataset, out, split)
    print(f"{len(dataset)} images of the {split} split -> {out} (list: {list_file})")


if __name__ == "__main__":
    main()
