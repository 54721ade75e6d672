"""``predict``: new images through a checkpoint, checked against the module run directly, a
brute-force kNN written here, and ``evaluate``'s accuracy on the exported test split."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli
from PIL import Image

from ranking_reg.inference.inputs import gather_inputs
from ranking_reg.predict import predict
from ranking_reg.utils.errors import ConfigError, DataError

# The mixed folder of `mixed_inputs`, in sorted walk order: names compared as strings, a folder
# by its name ("nested" < "nested.png"), files with other extensions skipped.
EXPECTED_ORDER = [
    "a_grey.png",
    "b_rgba.png",
    "bad.jpg",
    "c_cmyk.jpg",
    "d_palette.png",
    "nested/e_grey.png",
    "nested.png",
]
BAD = "bad.jpg"


def _digit(index: int, size: int = 8) -> np.ndarray:
    """A digits-like grey image: the sklearn digit ``index`` as 0..255, dark on white."""
    from sklearn.datasets import load_digits

    image = load_digits().images[index]
    return (255 - np.round(image * (255.0 / 16.0))).astype(np.uint8)


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory) -> Path:
    """Images of every mode predict must read, one undecodable file and one non-image."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "nested").mkdir()
    grey = [_digit(i) for i in range(5)]
    Image.fromarray(grey[0]).save(root / "a_grey.png")
    rgba = np.dstack([grey[1]] * 3 + [np.full((8, 8), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "b_rgba.png")
    Image.fromarray(np.dstack([grey[2]] * 3)).convert("CMYK").save(root / "c_cmyk.jpg")
    Image.fromarray(grey[3]).convert("P").save(root / "d_palette.png")
    Image.fromarray(grey[4]).resize((24, 20)).save(root / "nested" / "e_grey.png")
    Image.fromarray(grey[0]).save(root / "nested.png")
    (root / BAD).write_bytes(np.random.default_rng(0).bytes(300))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def ckpt(digits_checkpoint) -> Path:
    return digits_checkpoint[0] / "checkpoints" / "last.ckpt"


def predict_config(ckpt, inputs, out, *overrides: str):
    args = [f"ckpt_path={ckpt}", f"inputs={inputs}", "progress=false", *overrides]
    return compose_config(args, output_dir=out, name="predict")


@pytest.fixture(scope="module")
def reference(ckpt):
    """The module, its eval transform and the digits test split embedded image by image,
    without the inference package."""
    from ranking_reg.data.digits import build_digits
    from ranking_reg.data.transforms import eval_transform
    from ranking_reg.lightning import RankingRegModule

    module = RankingRegModule.load_from_checkpoint(ckpt).eval()
    data = module.hparams["run_config"]["data"]
    transform = eval_transform(data["img_size"], data["resize_size"], data["augment"])
    test = build_digits(None, "test")
    images = torch.stack([transform(test.load_image(i)) for i in range(len(test))])
    with torch.no_grad():
        gallery = module(images).embedding.numpy()
    return module, transform, test, gallery


@pytest.fixture(scope="module")
def predicted(ckpt, mixed_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted")
    # one batch: the bad file shares it with the readable images
    cfg = predict_config(ckpt, mixed_inputs, out, "gallery=test", "topk=3", "neighbors=4")
    return predict(cfg, ["gallery=test"]), out


def test_rows_are_in_walk_order_with_an_error_row(predicted, mixed_inputs):
    result, out = predicted
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows == result.rows
    assert [os.path.relpath(r["path"], mixed_inputs) for r in rows] == EXPECTED_ORDER
    (bad,) = [r for r in rows if r["path"].endswith(BAD)]
    assert set(bad) == {"path", "error"} and str(mixed_inputs / BAD) in bad["error"]
    readable = [r for r in rows if "error" not in r]
    assert len(readable) == len(EXPECTED_ORDER) - 1
    for row in readable:
        assert set(row) == {"path", "classes", "neighbors"}
        probs = [c["prob"] for c in row["classes"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert [c["name"] for c in row["classes"]] == [str(c["label"]) for c in row["classes"]]
        assert len(row["neighbors"]) == 4
    # embeddings.npy / paths.txt: the readable inputs, in input order
    embeddings = np.load(out / "embeddings.npy")
    paths = (out / "paths.txt").read_text().splitlines()
    assert paths == [r["path"] for r in readable]
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(readable), 256)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_probabilities_and_embeddings_are_the_modules(predicted, reference):
    result, _ = predicted
    module, transform, _, _ = reference
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in result.paths])
    with torch.no_grad():
        output = module(images)
    probs = torch.softmax(output.logits, dim=1).numpy()
    readable = [r for r in result.rows if "error" not in r]
    for row, expected in zip(readable, probs, strict=True):
        top = np.argsort(-expected, kind="stable")[:3]
        assert [c["label"] for c in row["classes"]] == top.tolist()
        np.testing.assert_allclose([c["prob"] for c in row["classes"]], expected[top], atol=1e-6)
    np.testing.assert_allclose(result.embeddings, output.embedding.numpy(), atol=1e-5)


def test_neighbours_are_the_exact_nearest_gallery_images(predicted, reference):
    result, _ = predicted
    _, _, test, gallery = reference
    readable = [r for r in result.rows if "error" not in r]
    queries = result.embeddings.astype(np.float64)
    # Euclidean distance to every gallery image; nearest first, ties to the lower index
    distances = np.sqrt(((queries[:, None, :] - gallery[None].astype(np.float64)) ** 2).sum(-1))
    for row, d in zip(readable, distances, strict=True):
        order = np.argsort(d, kind="stable")[:4]
        got = row["neighbors"]
        np.testing.assert_allclose([n["distance"] for n in got], d[order], atol=1e-5)
        assert np.diff(np.sort(d)[:5]).min() > 1e-5  # no near-tie that could swap the order
        assert [n["path"] for n in got] == [test.samples[i][0] for i in order]
        assert [n["label"] for n in got] == [test.targets[i] for i in order]
        assert [n["name"] for n in got] == [str(test.targets[i]) for i in order]


@pytest.mark.slow
def test_the_exported_test_split_is_predicted_at_evaluates_accuracy(ckpt, tmp_path):
    """PNG export is lossless: top-1 over the exported digits test split is the accuracy that
    ``evaluate`` computes on the whole test split, to the sample."""
    from ranking_reg.data.export_split import export_split, split_base
    from ranking_reg.evaluate import evaluate

    list_file = export_split(split_base(["data=digits"], "test"), str(tmp_path / "x"), "test")
    with open(list_file, newline="") as f:
        truth = [row["label"] for row in csv.DictReader(f)]
    assert len(truth) == 450 and sorted(set(truth)) == [str(d) for d in range(10)]
    cfg = predict_config(ckpt, list_file, tmp_path / "p", "gallery=none", "batch_size=100")
    result = predict(cfg)
    assert len(result.rows) == 450 and all("neighbors" not in r for r in result.rows)
    correct = sum(r["classes"][0]["name"] == t for r, t in zip(result.rows, truth, strict=True))
    args = [f"ckpt_path={ckpt}", "logger=none", "trainer.enable_progress_bar=false"]
    args.append("trainer.limit_test_batches=1.0")
    metrics = evaluate(compose_config(args, output_dir=tmp_path / "e", name="eval"), [])
    assert correct == round(metrics["test/acc"] * 450)


def test_inputs_from_an_image_a_list_and_a_csv(mixed_inputs, tmp_path):
    image = str(mixed_inputs / "a_grey.png")
    assert gather_inputs(image) == [image]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n{image}\n\nnested/e_grey.png\n")
    (tmp_path / "nested").symlink_to(mixed_inputs / "nested")
    assert gather_inputs(str(listing)) == [image, str(tmp_path / "nested" / "e_grey.png")]
    table = tmp_path / "split.csv"
    table.write_text("path,label\nnested/e_grey.png,4\nmissing.png,1\n")
    names = ["nested/e_grey.png", "missing.png"]
    assert gather_inputs(str(table)) == [str(tmp_path / n) for n in names]


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("empty folder", DataError, "holds no image files"),
        ("no images", DataError, "holds no image files"),
        ("empty list", DataError, "lists no images"),
        ("missing checkpoint", ConfigError, "is not a file"),
        ("not a checkpoint", ConfigError, "could not be read as a checkpoint"),
        ("foreign checkpoint", ConfigError, "not a ranking_reg checkpoint"),
        ("missing inputs", ConfigError, "inputs is required"),
        ("missing gallery", ConfigError, "gallery index folder"),
        ("inputs not found", ConfigError, "does not exist"),
    ],
)
def test_bad_inputs_are_one_paragraph(case, error, words, ckpt, mixed_inputs, tmp_path):
    """Each stops before anything is written, naming the file or option at fault."""
    inputs, checkpoint, extra = mixed_inputs, ckpt, []
    if case in ("empty folder", "no images"):
        inputs = tmp_path / "in"
        inputs.mkdir()
        if case == "no images":
            (inputs / "readme.txt").write_text("x")
    elif case == "empty list":
        inputs = tmp_path / "list.txt"
        inputs.write_text("# nothing\n\n")
    elif case == "missing checkpoint":
        checkpoint = tmp_path / "gone.ckpt"
    elif case == "not a checkpoint":
        checkpoint = tmp_path / "noise.ckpt"
        checkpoint.write_bytes(np.random.default_rng(1).bytes(500))
    elif case == "foreign checkpoint":
        checkpoint = tmp_path / "other.ckpt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, checkpoint)
    elif case == "missing gallery":
        extra = [f"gallery={tmp_path / 'no_index'}"]
    elif case == "inputs not found":
        inputs = tmp_path / "nowhere"
    named = {
        "missing inputs": "python -m ranking_reg.predict",
        "missing gallery": str(tmp_path / "no_index"),
    }.get(case, str(inputs if "checkpoint" not in case else checkpoint))
    cfg = predict_config(checkpoint, inputs, tmp_path / "out", *extra)
    if case == "missing inputs":
        cfg.inputs = "???"
    with pytest.raises(error, match=words) as raised:
        predict(cfg)
    assert named in str(raised.value)
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_export_split_arguments():
    from ranking_reg.data.export_split import folder_names, parse_args

    assert parse_args(["data=csv", "data.root=/d", "split=train", "out=/o"]) == (
        "train",
        "/o",
        ["data=csv", "data.root=/d"],
    )
    with pytest.raises(ConfigError, match="out is required"):
        parse_args(["data=digits"])
    with pytest.raises(ConfigError, match="split=val: expects train or test"):
        parse_args(["split=val", "out=/o"])
    with pytest.raises(ConfigError, match="unknown option topk"):
        parse_args(["topk=3", "out=/o"])
    assert folder_names(["F/A-18", "F_A-18", "", "b"]) == ["F_A-18", "F_A-18-1", "class2", "b"]


def test_the_command_line_exits_2_with_one_paragraph(ckpt, tmp_path):
    result = run_cli("ranking_reg.predict", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "configuration error: inputs is required" in " ".join(result.stderr.split())


def _table_files(root: Path) -> list[dict]:
    tables = []
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 1_000_000:
            try:
                tables.append(json.loads(path.read_text()))
            except (UnicodeDecodeError, ValueError):
                continue
    return [t for t in tables if isinstance(t, dict) and "columns" in t and "data" in t]


@pytest.mark.slow
def test_wandb_logs_a_table_of_the_predictions(ckpt, mixed_inputs, tmp_path, monkeypatch):
    """Offline: the run's table file holds one row per input (the W&B artifact copy holds the
    thumbnails as images of at most thumb_size pixels)."""
    from ranking_reg.inference.fingerprint import state_dict_fingerprint
    from ranking_reg.inference.gallery import GalleryIndex
    from ranking_reg.integrations.wandb_predictions import COLUMNS

    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # a small gallery index of this checkpoint, for the neighbour columns
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fingerprint = state_dict_fingerprint(torch.load(ckpt, weights_only=True)["state_dict"])
    paths = [f"gallery/{i}.png" for i in range(6)]
    GalleryIndex(x, np.arange(6) % 10, [str(d) for d in range(10)], paths, fingerprint).save(
        tmp_path / "g"
    )
    out = tmp_path / "out"
    overrides = ["logger=wandb", f"gallery={tmp_path / 'g'}", "neighbors=2"]
    result = predict(
        predict_config(ckpt, mixed_inputs, out, *overrides, "wandb_table.thumb_size=16")
    )

    (run_table,) = [t for t in _table_files(out / "wandb") if t["columns"] == list(COLUMNS)]
    assert len(run_table["data"]) == len(result.rows) == len(EXPECTED_ORDER)
    for row, cells in zip(result.rows, run_table["data"], strict=True):
        cell = dict(zip(COLUMNS, cells, strict=True))
        assert cell["path"] == row["path"]
        if "error" in row:
            assert cell["error"] == row["error"] and cell["image"] is None
            assert cell["label"] is None and cell["neighbor_paths"] == []
            continue
        top = row["classes"][0]
        assert (cell["label"], cell["name"], cell["prob"]) == (
            top["label"],
            top["name"],
            top["prob"],
        )
        assert cell["top_classes"].startswith(f"{top['name']} ({top['prob']:.3f}), ")
        assert cell["neighbor_paths"] == [n["path"] for n in row["neighbors"]]
        assert cell["neighbor_labels"] == [n["label"] for n in row["neighbors"]]
        assert len(cell["neighbor_paths"]) == 2 and set(cell["neighbor_paths"]) <= set(paths)
        assert cell["error"] is None
    staged = [t for t in _table_files(tmp_path / "wandb_data_dir") if t["columns"] == list(COLUMNS)]
    assert staged and all(t == staged[0] for t in staged)  # staged (and cached) copies
    artifact_table = staged[0]
    sizes = [(c[1]["width"], c[1]["height"]) if c[1] else None for c in artifact_table["data"]]
    expected = {"nested/e_grey.png": (16, 13), BAD: None}  # 24 x 20 -> 16 x 13; unreadable
    for name, size in zip(EXPECTED_ORDER, sizes, strict=True):
        assert size == expected.get(name, (8, 8)), name
    import wandb

    assert wandb.run is None  # finished
