"""The evaluation pictures (ranking_reg.reporting.plots) and the PlotCallback that draws them."""

from __future__ import annotations

import os
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from ranking_reg.lightning.plot_callback import PLOT_NAMES, PlotCallback, render_plots, save_png
from ranking_reg.metrics import (
    EvaluationResult,
    Evaluator,
    notify_evaluation_end,
    retrieval_metrics,
)
from ranking_reg.reporting import plots
from ranking_reg.utils.errors import ConfigError

torch.set_num_threads(1)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (20, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


# -- retrieval ----------------------------------------------------------------------------------
def test_select_queries_one_per_class_sorted_and_seeded():
    labels = np.repeat(np.arange(5), 4)
    q = plots.select_queries(labels, 3, seed=1)
    assert len(q) == 3 and len(set(labels[q])) == 3
    assert list(labels[q]) == sorted(labels[q])
    assert np.array_equal(q, plots.select_queries(labels, 3, seed=1))
    # More queries than classes: every class once, then distinct extra samples.
    q = plots.select_queries(labels, 8, seed=0)
    assert len(set(q.tolist())) == 8 and set(labels[q]) == set(range(5))
    assert len(plots.select_queries(labels, 100)) == len(labels)


def test_retrieval_grid_borders_and_size():
    queries = [solid((10, 10, 10)), solid((20, 20, 20))]
    neighbors = [[solid((100, 100, 100)), solid((110, 110, 110))]] * 2
    correct = np.array([[True, False], [False, True]])
    img = plots.retrieval_grid(queries, neighbors, correct, thumb_size=32, border=4)
    cell, pad = 32 + 8, 2
    gap = cell // 3
    assert img.size == (3 * (cell + 2 * pad) + gap, 2 * (cell + 2 * pad))

    def tile_origin(q: int, j: int) -> tuple[int, int]:  # j = -1: the query
        x = pad if j < 0 else pad + (1 + j) * (cell + 2 * pad) + gap
        return x, q * (cell + 2 * pad) + pad

    for q in range(2):
        x, y = tile_origin(q, -1)
        assert img.getpixel((x + 1, y + 1)) == plots.QUERY_COLOR
        for j in range(2):
            x, y = tile_origin(q, j)
            expected = plots.CORRECT_COLOR if correct[q, j] else plots.WRONG_COLOR
            assert img.getpixel((x + 1, y + cell // 2)) == expected
            # the neighbour image itself sits inside the border (padded to a square)
            assert img.getpixel((x + cell // 2, y + cell // 2)) == neighbors[q][j].getpixel((0, 0))


class FakeDataset:
    """The eval-dataset contract: classes, targets, load_image(i) (a solid image per index)."""

    def __init__(self, labels: np.ndarray, n_classes: int) -> None:
        self.targets = [int(t) for t in labels]
        self.classes = [f"class{c}" for c in range(n_classes)]

    def load_image(self, index: int) -> Image.Image:
        return solid((index * 7 % 256, 50, 200 - index))


def fixed_result(stage: str = "val", classify: bool = True) -> EvaluationResult:
    """8 points, 4 classes on a line: 0,1 (class 0) | 2,3 (class 1) | 4,5 (class 2) | 6,7 (class 3).

    Point 2 (class 1) sits closer to point 1 (class 0) than to its own class mate 3: its first
    neighbour is the wrong point 1, its second the right point 3. Predictions 0,0,0,1,2,2,3,2:
    per-class accuracy 1, 1/2, 1, 1/2. Dataset positions 100..107. ``per_query``: the
    retrieval pass's per-query first hits and AP@R, as the evaluator hands them on.
    """
    pos = np.array([0.0, 1.0, 1.6, 3.0, 10.0, 10.5, 20.0, 20.4])
    emb = torch.tensor(np.stack([pos, np.zeros_like(pos)], 1), dtype=torch.float32)
    preds = np.array([0, 0, 0, 1, 2, 2, 3, 2])
    logits = torch.tensor(np.eye(4)[preds] * 5.0, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    per_query: dict[str, torch.Tensor] = {}
    retrieval_metrics(emb, labels, ks=(1,), nmi=False, per_query=per_query)
    return EvaluationResult(
        stage=stage,
        metrics={},
        embeddings=emb,
        pooled=emb,
        logits=logits if classify else None,
        labels=labels,
        positions=torch.arange(8) + 100,
        per_query=per_query,
    )


CELL, PAD = 32 + 8, 2  # the retrieval grid's geometry at thumb_size=32, border=4


def grid_border(grid: Image.Image, q: int, j: int) -> tuple[int, int, int]:
    """The border colour of neighbour ``j`` of query row ``q`` (a grid with captions)."""
    gap, row_h = CELL // 3, CELL + 12 + 2 * PAD
    return grid.getpixel((PAD + (1 + j) * (CELL + 2 * PAD) + gap + 1, q * row_h + PAD + 1))


def test_render_plots_retrieval_grid_colours_known_neighbours():
    result = fixed_result()
    labels = result.labels.numpy()
    # 8 queries for 8 points: every point is a query, rows in (label, index) order = index order
    images = render_plots(
        result, FakeDataset(labels, 4), [5, 5, 5, 5], n_queries=8, n_neighbors=2, thumb_size=32
    )
    assert set(images) == set(PLOT_NAMES)
    grid = images["retrieval_grid"]
    gap, row_h = CELL // 3, CELL + 12 + 2 * PAD
    assert grid.size == (3 * (CELL + 2 * PAD) + gap, 8 * row_h)
    assert grid_border(grid, 2, 0) == plots.WRONG_COLOR  # point 2's nearest: point 1, class 0
    assert grid_border(grid, 2, 1) == plots.CORRECT_COLOR  # then point 3, class 1
    assert grid_border(grid, 0, 0) == plots.CORRECT_COLOR  # point 0's nearest: its class mate 1
    assert grid_border(grid, 0, 1) == plots.WRONG_COLOR  # then point 2
    # the tiles show the dataset images of the dataset positions (offset by 100 here)
    expected = FakeDataset(labels, 4).load_image(102).getpixel((0, 0))
    assert grid.getpixel((PAD + CELL // 2, 2 * row_h + PAD + CELL // 2)) == expected
    expected = FakeDataset(labels, 4).load_image(101).getpixel((0, 0))
    x = PAD + (CELL + 2 * PAD) + gap + CELL // 2
    assert grid.getpixel((x, 2 * row_h + PAD + CELL // 2)) == expected
    # More neighbours asked than there are other points: all 7, nearest first.
    wide = render_plots(result, FakeDataset(labels, 4), n_queries=1, n_neighbors=50)
    assert wide["retrieval_grid"].size[0] == 8 * (64 + 8 + 2 * PAD) + (64 + 8) // 3


def test_render_plots_without_class_head_draws_only_embedding_pictures():
    result = fixed_result(classify=False)
    dataset = FakeDataset(result.labels.numpy(), 4)
    images = render_plots(result, dataset, n_queries=8, n_neighbors=2, thumb_size=32)
    assert set(images) == {
        "retrieval_grid",
        "worst_queries",
        "pair_distances",
        "embedding_projection",
    }
    assert grid_border(images["retrieval_grid"], 2, 0) == plots.WRONG_COLOR
    # Without a dataset: no retrieval grids.
    assert set(render_plots(result)) == {"pair_distances", "embedding_projection"}


# -- per-class accuracy -------------------------------------------------------------------------
def test_frequency_order():
    # Per-class accuracy itself is ranking_reg.metrics.per_class_accuracy (tests/test_metrics.py).
    assert list(plots.frequency_order([5, 50, 20, 50])) == [1, 3, 2, 0]


def bar_heights(img: Image.Image, color: tuple[int, int, int], min_width: int = 10) -> list[int]:
    """Left-to-right pixel heights of the bars (runs of columns at least ``min_width`` wide) of
    exactly ``color`` (anti-aliased text may contain the colour in thin runs)."""
    a = np.asarray(img)
    mask = (a == np.array(color)).all(-1)
    cols = mask.any(0)
    heights, x = [], 0
    while x < len(cols):
        if cols[x]:
            start = x
            while x < len(cols) and cols[x]:
                x += 1
            if x - start >= min_width:
                heights.append(int(mask[:, start:x].sum(0).max()))
        x += 1
    return heights


def test_per_class_accuracy_chart_orders_bars_by_train_frequency():
    accuracy = np.array([0.25, 1.0, 0.5, 0.75])
    counts = [5, 50, 20, 1]  # order: 1, 2, 0, 3 -> heights 1.0, 0.5, 0.25, 0.75
    img = plots.per_class_accuracy_chart(accuracy, counts, [f"c{i}" for i in range(4)])
    assert img.mode == "RGB" and img.size == (600, 500)
    h = bar_heights(img, plots.BAR_COLOR)
    assert len(h) == 4
    ratios = np.array(h) / h[0]
    assert ratios == pytest.approx([1.0, 0.5, 0.25, 0.75], abs=0.03)
    counts_h = bar_heights(img, plots.COUNT_COLOR)
    assert counts_h == sorted(counts_h, reverse=True) and len(counts_h) == 4


def test_per_class_accuracy_chart_many_classes_is_capped():
    rng = np.random.default_rng(0)
    img = plots.per_class_accuracy_chart(rng.random(555), rng.integers(1, 60, 555))
    assert img.size == (1600, 500)


# -- confusion ----------------------------------------------------------------------------------
def test_confusion_matrix_counts():
    cm = plots.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 2, 1, 2, 0]), 4)
    expected = np.zeros((4, 4), int)
    for t, p in [(0, 0), (0, 2), (1, 1), (2, 2), (2, 0)]:
        expected[t, p] += 1
    assert np.array_equal(cm, expected)


def test_select_confused_classes_picks_most_confused_pairs():
    cm = np.diag(np.full(10, 20))
    cm[3, 7], cm[7, 3] = 6, 3  # pair (3, 7): 9
    cm[1, 5] = 5  # pair (1, 5): 5
    cm[8, 2] = 1  # pair (2, 8): 1
    assert list(plots.select_confused_classes(cm, 4)) == [1, 3, 5, 7]
    assert list(plots.select_confused_classes(cm, 3)) == [1, 3, 7]
    assert list(plots.select_confused_classes(cm, 10)) == list(range(10))
    # Fewer confused classes than k: filled with the best-supported classes (ties: lower id).
    cm[0, 0] = 99
    assert list(plots.select_confused_classes(cm, 7)) == [0, 1, 2, 3, 5, 7, 8]


def near(img: Image.Image, rgb: tuple[int, int, int], tol: int = 6) -> np.ndarray:
    """(y, x) of the pixels within ``tol`` (sum of abs differences) of ``rgb``."""
    a = np.asarray(img).astype(int)
    return np.argwhere(np.abs(a - np.array(rgb)).sum(-1) <= tol)


def test_confusion_matrix_plot_size_and_cells():
    cm = np.array([[8, 2, 0], [0, 10, 0], [5, 0, 5]])
    img = plots.confusion_matrix_plot(cm, np.array([0, 1, 2]), ["a", "b", "c"])
    assert img.size == (600, 500)
    # Diagonal: class 1's accuracy 1.0 is the darkest blue ("Blues" at 1.0), in the middle cell.
    blue = near(img, (8, 48, 107))
    assert len(blue) > 1000
    cy, cx = blue.mean(0)
    half_cell = (blue[:, 0].max() - blue[:, 0].min()) / 2
    # The largest confusion (true 2 -> predicted 0, 0.5) is the darkest red ("Reds" at 1.0): in the
    # bottom-left cell. Left of the diagonal's centre (the colour bar is on the right) dark red
    # lies only below it.
    red = near(img, (103, 0, 13))
    left = red[red[:, 1] < cx]
    assert len(left) > 1000
    assert (left[:, 0] > cy + half_cell).all() and (left[:, 1] < cx - half_cell).all()


def test_confusion_matrix_plot_of_selected_classes():
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 5, (120, 120)) + np.diag(np.full(120, 30))
    shown = plots.select_confused_classes(cm, 50)
    assert len(shown) == 50
    img = plots.confusion_matrix_plot(cm, shown)
    assert img.size == (1350, 1250)  # 2.5 + 0.2 in per class, capped at 13 in


# -- projection ---------------------------------------------------------------------------------
def test_project_2d_pca_separates_clusters_and_caps_points():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 8)), rng.normal(0, 0.1, (50, 8)) + 5.0])
    coords, idx = plots.project_2d(x, "pca")
    assert coords.shape == (100, 2) and list(idx) == list(range(100))
    first = coords[:, 0]
    assert first[:50].max() < first[50:].min() or first[50:].max() < first[:50].min()
    assert abs(first[:50].mean() - first[50:].mean()) == pytest.approx(5.0 * np.sqrt(8), rel=0.05)
    coords, idx = plots.project_2d(x, "pca", max_points=30)
    assert coords.shape == (30, 2) and len(set(idx.tolist())) == 30
    assert np.array_equal(idx, plots.project_2d(x, "pca", max_points=30)[1])


def test_project_2d_tsne_and_unknown_method():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (15, 4)), rng.normal(0, 0.1, (15, 4)) + 3.0])
    coords, _ = plots.project_2d(x, "tsne")
    a, b = coords[:15].mean(0), coords[15:].mean(0)
    spread = max(coords[:15].std(0).max(), coords[15:].std(0).max())
    assert np.linalg.norm(a - b) > 3 * spread
    with pytest.raises(ConfigError, match="projection"):
        plots.project_2d(x, "umap")


def test_embedding_projection_plot_draws_class_colours():
    # 25 classes (no legend, turbo colours), each a blob of 40 points at its own place
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(25), 40)
    centres = np.stack([labels % 5, labels // 5], 1).astype(float)
    coords = centres + rng.normal(0, 0.05, centres.shape)
    img = plots.embedding_projection_plot(coords, labels, 25)
    assert img.size == (750, 600)
    colors = np.round(plots.class_colors(25) * 255).astype(int)
    where = [near(img, tuple(c), tol=3) for c in colors]
    assert all(len(w) > 20 for w in where)
    # blobs in grid order: class 1 right of class 0, class 5 above class 0 (image y grows down)
    (y0, x0), (y1, x1), (y5, x5) = (where[c].mean(0) for c in (0, 1, 5))
    assert x1 > x0 + 50 and abs(y1 - y0) < 20 and y5 < y0 - 50


def test_save_png_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a" / "x.png"
    save_png(solid((1, 2, 3)), str(path))
    assert Image.open(path).getpixel((0, 0)) == (1, 2, 3)

    def broken(self, fp, format=None, **kw):  # noqa: A002
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError):
        save_png(solid((9, 9, 9)), str(path))
    assert Image.open(path).getpixel((0, 0)) == (1, 2, 3)  # the old file, whole
    assert os.listdir(path.parent) == ["x.png"]


# -- the callback, called directly ---------------------------------------------------------------
def stand_in_trainer(
    epoch: int = 0, fn: str = "fit", loggers: list | None = None, **flags
) -> SimpleNamespace:
    """What PlotCallback reads of a Trainer, for ``fixed_result``'s 8 samples."""
    datamodule = SimpleNamespace(
        eval_dataset=lambda stage: FakeDataset(np.array([0, 0, 1, 1, 2, 2, 3, 3]), 4),
        train_class_counts=[9, 6, 6, 3],
    )
    return SimpleNamespace(
        is_global_zero=flags.get("is_global_zero", True),
        sanity_checking=flags.get("sanity_checking", False),
        current_epoch=epoch,
        state=SimpleNamespace(fn=fn),
        datamodule=datamodule,
        loggers=loggers or [],
        global_step=10 * epoch + 7,
    )


def plot_callback(tmp_path, **options) -> PlotCallback:
    options = {"n_queries": 8, "n_neighbors": 2, "thumb_size": 32, **options}
    return PlotCallback(str(tmp_path / "plots"), **options)


def test_on_evaluation_end_writes_the_pictures_of_the_result(tmp_path):
    callback = plot_callback(tmp_path)
    for epoch in (0, 1):
        callback.on_evaluation_end(stand_in_trainer(epoch), None, fixed_result("val"))
    expected = sorted(
        f"val_{n}_{s}.png" for n in PLOT_NAMES for s in ("epoch000", "epoch001", "latest")
    )
    assert sorted(os.listdir(tmp_path / "plots")) == expected
    assert len(callback.written) == 2 * 2 * len(PLOT_NAMES)
    assert callback.written[-2:] == [
        str(tmp_path / "plots" / f"val_embedding_projection_{s}.png")
        for s in ("epoch001", "latest")
    ]
    plot_dir = tmp_path / "plots"
    latest = Image.open(plot_dir / "val_per_class_accuracy_latest.png")
    assert np.array_equal(
        np.asarray(latest), np.asarray(Image.open(plot_dir / "val_per_class_accuracy_epoch001.png"))
    )
    # The pixels say what the result holds. Bars in train-frequency order (counts 9, 6, 6, 3:
    # classes 0, 1, 2, 3) of the per-class accuracies 1, 1/2, 1, 1/2.
    heights = bar_heights(latest.convert("RGB"), plots.BAR_COLOR)
    assert np.array(heights) / heights[0] == pytest.approx([1.0, 0.5, 1.0, 0.5], abs=0.03)
    grid = Image.open(plot_dir / "val_retrieval_grid_latest.png").convert("RGB")
    assert grid_border(grid, 2, 0) == plots.WRONG_COLOR
    assert grid_border(grid, 2, 1) == plots.CORRECT_COLOR


def test_on_evaluation_end_without_class_head(tmp_path):
    callback = plot_callback(tmp_path)
    callback.on_evaluation_end(stand_in_trainer(), None, fixed_result(classify=False))
    assert sorted(os.listdir(tmp_path / "plots")) == sorted(
        f"val_{n}_{s}.png"
        for n in ("retrieval_grid", "worst_queries", "pair_distances", "embedding_projection")
        for s in ("epoch000", "latest")
    )


def test_on_evaluation_end_every_n_epochs_sanity_check_and_other_ranks(tmp_path, monkeypatch):
    import ranking_reg.lightning.plot_callback as plot_callback_module

    # Only which results get drawn matters here: one solid picture per name, no matplotlib.
    def quick(result, *args, **kwargs):
        return {name: solid((1, 2, 3)) for name in PLOT_NAMES}

    monkeypatch.setattr(plot_callback_module, "render_plots", quick)
    callback = plot_callback(tmp_path, every_n_epochs=2)
    for epoch in range(4):
        callback.on_evaluation_end(stand_in_trainer(epoch), None, fixed_result("val"))
    # Drawn after the 2nd and 4th epochs only (epochs count from 0).
    assert len(callback.written) == 2 * 2 * len(PLOT_NAMES)
    assert {os.path.basename(p) for p in callback.written} == {
        f"val_{n}_{s}.png" for n in PLOT_NAMES for s in ("epoch001", "epoch003", "latest")
    }
    callback.written.clear()
    # Outside fit (trainer.validate) and at test every result is drawn, whatever the epoch.
    callback.on_evaluation_end(stand_in_trainer(0, fn="validate"), None, fixed_result("val"))
    callback.on_evaluation_end(stand_in_trainer(3, fn="test"), None, fixed_result("test"))
    assert len(callback.written) == 2 * 2 * len(PLOT_NAMES)
    # A test result has its own file names, at the trainer's epoch.
    assert str(tmp_path / "plots" / "test_confusion_matrix_epoch003.png") in callback.written
    callback.written.clear()
    # Never for the sanity check, never on other ranks.
    callback.on_evaluation_end(stand_in_trainer(1, sanity_checking=True), None, fixed_result())
    callback.on_evaluation_end(stand_in_trainer(1, is_global_zero=False), None, fixed_result())
    assert callback.written == []


def test_callback_rejects_bad_options():
    with pytest.raises(ConfigError, match="callbacks.plots.projection"):
        PlotCallback("x", projection="umap")
    with pytest.raises(ConfigError, match="callbacks.plots.n_neighbors"):
        PlotCallback("x", n_neighbors=0)


def test_callback_logs_pictures_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path / "tb"), name=None, version="")
    callback = plot_callback(tmp_path)
    trainer = stand_in_trainer(2, loggers=[logger])
    callback.on_evaluation_end(trainer, None, fixed_result("val"))
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"val/{n}" for n in PLOT_NAMES)
    (entry,) = events.Images("val/per_class_accuracy")
    png = Image.open(tmp_path / "plots" / "val_per_class_accuracy_latest.png")
    assert (entry.width, entry.height) == png.size and entry.step == trainer.global_step


def test_callback_warns_instead_of_failing_the_run(tmp_path):
    callback = plot_callback(tmp_path)
    broken = fixed_result()
    broken.labels = broken.labels[:5]  # fewer labels than embeddings
    with pytest.warns(UserWarning, match="drawing the val pictures failed"):
        callback.on_evaluation_end(stand_in_trainer(), None, broken)
    assert not (tmp_path / "plots").exists() and callback.written == []


# -- the hand-off in a Lightning run (also used by test_wandb.py) -------------------------------
class TinyModule(pl.LightningModule):
    """Scores each evaluation with an Evaluator and hands the result to the callbacks with
    ``notify_evaluation_end``, as the real module does."""

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, n_classes)
        self.n_classes = n_classes
        self.evaluator = Evaluator(ks=(1, 2))

    def training_step(self, batch, _):
        x, y, _idx = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def _eval_step(self, batch):
        x, y, idx = batch
        self.evaluator.update(self.net(x), torch.nn.functional.normalize(x, dim=1), x, y, idx)

    def validation_step(self, batch, _):
        self._eval_step(batch)

    def test_step(self, batch, _):
        self._eval_step(batch)

    def _epoch_end(self, stage):
        notify_evaluation_end(self.trainer, self, self.evaluator.compute(stage, self.n_classes))

    def on_validation_epoch_end(self):
        self._epoch_end("val")

    def on_test_epoch_end(self):
        self._epoch_end("test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TinyData(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(24) % 4
        self.x = torch.randn(24, 2, generator=g) + torch.stack([self.y, -self.y], 1).float()
        self.dataset = FakeDataset(self.y.numpy(), 4)
        self.train_class_counts = [9, 6, 6, 3]

    def _loader(self):
        data = torch.utils.data.TensorDataset(self.x, self.y, torch.arange(24))
        return torch.utils.data.DataLoader(data, batch_size=8)

    train_dataloader = val_dataloader = test_dataloader = _loader

    def eval_dataset(self, stage):
        return self.dataset


def tiny_trainer(
    root, callback, logger=False, max_epochs: int = 1, num_sanity_val_steps: int = 0
) -> pl.Trainer:
    """A quiet CPU Trainer around one PlotCallback (shared with test_wandb.py)."""
    return pl.Trainer(
        max_epochs=max_epochs,
        num_sanity_val_steps=num_sanity_val_steps,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        accelerator="cpu",
        default_root_dir=str(root),
    )


def test_module_hands_each_evaluation_to_the_callback(tmp_path, monkeypatch):
    import ranking_reg.lightning.plot_callback as plot_callback_module

    drawn = []

    def spy(result, *args, **kwargs):
        drawn.append((result.stage, len(result.labels), result.positions.tolist()))
        return render_plots(result, *args, **kwargs)

    monkeypatch.setattr(plot_callback_module, "render_plots", spy)
    callback = PlotCallback(str(tmp_path / "plots"), n_queries=4, n_neighbors=3, thumb_size=16)
    trainer = tiny_trainer(tmp_path, callback, num_sanity_val_steps=1)
    module, data = TinyModule(), TinyData()
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data)
    # The whole split of each evaluation, never the sanity check's single batch of 8.
    assert drawn == [("val", 24, list(range(24))), ("test", 24, list(range(24)))]
    grid = Image.open(tmp_path / "plots" / "test_retrieval_grid_latest.png")
    assert grid.size[1] == 4 * (16 + 8 + 12 + 4)  # 4 query rows
    assert len(callback.written) == 2 * 2 * len(PLOT_NAMES)
