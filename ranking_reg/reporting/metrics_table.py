"""The metrics table printed at the end of a run."""

from __future__ import annotations

import re

PERCENT_PREFIXES = (
    "acc",
    "macro_acc",
    "recall@",
    "many_acc",
    "medium_acc",
    "few_acc",
    "many_recall@",
    "medium_recall@",
    "few_recall@",
    "pooled_recall@",
    "pooled_many_recall@",
    "pooled_medium_recall@",
    "pooled_few_recall@",
    "knn_acc@",
    "pooled_knn_acc@",
    "fused_acc",
    "top1@",
    "ece",
)
# The order of the rows within a stage: the class head (accuracy, long tail, calibration), the
# embedding (retrieval, by frequency group, geometry), the same for the pooled features, the kNN
# classification, then anything else (hierarchy metrics, flags) by name. A name matches the
# first pattern it fully matches; ties keep the natural order of their numbers (recall@2 < @16).
ROW_ORDER = (
    r"acc",
    r"macro_acc",
    r"many_acc",
    r"medium_acc",
    r"few_acc",
    r"ece",
    r"recall@\d+",
    r"map@r",
    r"nmi",
    r"many_recall@\d+",
    r"medium_recall@\d+",
    r"few_recall@\d+",
    r"intra_dist",
    r"inter_dist",
    r"intra_inter_ratio",
    r"pooled_recall@\d+",
    r"pooled_map@r",
    r"pooled_nmi",
    r"pooled_many_recall@\d+",
    r"pooled_medium_recall@\d+",
    r"pooled_few_recall@\d+",
    r"pooled_intra_dist",
    r"pooled_inter_dist",
    r"pooled_intra_inter_ratio",
    r"knn_acc@\d+",
    r"pooled_knn_acc@\d+",
    r"fused_acc",
    r"fused_alpha",
    r"fused_alpha_on_val",
)
_ROW_PATTERNS = [re.compile(pattern) for pattern in ROW_ORDER]


def _natural(text: str) -> tuple[object, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def row_order(key: str) -> tuple[object, ...]:
    """Sort key of a metric name such as ``test/recall@4``: its stage prefix, then its place in
    :data:`ROW_ORDER` (unknown names after the known ones, by name), then natural order."""
    stage, _, name = key.rpartition("/")
    rank = next(
        (i for i, pattern in enumerate(_ROW_PATTERNS) if pattern.fullmatch(name)), len(ROW_ORDER)
    )
    return (stage, rank, _natural(name))


def format_metrics_table(metrics: dict[str, float], title: str = "metrics") -> str:
    """A two-column text table, rows in :func:`row_order`; accuracies (softmax, kNN, fused,
    hierarchy top-1), recalls and the ECE in percent; NMI, MAP@R, distances and their ratio, the
    fusion's alpha and the 0/1 flags as plain numbers."""
    rows = []
    for key in sorted(metrics, key=row_order):
        value = metrics[key]
        name = key.split("/", 1)[-1]
        percent = name.startswith(PERCENT_PREFIXES) or name.endswith("acc_best")
        rows.append((key, f"{100 * value:6.2f} %" if percent else f"{value:8.4f}"))
    width = max([len(k) for k, _ in rows] + [len("metric")])
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  --------"]
    lines += [f"{key:<{width}}  {value}" for key, value in rows]
    return "\n".join(lines)
