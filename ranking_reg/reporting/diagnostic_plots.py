"""The diagnostic pictures (docs/DIAGNOSTICS.md): pure functions, arrays in, images out.

- the worst queries (lowest AP@R) of the second retrieval grid (:func:`select_worst_queries`;
  the grid is :func:`ranking_reg.reporting.plots.retrieval_grid`);
- reliability diagram of the softmax head: accuracy against confidence per bin, with the ECE
  (:mod:`ranking_reg.metrics.calibration`, Guo et al., ICML 2017);
- histograms of the same-class and different-class pair distances of an embedding
  (:func:`ranking_reg.metrics.geometry.pair_distance_sample`).

Drawn like those of :mod:`ranking_reg.reporting.plots`: matplotlib imported lazily, its object
API on an Agg canvas.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ranking_reg.reporting.plots import BAR_COLOR, COUNT_COLOR, DPI, figure_to_image

# Exact RGB values of the diagonal and of the two histograms.
DIAGONAL_COLOR = (0, 0, 0)
POSITIVE_COLOR = (44, 160, 44)
NEGATIVE_COLOR = (214, 39, 40)


# -- worst queries ----------------------------------------------------------------------------------
def select_worst_queries(ap_at_r: np.ndarray, n_queries: int) -> np.ndarray:
    """Indices of the ``n_queries`` queries with the lowest AP@R, worst first (ties: the lower
    index first); queries whose AP@R is NaN (no other item of their class, R = 0) are never
    chosen. Fewer when fewer queries have an AP@R."""
    ap = np.asarray(ap_at_r, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(ap))
    order = valid[np.lexsort((valid, ap[valid]))]
    return order[: max(0, int(n_queries))].astype(np.int64)


# -- calibration --------------------------------------------------------------------------------
def reliability_diagram(
    edges: np.ndarray,
    counts: np.ndarray,
    accuracy: np.ndarray,
    confidence: np.ndarray,
    ece: float,
    title: str = "reliability diagram",
) -> Image.Image:
    """Per-bin accuracy bars against confidence (top) above the bins' sample counts (bottom).

    The inputs are those of :class:`~ranking_reg.metrics.calibration.ReliabilityBins`: ``edges``
    (M + 1), and per bin the count, accuracy and mean confidence (NaN when empty). The diagonal is
    perfect calibration; a bar below it is over-confidence. The mean confidence of each bin is a
    dot; the ECE is in the title.
    """
    from matplotlib.figure import Figure

    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    lefts, widths = edges[:-1], np.diff(edges)
    centres = lefts + widths / 2
    fig = Figure(figsize=(6.0, 6.0), dpi=DPI)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bar_rgb = np.asarray(BAR_COLOR) / 255
    top.bar(
        lefts,
        np.nan_to_num(accuracy),
        width=widths,
        align="edge",
        color=bar_rgb,
        edgecolor="white",
        linewidth=0.5,
        antialiased=False,
        label="accuracy",
    )
    top.plot([0, 1], [0, 1], color=np.asarray(DIAGONAL_COLOR) / 255, linestyle="--", linewidth=1)
    filled = counts > 0
    top.plot(
        centres[filled],
        confidence[filled],
        "o",
        color="darkorange",
        markersize=4,
        label="mean confidence",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    total = int(counts.sum())
    top.set_title(f"{title}: ECE {ece:.4f} ({len(counts)} bins, {total} samples)", fontsize=10)
    bottom.bar(
        lefts,
        counts,
        width=widths,
        align="edge",
        color=np.asarray(COUNT_COLOR) / 255,
        antialiased=False,
    )
    bottom.set_ylim(0, max(1.0, float(counts.max(initial=0))) * 1.1)
    bottom.set_ylabel("samples")
    bottom.set_xlabel("confidence (max softmax probability)")
    fig.tight_layout()
    return figure_to_image(fig)


# -- embedding geometry -----------------------------------------------------------------------------
def pair_distance_histogram(
    positive: np.ndarray,
    negative: np.ndarray,
    sampled: bool = False,
    max_pairs: int | None = None,
    title: str = "pair distances",
    bins: int = 50,
) -> Image.Image:
    """Overlaid density histograms of the same-class (green) and different-class (red) pair
    distances, on shared bins; the title says whether the pairs are all pairs or a sample of at
    most ``max_pairs`` of each kind (:func:`~ranking_reg.metrics.geometry.pair_distance_sample`)."""
    from matplotlib.figure import Figure

    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    both = np.concatenate([positive, negative])
    hi = float(both.max(initial=0.0))
    edges = np.linspace(0.0, hi if hi > 0 else 1.0, bins + 1)
    fig = Figure(figsize=(7.0, 4.5), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    for values, color, label in (
        (positive, POSITIVE_COLOR, "same class"),
        (negative, NEGATIVE_COLOR, "different class"),
    ):
        if len(values):
            ax.hist(
                values,
                bins=edges,
                density=True,
                histtype="stepfilled",
                alpha=0.45,
                color=np.asarray(color) / 255,
                label=f"{label} ({len(values)} pairs, mean {values.mean():.3f})",
            )
    ax.set_xlabel("Euclidean distance")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    how = f"seeded sample of <= {max_pairs} pairs of each kind" if sampled else "all pairs"
    ax.set_title(f"{title} ({how})", fontsize=10)
    fig.tight_layout()
    return figure_to_image(fig)
