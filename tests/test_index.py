"""Gallery indexes: written whole, tied to the checkpoint that embedded them, searched exactly
or with faiss, and reused by ``predict gallery=DIR``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config

from ranking_reg.index import build_index
from ranking_reg.inference.fingerprint import state_dict_fingerprint
from ranking_reg.inference.gallery import GalleryIndex
from ranking_reg.predict import predict
from ranking_reg.utils.errors import ConfigError

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def ckpt(digits_checkpoint) -> Path:
    return digits_checkpoint[0] / "checkpoints" / "last.ckpt"


def index_config(ckpt, out, *overrides: str):
    args = [f"ckpt_path={ckpt}", f"out={out}", "progress=false", *overrides]
    return compose_config(args, output_dir=out.parent / "hydra", name="index")


@pytest.fixture(scope="module")
def test_index(ckpt, tmp_path_factory) -> Path:
    """The digits test split of the session checkpoint, indexed (exact)."""
    out = tmp_path_factory.mktemp("index") / "gallery"
    build_index(index_config(ckpt, out, "split=test"))
    return out


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> Path:
    from ranking_reg.data.digits import build_digits

    folder = tmp_path_factory.mktemp("queries")
    train = build_digits(None, "train")
    for i in range(5):
        train.load_image(i).save(folder / f"q{i}.png")
    return folder


def _predict(ckpt, inputs, out, gallery):
    args = [f"ckpt_path={ckpt}", f"inputs={inputs}", f"gallery={gallery}", "progress=false"]
    return predict(compose_config(args, output_dir=out, name="predict"), [f"gallery={gallery}"])


def test_the_index_files(test_index, ckpt):
    from ranking_reg.data.digits import build_digits

    meta = json.loads((test_index / "meta.json").read_text())
    stored = torch.load(ckpt, weights_only=True)["state_dict"]
    assert meta["fingerprint"] == state_dict_fingerprint(stored)
    assert (meta["kind"], meta["dim"], meta["count"]) == ("exact", 256, 450)
    assert meta["split"] == "test" and meta["dataset"] == "digits"
    assert meta["ckpt_path"] == str(ckpt) and meta["created"].endswith("+00:00")
    test = build_digits(None, "test")
    embeddings = np.load(test_index / "embeddings.npy")
    assert embeddings.dtype == np.float32 and embeddings.shape == (450, 256)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.load(test_index / "labels.npy").tolist() == test.targets
    assert (test_index / "paths.txt").read_text().splitlines() == [p for p, _ in test.samples]
    assert json.loads((test_index / "classes.json").read_text()) == [str(d) for d in range(10)]
    assert not [p.name for p in test_index.parent.iterdir() if p.name.startswith(".")]


def test_predict_reuses_the_index(test_index, ckpt, queries, tmp_path):
    from_index = _predict(ckpt, queries, tmp_path / "a", test_index)
    embedded_now = _predict(ckpt, queries, tmp_path / "b", "test")
    assert from_index.rows == embedded_now.rows
    assert all(len(row["neighbors"]) == 5 for row in from_index.rows)


def test_fingerprint_follows_the_weights_not_the_file(test_index, ckpt, queries, tmp_path):
    from ranking_reg.inference.checkpoint import load_checkpoint

    meta = json.loads((test_index / "meta.json").read_text())
    renamed = tmp_path / "renamed.ckpt"
    shutil.copy(ckpt, renamed)
    assert load_checkpoint(renamed).fingerprint == meta["fingerprint"]
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["net.embedder.bias"][0] += 1e-3
    perturbed = tmp_path / "perturbed.ckpt"
    torch.save(checkpoint, perturbed)
    assert state_dict_fingerprint(checkpoint["state_dict"]) != meta["fingerprint"]
    with pytest.raises(ConfigError, match="was built by another checkpoint") as raised:
        _predict(perturbed, queries, tmp_path / "out", test_index)
    message = str(raised.value)
    assert str(ckpt) in message and str(perturbed) in message
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gallery_of(x: np.ndarray, kind: str = "exact", **params) -> GalleryIndex:
    n = len(x)
    labels = np.arange(n) % 3
    paths = [f"g{i}.png" for i in range(n)]
    return GalleryIndex(x, labels, ["a", "b", "c"], paths, "f" * 64, kind, params=params)


def test_exact_search_is_the_brute_force_knn():
    x, q = clustered(500, 16), clustered(40, 16, seed=1)
    x[7] = x[3]  # a tie: the lower index first
    q[0] = x[3]
    distances, indices = gallery_of(x).search(q, 6)
    d = np.sqrt(((q[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    expected = np.argsort(d, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(d, expected, 1), atol=1e-6)
    assert indices[0, :2].tolist() == [3, 7]


def test_faiss_flat_equals_exact_and_approximate_kinds_find_most(tmp_path):
    x, q = clustered(3000, 32), clustered(100, 32, seed=1)
    exact_d, exact_i = gallery_of(x).search(q, 10)
    flat_d, flat_i = gallery_of(x, "flat").search(q, 10)
    np.testing.assert_array_equal(flat_i, exact_i)
    np.testing.assert_allclose(flat_d, exact_d, atol=1e-5)
    for kind in ("ivf", "hnsw"):
        index = gallery_of(x, kind)
        index.save(tmp_path / kind)
        loaded = GalleryIndex.load(tmp_path / kind)
        assert loaded.params == index.params and loaded.kind == kind
        d, i = loaded.search(q, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, exact_i, strict=True)])
        assert recall >= 0.9, (kind, recall)
        assert np.all(np.diff(d, axis=1) >= -1e-6)  # nearest first
    assert gallery_of(x, "ivf").params == {"nlist": 76, "nprobe": 9}  # N / 39 cells


def test_faiss_kinds_without_faiss_say_what_to_install(monkeypatch, ckpt, tmp_path):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        gallery_of(clustered(50, 8), "hnsw").search(clustered(2, 8), 3)
    with pytest.raises(ConfigError, match="index.kind=ivf needs faiss"):
        build_index(index_config(ckpt, tmp_path / "g", "index.kind=ivf"))
    assert not (tmp_path / "g").exists()


def test_saving_is_whole_or_nothing(tmp_path, monkeypatch):
    x = clustered(30, 8)
    target = tmp_path / "gallery"
    gallery_of(x).save(target)
    before = sorted(p.name for p in target.iterdir())

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        gallery_of(x[:10]).save(target)
    assert sorted(p.name for p in target.iterdir()) == before  # the old index is untouched
    assert GalleryIndex.load(target).embeddings.shape == (30, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery"]  # no staging folder left
    monkeypatch.undo()
    gallery_of(x[:10]).save(target)  # an index is replaced
    assert len(GalleryIndex.load(target)) == 10
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not a gallery index"):
        gallery_of(x).save(tmp_path / "mine")


@pytest.mark.parametrize(
    "override, words",
    [
        ("index.kind=annoy", "index.kind=annoy: expects one of exact|flat|ivf|hnsw"),
        ("split=val", "split=val: expects one of train|test"),
        ("out=null", "out is required"),
        ("batch_size=0", "batch_size=0: expects an integer >= 1"),
    ],
)
def test_bad_index_options(override, words, ckpt, tmp_path):
    with pytest.raises(ConfigError, match=words.replace("|", r"\|")):
        build_index(index_config(ckpt, tmp_path / "g", override))
