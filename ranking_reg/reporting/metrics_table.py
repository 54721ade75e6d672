"""The metrics table printed at the end of a run."""

from __future__ import annotations

PERCENT_PREFIXES = (
    "acc",
    "macro_acc",
    "recall@",
    "many_acc",
    "medium_acc",
    "few_acc",
    "pooled_recall@",
    "knn_acc@",
    "pooled_knn_acc@",
    "fused_acc",
)


def format_metrics_table(metrics: dict[str, float], title: str = "metrics") -> str:
    """A two-column text table; accuracies (softmax, kNN, fused) and recalls in percent; NMI,
    MAP@R, the fusion's alpha and the 0/1 flags as plain numbers."""
    rows = []
    for key in sorted(metrics):
        value = metrics[key]
        name = key.split("/", 1)[-1]
        percent = name.startswith(PERCENT_PREFIXES) or name.endswith("acc_best")
        rows.append((key, f"{100 * value:6.2f} %" if percent else f"{value:8.4f}"))
    width = max([len(k) for k, _ in rows] + [len("metric")])
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  --------"]
    lines += [f"{key:<{width}}  {value}" for key, value in rows]
    return "\n".join(lines)
