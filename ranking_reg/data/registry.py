"""``build_dataset(name, root, split, transform=None, **options)`` and the name -> builder table.

A builder is ``fn(root, split, transform=None, **options)``; the options it accepts are its
keyword parameters, so an unknown option (a typo in ``data.<key>``) is caught here, by name, for
every dataset, including ones a user registers (``register_dataset("mine", fn)``).

Every built-in dataset is one row of ``_BUILTIN`` (name -> "module:function"), imported on first
use; nothing registers itself on import.

``cache_size``/``cache_dir`` (the prepared image cache, :mod:`ranking_reg.data.image_cache`) are
handled here once for every dataset of image files, built-in or registered: the builder returns
its :class:`ImageListDataset` and this module caches it, so no parser knows about the cache.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

from ranking_reg.utils.errors import ConfigError

Builder = Callable[..., Any]

REGISTRY: dict[str, Builder] = {}

# Parsers are imported on first use: building one dataset should not import the others.
_BUILTIN = {
    "digits": "ranking_reg.data.digits:build_digits",
    "aircraft": "ranking_reg.data.parsers.aircraft:build",
    "nabirds": "ranking_reg.data.parsers.nabirds:build",
    "flowers102": "ranking_reg.data.parsers.flowers102:build",
    "cars": "ranking_reg.data.parsers.cars:build",
    "dogs": "ranking_reg.data.parsers.dogs:build",
    "folder": "ranking_reg.data.parsers.folder:build",
    "csv": "ranking_reg.data.parsers.csv_list:build",
}
_FIXED = ("root", "split", "transform")
CACHE_OPTIONS = ("cache_size", "cache_dir")  # the image cache: every dataset of image files


def register_dataset(name: str, fn: Builder) -> None:
    """Make ``fn(root, split, transform=None, **options)`` available as ``data=<name>``."""
    REGISTRY[name] = fn


def dataset_names() -> list[str]:
    """Every name ``build_dataset`` accepts, sorted."""
    return sorted(set(REGISTRY) | set(_BUILTIN))


def get_builder(name: str) -> Builder:
    if name not in REGISTRY and name in _BUILTIN:
        module, function = _BUILTIN[name].split(":")
        register_dataset(name, getattr(importlib.import_module(module), function))
    if name not in REGISTRY:
        raise ConfigError(
            f"unknown dataset {name!r} (option data / data.name); choose one of "
            f"{', '.join(dataset_names())}."
        )
    return REGISTRY[name]


def accepted_options(name: str) -> list[str] | None:
    """The option names dataset ``name`` accepts (None: the builder takes any ``**kwargs``):
    its builder's keyword parameters, plus ``cache_size``/``cache_dir`` when the builder is
    declared to return an ``ImageListDataset`` (every built-in image dataset). The cache options
    are handled by :func:`build_dataset`, so they work with any builder that returns one."""
    signature = inspect.signature(get_builder(name))
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    own = [p.name for p in params if p.name not in _FIXED and p.kind is not p.VAR_POSITIONAL]
    returns = signature.return_annotation
    images = getattr(returns, "__name__", returns) == "ImageListDataset"
    return own + [o for o in CACHE_OPTIONS if o not in own] if images else own


def needs_root(name: str) -> bool:
    """Whether dataset ``name`` reads files under ``data.root`` (its builder's ``root`` has no
    default; the embedded digits take ``root=None``)."""
    parameter = inspect.signature(get_builder(name)).parameters.get("root")
    return parameter is None or parameter.default is inspect.Parameter.empty


def build_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    transform: Callable | None = None,
    *,
    cache_workers: int | None = None,
    progress: bool = True,
    **options,
) -> Any:
    """The ``split`` ("train": the paper's training split, or "test") of dataset ``name``.

    ``options`` are the dataset's config keys (``level``, ``crop_banner``, ``use_bbox``,
    ``skip_corrupt``, ``decode_size``, ``list_file``, ...); an option the dataset does not take
    raises ConfigError naming it. ``root=None`` is for datasets that read no files (digits);
    the others raise ConfigError naming ``data.root``.

    ``cache_size=S`` (any dataset of image files) reads every image from a copy cropped and
    downscaled to a shorter side of S pixels, written on first use into ``cache_dir`` (default
    ``<root>/.rr_cache/<name>-<S>``) by ``cache_workers`` threads (default: all usable cores)
    with a progress bar unless ``progress=False``.
    """
    if split not in ("train", "test"):  # checked here once for every builder
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}.")
    from ranking_reg.data.image_cache import check_cache_size

    cache_size = check_cache_size(options.pop("cache_size", None))
    cache_dir = options.pop("cache_dir", None)
    if cache_size is not None and not needs_root(name):
        _refuse_cache(name, cache_size)
    dataset = _build(name, root, split, transform, options)
    if cache_size is None:
        return dataset
    return _cached(dataset, name, root, split, cache_size, cache_dir, cache_workers, progress)


def _cached(
    dataset: Any,
    name: str,
    root: str | os.PathLike | None,
    split: str,
    size: int,
    cache_dir: str | os.PathLike | None,
    workers: int | None,
    progress: bool,
) -> Any:
    from ranking_reg.data.image_cache import build_cache, default_cache_dir
    from ranking_reg.data.image_list import ImageListDataset

    if not isinstance(dataset, ImageListDataset):
        _refuse_cache(name, size)
    folder = cache_dir if cache_dir else default_cache_dir(root, name, size)
    build_cache(dataset, size, os.fspath(folder), workers, progress, f"{name} {split}")
    return dataset


def _refuse_cache(name: str, size: int) -> None:
    raise ConfigError(
        f"data.cache_size={size}: data={name} does not read image files (its images are held "
        f"in memory{', 8x8 digit arrays' if name == 'digits' else ''}), so there is nothing to "
        "cache; set data.cache_size=null."
    )


def _build(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    transform: Callable | None,
    options: dict[str, Any],
) -> Any:
    builder = get_builder(name)
    accepted = accepted_options(name)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"dataset {name!r} has no option {unknown[0]!r} (data.{unknown[0]}); its options "
                f"are {', '.join(accepted) or 'none'}."
            )
    if root is None:
        if needs_root(name):
            raise ConfigError(
                f"data={name} reads its images under data.root, which is not set; give"
                " data.root=/path/to/datasets (the folder that holds the dataset, by default"
                " ./data or $RR_DATA_ROOT)."
            )
        return builder(None, split, transform=transform, **options)
    return builder(os.fspath(root), split, transform=transform, **options)
