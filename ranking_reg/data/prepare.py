"""``python -m ranking_reg.data.prepare NAME [NAME ...] --root DIR``: put datasets on disk.

Downloads what has a public URL (FGVC-Aircraft, Flowers-102, Stanford Dogs) with a progress bar,
verifies checksums, and unpacks into the layout the parsers read (README: Datasets). For Stanford Cars
and NABirds, which need a manual step, it prints where to get them and where to put them.

Nothing is written half: a download goes to ``<file>.part`` and is renamed once its checksum
holds; archives are unpacked into a hidden staging folder under ``--root`` that is renamed into
place at the end. torchvision's ``download_url`` writes straight to the final name and raises a
bare RuntimeError on a checksum mismatch, hence this module's own small downloader.

``--cache-size S`` also writes the prepared image cache of both splits ahead of training
(:mod:`ranking_reg.data.image_cache`, ``data.cache_size=S``); it works for every image dataset,
``folder`` and ``csv`` included (nothing to download there). Dataset options that change the
cached pixels (``use_bbox``, ``crop_banner``) must match the training run's: ``--option
use_bbox=true``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from tqdm import tqdm

from ranking_reg.utils.errors import DataError, UserError, exit_with_user_error


@dataclass(frozen=True)
class Resource:
    """One file to fetch: unpacked into ``extract_to`` (under the staging root) if an archive,
    else copied into the dataset folder."""

    url: str
    md5: str | None = None  # None: not published anywhere we trust; the computed md5 is printed
    extract_to: str | None = None  # relative to root; None: a plain file, copied into ``folder``

    @property
    def filename(self) -> str:
        return os.path.basename(self.url.split("?")[0])


@dataclass(frozen=True)
class Recipe:
    folder: str  # the folder under root the parser reads (created by this recipe)
    resources: tuple[Resource, ...] = ()
    manual: str = ""  # instructions when there is nothing to download
    size: str = ""
    homepage: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_DOGS = "http://vision.stanford.edu/aditya86/ImageNetDogs"

# md5s: Flowers-102 as torchvision's Flowers102 lists them; Dogs as several independent public
# loaders list them (they agree). FGVC-Aircraft publishes its md5 only on its web page, so it is
# printed after the download for the user to compare.
RECIPES: dict[str, Recipe] = {
    "aircraft": Recipe(
        folder="fgvc-aircraft-2013b",
        resources=(
            Resource(f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz", None, ""),
        ),
        size="2.75 GB download; 10,000 images, 100 variants",
        homepage=f"{_VGG}/fgvc-aircraft/",
    ),
    "flowers102": Recipe(
        folder="flowers-102",
        resources=(
            Resource(
                f"{_VGG}/flowers/102/102flowers.tgz",
                "52808999861908f626f3c1f4e79d11fa",
                "flowers-102",
            ),
            Resource(f"{_VGG}/flowers/102/imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
            Resource(f"{_VGG}/flowers/102/setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c"),
        ),
        size="330 MB download; 8,189 images, 102 classes",
        homepage=f"{_VGG}/flowers/102/",
    ),
    "dogs": Recipe(
        folder="stanford_dogs",
        resources=(
            Resource(f"{_DOGS}/images.tar", "1bb1f2a596ae7057f99d7d75860002ef", "stanford_dogs"),
            Resource(f"{_DOGS}/lists.tar", "edbb9f16854ec66506b5f09b583e0656", "stanford_dogs"),
            Resource(
                f"{_DOGS}/annotation.tar", "4298cc0031f6bc6e74612ac83b5988e2", "stanford_dogs"
            ),
        ),
        size="780 MB download; 20,580 images, 120 breeds",
        homepage=f"{_DOGS}/",
    ),
    "cars": Recipe(
        folder="stanford_cars",
        size="1.9 GB; 16,185 images, 196 classes",
        homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        manual=(
            "Stanford Cars can no longer be downloaded from its home page "
            "(https://ai.stanford.edu/~jkrause/cars/car_dataset.html, offline since 2023: "
            "https://github.com/pytorch/vision/issues/7545, whose comments link the devkit and "
            "cars_test_annos_withlabels.mat). Get the images from a mirror you trust (e.g. "
            "https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset) and lay them "
            "out as "
            "either\n"
            "  {root}/stanford_cars/devkit/cars_meta.mat\n"
            "  {root}/stanford_cars/devkit/cars_train_annos.mat\n"
            "  {root}/stanford_cars/cars_test_annos_withlabels.mat\n"
            "  {root}/stanford_cars/cars_train/*.jpg\n"
            "  {root}/stanford_cars/cars_test/*.jpg\n"
            "(torchvision's layout) or, from the original single-file release,\n"
            "  {root}/stanford_cars/cars_annos.mat\n"
            "  {root}/stanford_cars/car_ims/*.jpg"
        ),
    ),
    "nabirds": Recipe(
        folder="nabirds",
        size="8.9 GB; 48,562 images, 555 classes",
        homepage="https://dl.allaboutbirds.org/nabirds",
        manual=(
            "NABirds is distributed by the Cornell Lab of Ornithology after accepting its terms "
            "of use: fill in the form at https://dl.allaboutbirds.org/nabirds, download "
            "nabirds.tar.gz (md5 df21a9e4db349a14e2b08adfd45873bd as public loaders record it) "
            "and unpack it into {root} so that these exist:\n"
            "  {root}/nabirds/images/<class>/<uuid>.jpg\n"
            "  {root}/nabirds/images.txt, image_class_labels.txt, train_test_split.txt,\n"
            "  {root}/nabirds/classes.txt, hierarchy.txt, bounding_boxes.txt\n"
            "e.g. `tar -xzf nabirds.tar.gz -C {root}`."
        ),
    ),
}


def file_md5(path: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, path: str, md5: str | None = None, progress: bool = True) -> str:
    """Fetch ``url`` to ``path`` atomically (via ``path.part``) and check its md5.

    Returns the md5 of the file. An existing ``path`` whose md5 matches is kept as is. A mismatch
    removes the download and raises DataError naming the file, the URL and both checksums.
    """
    if os.path.isfile(path) and md5 is not None and file_md5(path) == md5:
        return md5
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + ".part"
    request = urllib.request.Request(url, headers={"User-Agent": "ranking_reg-prepare"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
            total = response.headers.get("Content-Length")
            with tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=os.path.basename(path),
                disable=not progress,
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        _remove(part)
        raise DataError(
            f"downloading {url} to {path} failed ({error}); check the network connection and "
            "run the command again (nothing was kept)."
        ) from error
    got = file_md5(part)
    if md5 is not None and got != md5:
        _remove(part)
        raise DataError(
            f"the download of {url} has md5 {got}, but {md5} was expected, so the file {path} "
            "was discarded: the transfer was damaged or the server changed the file. Run the "
            "command again; if it keeps failing, download the file by hand and compare it with "
            "the dataset's home page."
        )
    os.replace(part, path)
    return got


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _extract(archive: str, destination: str) -> None:
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                # "data" refuses absolute paths, '..', device files and links out of the tree.
                tar.extractall(destination, filter="data")
            else:  # Python < 3.10.12 / 3.11.4 has no filters: the same checks by hand
                for member in tar.getmembers():
                    name = os.path.normpath(member.name)
                    if (
                        os.path.isabs(name)
                        or name.startswith(os.pardir)
                        or not (member.isfile() or member.isdir())
                    ):
                        raise tarfile.TarError(f"unsafe member {member.name!r}")
                tar.extractall(destination)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(
            f"the archive {archive} cannot be unpacked ({error}); delete it and run the command "
            "again to download it anew."
        ) from error


def is_prepared(name: str, root: str) -> bool:
    """Whether both splits of ``name`` build from ``root`` (list files and images present)."""
    from ranking_reg.data.registry import build_dataset

    try:
        for split in ("train", "test"):
            build_dataset(name, root, split)
    except UserError:
        return False
    return True


def prepare(
    name: str,
    root: str,
    keep_archives: bool = False,
    progress: bool = True,
    recipes: dict[str, Recipe] | None = None,
) -> str:
    """Download/unpack dataset ``name`` under ``root`` (or explain the manual step).

    Returns the dataset folder. Raises DataError when the dataset needs a manual step that has
    not been done, or when a download or an archive is bad.
    """
    recipes = RECIPES if recipes is None else recipes
    if name not in recipes:
        from ranking_reg.utils.errors import ConfigError

        raise ConfigError(
            f"there is nothing to prepare for dataset {name!r}; prepare knows "
            f"{', '.join(sorted(recipes))} (digits is bundled with scikit-learn, and folder/csv "
            "are your own data)."
        )
    recipe = recipes[name]
    root = os.path.abspath(os.path.expanduser(root))
    target = os.path.join(root, recipe.folder)
    if is_prepared(name, root):
        print(f"{name}: already in place at {target}")
        return target
    if not recipe.resources:
        raise DataError(
            f"{name} needs a manual download ({recipe.homepage}).\n"
            + recipe.manual.format(root=root)
        )
    if os.path.exists(target):
        raise DataError(
            f"{target} exists but does not hold a complete {name} dataset; move it aside or "
            f"delete it, then run `python -m ranking_reg.data.prepare {name} --root {root}` again."
        )
    downloads = os.path.join(root, ".downloads")
    os.makedirs(downloads, exist_ok=True)
    archives = []
    for resource in recipe.resources:
        path = os.path.join(downloads, resource.filename)
        got = download(resource.url, path, resource.md5, progress=progress)
        if resource.md5 is None:
            print(
                f"{name}: {resource.filename} has md5 {got} (no published checksum is recorded "
                f"here; compare it with {recipe.homepage})"
            )
        archives.append((resource, path))
    stage = tempfile.mkdtemp(prefix=f".prepare-{name}-", dir=root)
    try:
        os.makedirs(os.path.join(stage, recipe.folder), exist_ok=True)
        for resource, path in archives:
            if resource.extract_to is None:
                shutil.copyfile(path, os.path.join(stage, recipe.folder, resource.filename))
            else:
                _extract(path, os.path.join(stage, resource.extract_to))
        os.replace(os.path.join(stage, recipe.folder), target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if not keep_archives:
        for _, path in archives:
            _remove(path)
        try:
            os.rmdir(downloads)
        except OSError:
            pass
    if not is_prepared(name, root):
        raise DataError(
            f"{name} was unpacked into {target} but its files are not the expected layout; "
            "the archive differs from the published one. Delete the folder and try again."
        )
    print(f"{name}: ready at {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    from ranking_reg.data.image_cache import parse_option, prepare_cache

    parser = argparse.ArgumentParser(
        prog="python -m ranking_reg.data.prepare",
        description="Download and unpack the fine-grained datasets (or say how to get them).",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(RECIPES)} or all")
    parser.add_argument("--root", default="data", help="the data folder (data.root); default: data")
    parser.add_argument(
        "--keep-archives",
        action="store_true",
        help="keep the downloaded archives in ROOT/.downloads",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--cache-size",
        type=int,
        metavar="S",
        help="also write the image cache (data.cache_size=S: shorter side in pixels) of both "
        "splits; any image dataset, folder and csv included",
    )
    parser.add_argument("--cache-dir", help="data.cache_dir (default ROOT/.rr_cache/NAME-S)")
    parser.add_argument(
        "--option",
        action="append",
        type=parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="a dataset option of the run the cache is for (use_bbox=true, list_file=...)",
    )
    args = parser.parse_args(argv)
    names = list(RECIPES) if args.names == ["all"] else args.names
    failed = []
    for name in names:
        try:
            if args.cache_size is None or name in RECIPES:
                prepare(name, args.root, args.keep_archives, progress=not args.no_progress)
            if args.cache_size is not None:
                prepare_cache(
                    name,
                    args.root,
                    args.cache_size,
                    args.cache_dir,
                    dict(args.option),
                    progress=not args.no_progress,
                )
        except UserError as error:
            if len(names) == 1:
                if name in RECIPES and not RECIPES[name].resources:
                    print(str(error), file=sys.stderr)
                    return 1
                exit_with_user_error(error)
            print(
                str(error) if not RECIPES.get(name, Recipe("")).resources else f"{name}: {error}",
                file=sys.stderr,
            )
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
