"""The pictures a researcher looks at after each evaluation: pure functions, arrays in, images out.

- retrieval grid: query images, each followed by its nearest test neighbours in embedding space
  (the retrieval task that Recall@K scores, Taha et al. 2020 §5; the neighbours come from
  :func:`ranking_reg.metrics.nearest_neighbors`), bordered green when the neighbour has the
  query's class and red otherwise;
- per-class accuracy (:func:`ranking_reg.metrics.per_class_accuracy`), classes sorted by their
  number of training images (the long tail on the right: what the imbalanced variant does to
  rare classes);
- confusion matrix of at most ``k`` classes: all of them, or the ``k`` most confused;
- 2-D projection (PCA or t-SNE) of the embeddings, coloured by class;
- the diagnostics' worst-query choice, reliability diagram and pair-distance histograms:
  :mod:`ranking_reg.reporting.diagnostic_plots`.

Matplotlib is imported lazily and drawn through its object API on an Agg canvas (no pyplot, so no
global backend or figure registry is touched), which keeps ``import ranking_reg`` fast and makes
the functions safe to call from a training process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ranking_reg.utils.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Border colours of the retrieval grid (exact RGB values, tests read them back).
CORRECT_COLOR = (0, 170, 0)
WRONG_COLOR = (220, 0, 0)
QUERY_COLOR = (40, 90, 200)
BACKGROUND = (255, 255, 255)
# Accuracy bars (drawn without anti-aliasing, so this exact colour marks bar pixels).
BAR_COLOR = (31, 119, 180)
COUNT_COLOR = (150, 150, 150)
PROJECTIONS = ("pca", "tsne")
# The pictures of one evaluation: file names, W&B keys (<stage>/<name>), dashboard panels.
PLOT_NAMES = (
    "retrieval_grid",
    "worst_queries",
    "per_class_accuracy",
    "confusion_matrix",
    "reliability_diagram",
    "pair_distances",
    "embedding_projection",
)
DPI = 100


# -- retrieval ----------------------------------------------------------------------------------
def select_queries(labels: np.ndarray, n_queries: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n_queries`` query samples, one per class for as many classes as possible.

    Classes are drawn at random (seeded, so every epoch shows the same queries), one random
    sample each; if there are fewer classes than queries the rest are other random samples.
    The result is sorted by (label, index) so the grid reads in class order.
    """
    labels = np.asarray(labels)
    n = min(int(n_queries), len(labels))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))[:n]
    chosen = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes]
    if len(chosen) < n:
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        chosen += [int(i) for i in rng.choice(rest, size=n - len(chosen), replace=False)]
    chosen_arr = np.asarray(chosen, dtype=np.int64)
    return chosen_arr[np.lexsort((chosen_arr, labels[chosen_arr]))]


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    image = image.convert("RGB")
    # Tiny images (the 8x8 digits) stay sharp when blown up; photos are resampled smoothly.
    small = max(image.size) * 2 <= size
    method = Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC
    return ImageOps.pad(image, (size, size), method=method, color=BACKGROUND)


def retrieval_grid(
    query_images: Sequence[Image.Image],
    neighbor_images: Sequence[Sequence[Image.Image]],
    neighbor_correct: np.ndarray,
    thumb_size: int = 64,
    border: int = 4,
    captions: Sequence[Sequence[str]] | None = None,
) -> Image.Image:
    """One row per query: the query (blue border), a gap, then its neighbours in rank order.

    A neighbour's border is ``CORRECT_COLOR`` when ``neighbor_correct[q, j]`` (same class as the
    query) and ``WRONG_COLOR`` otherwise. ``captions[q]`` (optional) holds ``1 + k`` short texts
    (query first) written under the tiles. Size: ``(1 + k) * cell + gap`` by ``Q * row`` pixels.
    """
    correct = np.asarray(neighbor_correct, dtype=bool)
    n_rows = len(query_images)
    k = correct.shape[1] if correct.ndim == 2 else 0
    cell = thumb_size + 2 * border
    pad, gap = 2, cell // 3
    text_h = 12 if captions is not None else 0
    row_h = cell + text_h + 2 * pad
    width = (1 + k) * (cell + 2 * pad) + gap
    canvas = Image.new("RGB", (width, max(1, n_rows * row_h)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    def tile(image: Image.Image, x: int, y: int, color: tuple[int, int, int]) -> None:
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color)
        canvas.paste(_thumbnail(image, thumb_size), (x + border, y + border))

    for q in range(n_rows):
        y = q * row_h + pad
        tile(query_images[q], pad, y, QUERY_COLOR)
        for j in range(k):
            x = pad + (1 + j) * (cell + 2 * pad) + gap
            tile(neighbor_images[q][j], x, y, CORRECT_COLOR if correct[q, j] else WRONG_COLOR)
        if captions is not None:
            for j, text in enumerate(captions[q][: 1 + k]):
                x = pad + j * (cell + 2 * pad) + (gap if j else 0)
                draw.text((x, y + cell + 1), _clip_text(text, cell), fill=(0, 0, 0))
    return canvas


def _clip_text(text: str, width_px: int, char_px: int = 6) -> str:
    # PIL's default bitmap font is about 6 px per character.
    limit = max(1, width_px // char_px)
    return text if len(text) <= limit else text[: limit - 1] + "~"


# -- per-class accuracy ---------------------------------------------------------------------------
def frequency_order(train_counts: Sequence[int]) -> np.ndarray:
    """Class ids by decreasing number of training images (ties: lower class id first)."""
    return np.argsort(-np.asarray(train_counts, dtype=np.int64), kind="stable")


def per_class_accuracy_chart(
    accuracy: np.ndarray,
    train_counts: Sequence[int],
    class_names: Sequence[str] | None = None,
    title: str = "per-class accuracy",
) -> Image.Image:
    """Accuracy bars (top) above training-image counts (bottom), classes in ``frequency_order``.

    The dashed line is the macro accuracy (mean over classes with test samples). Class names
    label the x axis up to 60 classes; beyond that the axis shows the frequency rank.
    """
    from matplotlib.figure import Figure

    accuracy = np.asarray(accuracy, dtype=np.float64)
    counts = np.asarray(train_counts, dtype=np.int64)
    if counts.shape != accuracy.shape:
        raise ValueError(f"{len(counts)} train counts for {len(accuracy)} classes")
    order = frequency_order(counts)
    n = len(order)
    x = np.arange(n)
    width_in = float(np.clip(2.0 + 0.16 * n, 6.0, 16.0))
    fig = Figure(figsize=(width_in, 5.0), dpi=DPI)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    present = ~np.isnan(accuracy)
    macro = float(accuracy[present].mean()) if present.any() else float("nan")
    top.axhline(macro, color="black", linestyle="--", linewidth=1, zorder=1)
    _bars(top, np.nan_to_num(accuracy[order]), BAR_COLOR, zorder=2)
    if n > 30:
        # With hundreds of thin bars the trend along the tail is what one reads: a running mean.
        window = max(5, n // 20)
        acc_sorted = accuracy[order]
        valid = ~np.isnan(acc_sorted)
        kernel = np.ones(window)
        num = np.convolve(np.where(valid, acc_sorted, 0.0), kernel, mode="same")
        den = np.convolve(valid.astype(np.float64), kernel, mode="same")
        with np.errstate(invalid="ignore", divide="ignore"):
            top.plot(
                x,
                num / den,
                color="darkorange",
                linewidth=1.5,
                zorder=3,
                label=f"running mean over {window} classes",
            )
        top.legend(loc="lower left", fontsize=8)
    top.set_ylim(0, 1.05)
    top.set_xlim(-0.6, n - 0.4)
    top.set_ylabel("test accuracy")
    top.set_title(f"{title} (macro {macro:.3f}), classes by train frequency")
    _bars(bottom, counts[order].astype(np.float64), COUNT_COLOR)
    bottom.set_ylim(0, max(1, int(counts.max(initial=0))) * 1.05)
    bottom.set_ylabel("train imgs")
    if n <= 60 and class_names is not None:
        bottom.set_xticks(x, [_short(class_names[c], 14) for c in order], rotation=90, fontsize=7)
    else:
        bottom.set_xlabel("classes, most to least frequent in train")
    fig.tight_layout()
    return figure_to_image(fig)


def _bars(ax: object, heights: np.ndarray, color: tuple[int, int, int], zorder: int = 2) -> None:
    # One PolyCollection instead of ax.bar's one patch per bar: NABirds has 555 classes.
    from matplotlib.collections import PolyCollection

    verts = [
        [(c - 0.4, 0.0), (c - 0.4, h), (c + 0.4, h), (c + 0.4, 0.0)] for c, h in enumerate(heights)
    ]
    rgb = np.asarray(color) / 255
    bars = PolyCollection(verts, facecolors=[rgb], linewidths=0, antialiaseds=False, zorder=zorder)
    ax.add_collection(bars)


# -- confusion ----------------------------------------------------------------------------------
def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of test samples of class ``i`` predicted as ``j``."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    return sk_confusion_matrix(labels, preds, labels=np.arange(n_classes))


def select_confused_classes(cm: np.ndarray, k: int) -> np.ndarray:
    """The classes to show in a confusion matrix of at most ``k`` classes, sorted by class id.

    All classes when there are at most ``k``. Otherwise class pairs are taken in decreasing
    order of their mutual confusion ``C[i, j] + C[j, i]`` (ties: lower ids first), adding both
    classes of each pair until ``k`` are chosen, so the picture shows the confusions themselves,
    not classes whose confusions were with classes left out. If fewer than ``k`` classes are
    confused at all, the rest are those with the most test samples.
    """
    cm = np.asarray(cm)
    n = cm.shape[0]
    if n <= k:
        return np.arange(n)
    mutual = np.triu(cm + cm.T, k=1)
    rows, cols = np.nonzero(mutual)
    order = np.lexsort((cols, rows, -mutual[rows, cols]))
    chosen: list[int] = []
    for i, j in zip(rows[order], cols[order], strict=True):
        for c in (int(i), int(j)):
            if c not in chosen and len(chosen) < k:
                chosen.append(c)
        if len(chosen) >= k:
            break
    if len(chosen) < k:
        by_support = np.argsort(-cm.sum(1), kind="stable")
        chosen += [int(c) for c in by_support if c not in chosen][: k - len(chosen)]
    return np.sort(np.asarray(chosen, dtype=np.int64))


def confusion_matrix_plot(
    cm: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str] | None = None,
    title: str = "confusion matrix",
) -> Image.Image:
    """The rows and columns ``classes`` of ``cm``, each row divided by its full row total.

    A cell is the fraction of the row class's test samples predicted as the column class. The
    diagonal (per-class accuracy, blue, 0..1) and the off-diagonal cells (red, 0..their largest
    value) get separate colour scales, or the diagonal would wash the confusions out. Counts are
    written in the cells up to 20 classes.
    """
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    classes = np.asarray(classes)
    sub = cm[np.ix_(classes, classes)]
    totals = np.maximum(cm.sum(1)[classes], 1)[:, None]
    frac = sub / totals
    k = len(classes)
    diagonal = np.eye(k, dtype=bool)
    off = np.where(diagonal, 0.0, frac)
    off_max = max(float(off.max(initial=0.0)), 1e-6)
    side = float(np.clip(2.5 + 0.2 * k, 5.0, 13.0))
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    # Cells without confusion stay white (masked), so the confusions stand out.
    confused = np.ma.masked_where(diagonal | (sub == 0), off)
    im = ax.imshow(confused, cmap="Reds", vmin=0.0, vmax=off_max, interpolation="nearest")
    diag = np.ma.masked_where(~diagonal, frac)
    ax.imshow(diag, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("fraction of the true class predicted as the column class")
    names = [str(c) if class_names is None else _short(class_names[c], 18) for c in classes]
    fontsize = 8 if k <= 25 else 5
    ax.set_xticks(np.arange(k), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(k), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    shown = f"{k} of {cm.shape[0]} classes (most confused)" if k < cm.shape[0] else "all classes"
    ax.set_title(f"{title}: {shown}; diagonal (blue) = accuracy", fontsize=9)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if sub[i, j]:
                    dark = frac[i, j] > 0.5 if i == j else off[i, j] > 0.5 * off_max
                    color = "white" if dark else "black"
                    ax.text(j, i, str(sub[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return figure_to_image(fig)


# -- projection ---------------------------------------------------------------------------------
def project_2d(
    embeddings: np.ndarray, method: str = "pca", max_points: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates of at most ``max_points`` embeddings and the indices they belong to.

    A seeded random subset keeps the cost bounded (t-SNE is quadratic) and shows the same points
    every epoch. ``pca``: the first two principal components; ``tsne``: scikit-learn's t-SNE
    initialised from PCA (perplexity 30, or less for a small set).
    """
    if method not in PROJECTIONS:
        raise ConfigError(
            f"callbacks.plots.projection={method!r} is not a projection; use one of {PROJECTIONS}."
        )
    x = np.asarray(embeddings, dtype=np.float64)
    idx = np.arange(len(x))
    if len(x) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(x), size=max_points, replace=False))
    x = x[idx]
    if len(x) < 3 or x.shape[1] < 2:
        coords = np.zeros((len(x), 2))
        coords[:, : min(2, x.shape[1])] = x[:, :2]
        return coords, idx
    if method == "pca":
        from sklearn.decomposition import PCA

        # covariance_eigh: a D x D eigenproblem, far cheaper than an SVD of the N x D data here.
        return PCA(n_components=2, svd_solver="covariance_eigh").fit_transform(x), idx
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x), idx


def class_colors(n_classes: int) -> np.ndarray:
    """``[n_classes, 3]`` RGB in [0, 1]: tab10 / tab20 when they suffice, else a turbo sweep."""
    from matplotlib import colormaps

    if n_classes <= 10:
        return np.asarray(colormaps["tab10"].colors)[:n_classes]
    if n_classes <= 20:
        return np.asarray(colormaps["tab20"].colors)[:n_classes]
    return colormaps["turbo"](np.linspace(0.0, 1.0, n_classes))[:, :3]


def embedding_projection_plot(
    coords: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    class_names: Sequence[str] | None = None,
    title: str = "embedding projection",
) -> Image.Image:
    """Scatter of ``coords`` coloured by class (``class_colors``); a legend up to 20 classes."""
    from matplotlib.figure import Figure

    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels)
    colors = class_colors(n_classes)
    fig = Figure(figsize=(7.5, 6.0), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(coords[:, 0], coords[:, 1], c=colors[labels], s=8, linewidths=0)
    if n_classes <= 20:
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], marker="o", linestyle="", color=colors[c], markersize=5)
            for c in range(n_classes)
        ]
        names = [
            str(c) if class_names is None else _short(class_names[c], 16) for c in range(n_classes)
        ]
        ax.legend(handles, names, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{title} ({len(coords)} points)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return figure_to_image(fig)


# -- helpers ------------------------------------------------------------------------------------
def figure_to_image(fig: Figure) -> Image.Image:
    """Render a matplotlib ``Figure`` on an Agg canvas into an RGB ``PIL.Image``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def _short(name: object, limit: int) -> str:
    text = str(name)
    return text if len(text) <= limit else text[: limit - 1] + "~"
