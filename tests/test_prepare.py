"""``python -m ranking_reg.data.prepare``: download (file:// and a local HTTP server), checksum,
atomic unpack, manual-step instructions. Nothing leaves the machine."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading

import dataset_fixtures as fx
import pytest

from ranking_reg.data import prepare as prep
from ranking_reg.data.registry import build_dataset
from ranking_reg.utils.errors import DataError


def make_tar(path: str, source_dir: str, arcname: str = "", mode: str = "w:gz") -> str:
    """An archive of ``source_dir``'s content (under ``arcname``), as the datasets ship them."""
    with tarfile.open(path, mode) as tar:
        for entry in sorted(os.listdir(source_dir)):
            tar.add(os.path.join(source_dir, entry), arcname=os.path.join(arcname, entry))
    return path


def md5(path: str) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def url(path: str) -> str:
    return "file://" + os.path.abspath(path)


@pytest.fixture
def aircraft_archive(tmp_path):
    src = tmp_path / "src"
    expected = fx.make_aircraft(str(src), per_class=2)
    archive = make_tar(str(tmp_path / "fgvc-aircraft-2013b.tar.gz"), str(src))
    return archive, expected


def no_leftovers(root: str) -> None:
    names = os.listdir(root)
    assert not [n for n in names if n.startswith(".prepare-") or n.endswith(".part")]
    assert not os.path.exists(os.path.join(root, ".downloads"))


def test_download_and_unpack_from_file_url_with_unknown_md5(tmp_path, aircraft_archive, capsys):
    archive, expected = aircraft_archive
    root = str(tmp_path / "data")
    recipe = prep.Recipe("fgvc-aircraft-2013b", (prep.Resource(url(archive), None, ""),))
    target = prep.prepare("aircraft", root, progress=False, recipes={"aircraft": recipe})
    assert target == os.path.join(root, "fgvc-aircraft-2013b")
    ds = build_dataset("aircraft", root, "train")
    assert [os.path.relpath(p, root) for p, _ in ds.samples] == [
        os.path.relpath(p, str(tmp_path / "src")) for p, _ in expected.splits["train"]
    ]
    out = capsys.readouterr().out
    assert md5(archive) in out and "ready" in out  # unknown checksum: printed for the user
    no_leftovers(root)
    # a second run finds it in place and downloads nothing
    os.remove(archive)
    prep.prepare("aircraft", root, progress=False, recipes={"aircraft": recipe})
    assert "already in place" in capsys.readouterr().out


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # a short poll interval: shutdown() waits for the loop's next poll (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


def test_flowers_over_http_with_md5_and_progress_bar(tmp_path, http_server, capsys):
    www, base = http_server
    src = tmp_path / "src"
    expected = fx.make_flowers102(str(src))
    folder = src / "flowers-102"
    make_tar(str(www / "102flowers.tgz"), str(folder / "jpg"), arcname="jpg")
    for name in ("imagelabels.mat", "setid.mat"):
        (www / name).write_bytes((folder / name).read_bytes())
    recipe = prep.Recipe(
        "flowers-102",
        (
            prep.Resource(
                f"{base}/102flowers.tgz", md5(str(www / "102flowers.tgz")), "flowers-102"
            ),
            prep.Resource(f"{base}/imagelabels.mat", md5(str(www / "imagelabels.mat"))),
            prep.Resource(f"{base}/setid.mat", md5(str(www / "setid.mat"))),
        ),
    )
    root = str(tmp_path / "data")
    prep.prepare("flowers102", root, keep_archives=True, recipes={"flowers102": recipe})
    for split in ("train", "test"):
        got = [
            (os.path.relpath(p, root), y)
            for p, y in build_dataset("flowers102", root, split).samples
        ]
        want = [(os.path.relpath(p, str(src)), y) for p, y in expected.splits[split]]
        assert got == want
    assert "102flowers.tgz" in capsys.readouterr().err  # tqdm's bar, labelled with the file
    assert sorted(os.listdir(os.path.join(root, ".downloads"))) == [
        "102flowers.tgz",
        "imagelabels.mat",
        "setid.mat",
    ]


def test_checksum_mismatch_is_a_data_error_and_keeps_nothing(tmp_path, aircraft_archive):
    archive, _ = aircraft_archive
    root = str(tmp_path / "data")
    recipe = prep.Recipe("fgvc-aircraft-2013b", (prep.Resource(url(archive), "0" * 32, ""),))
    with pytest.raises(DataError) as info:
        prep.prepare("aircraft", root, progress=False, recipes={"aircraft": recipe})
    message = str(info.value)
    assert "0" * 32 in message and md5(archive) in message and url(archive) in message
    assert not os.path.exists(os.path.join(root, "fgvc-aircraft-2013b"))
    assert os.listdir(os.path.join(root, ".downloads")) == []
    no_prepare_dirs = [n for n in os.listdir(root) if n.startswith(".prepare-")]
    assert no_prepare_dirs == []


def test_download_failure_leaves_no_part_file(tmp_path):
    target = str(tmp_path / "x.tar")
    with pytest.raises(DataError, match="x.tar"):
        prep.download(url(str(tmp_path / "missing.tar")), target, progress=False)
    assert os.listdir(tmp_path) == []


def test_dogs_three_tars_unpack_into_one_folder(tmp_path):
    src = tmp_path / "src"
    expected = fx.make_dogs(str(src))
    dogs = src / "stanford_dogs"
    tars = tmp_path / "tars"
    tars.mkdir()
    make_tar(str(tars / "images.tar"), str(dogs / "Images"), "Images", mode="w")
    make_tar(str(tars / "annotation.tar"), str(dogs / "Annotation"), "Annotation", mode="w")
    with tarfile.open(tars / "lists.tar", "w") as tar:
        for name in ("train_list.mat", "test_list.mat"):
            tar.add(dogs / name, arcname=name)
    recipe = prep.Recipe(
        "stanford_dogs",
        tuple(
            prep.Resource(url(str(tars / f)), md5(str(tars / f)), "stanford_dogs")
            for f in ("images.tar", "lists.tar", "annotation.tar")
        ),
    )
    root = str(tmp_path / "data")
    prep.prepare("dogs", root, progress=False, recipes={"dogs": recipe})
    ds = build_dataset("dogs", root, "test", use_bbox=True)
    assert ds.targets == [y for _, y in expected.splits["test"]]
    assert len(ds.boxes) == len(ds)
    no_leftovers(root)


def test_unsafe_archive_member_is_refused(tmp_path):
    archive = str(tmp_path / "evil.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    recipe = prep.Recipe("fgvc-aircraft-2013b", (prep.Resource(url(archive), md5(archive), ""),))
    root = str(tmp_path / "data")
    with pytest.raises(DataError, match="cannot be unpacked"):
        prep.prepare("aircraft", root, progress=False, recipes={"aircraft": recipe})
    assert not os.path.exists(tmp_path / "escaped.txt")
    assert not os.path.exists(os.path.join(root, "fgvc-aircraft-2013b"))


def test_incomplete_existing_folder_is_not_overwritten(tmp_path, aircraft_archive):
    archive, _ = aircraft_archive
    root = tmp_path / "data"
    (root / "fgvc-aircraft-2013b").mkdir(parents=True)
    recipe = prep.Recipe("fgvc-aircraft-2013b", (prep.Resource(url(archive), None, ""),))
    with pytest.raises(DataError, match="move it aside or delete it"):
        prep.prepare("aircraft", str(root), progress=False, recipes={"aircraft": recipe})


@pytest.mark.parametrize(
    "name,where",
    [("cars", "stanford_cars/devkit/cars_meta.mat"), ("nabirds", "nabirds/images.txt")],
)
def test_manual_datasets_print_where_to_get_and_put_them(tmp_path, capsys, name, where):
    assert prep.main([name, "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert prep.RECIPES[name].homepage in err
    assert os.path.join(str(tmp_path), where) in err.replace("/", os.sep)
    fx.make_cars(str(tmp_path)) if name == "cars" else fx.make_nabirds(str(tmp_path))
    assert prep.main([name, "--root", str(tmp_path)]) == 0
    assert "already in place" in capsys.readouterr().out


def test_cli_unknown_name_exits_2_with_one_paragraph(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        prep.main(["imagenet", "--root", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "imagenet" in err and "aircraft" in err and "Traceback" not in err


def test_recorded_sources_match_the_issue():
    urls = {r.url for recipe in prep.RECIPES.values() for r in recipe.resources}
    assert urls == {
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",
        "http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar",
        "http://vision.stanford.edu/aditya86/ImageNetDogs/lists.tar",
        "http://vision.stanford.edu/aditya86/ImageNetDogs/annotation.tar",
    }
    from torchvision.datasets import Flowers102

    flowers = {r.filename: r.md5 for r in prep.RECIPES["flowers102"].resources}
    assert flowers == dict(Flowers102._file_dict.values())
