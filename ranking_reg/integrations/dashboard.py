"""A saved W&B workspace for ranking-regularizer sweeps: ``python -m ranking_reg.dashboard``.

    python -m ranking_reg.dashboard --project ranking_reg [--entity E] [--group SWEEP_GROUP]

Sections (``wandb-workspaces``, ``pip install ranking_reg[dashboard]``):

1. *λ sweep*: final test accuracy, macro accuracy and Recall@1 against λ
   (``config.regularizer.weight``) as scatter plots, one point per run, plus a parallel
   coordinates plot regularizer / miner / λ -> test metrics;
2. *softmax vs. triplet*: validation accuracy, Recall@1 and the training loss over steps,
   runs grouped by ``config.regularizer.name`` (mean line, standard-error band over seeds);
3. *pictures*: the plot callback's images (``val/…`` per epoch, ``test/…``).

``--group`` restricts the workspace's runs to one sweep (W&B group = the multirun dir, see
``wandb_utils.run_group``). ``build_workspace`` builds the spec without any network access;
``main`` only adds the upload, which needs a W&B account (``wandb login``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ranking_reg.reporting.plots import PLOT_NAMES
from ranking_reg.utils.errors import ConfigError, UserError, exit_with_user_error

LAMBDA = "regularizer.weight"
REGULARIZER = "regularizer.name"
MINER = "miner._target_"
STEP = "trainer/global_step"  # Lightning's WandbLogger logs every metric against this key
TEST_METRICS = ("test/acc", "test/macro_acc", "test/recall@1")
CURVES = ("val/acc", "val/recall@1", "train/loss")
DEFAULT_NAME = "ranking_reg: λ sweep, softmax vs triplet"


def _imports() -> tuple[Any, Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
        from wandb_workspaces import expr
    except ImportError as error:
        raise ConfigError(
            "the dashboard needs the wandb-workspaces package: install it with"
            " `pip install 'ranking_reg[dashboard]'` (or `pip install wandb-workspaces`)."
        ) from error
    return ws, wr, expr


def build_workspace(
    project: str,
    entity: str,
    group: str | None = None,
    name: str = DEFAULT_NAME,
    test_metrics: Sequence[str] = TEST_METRICS,
    curves: Sequence[str] = CURVES,
) -> Any:
    """The workspace spec (a ``wandb_workspaces.workspaces.Workspace``); nothing is uploaded."""
    ws, wr, expr = _imports()
    lam = wr.Config(LAMBDA)
    sweep_panels: list[Any] = [
        wr.ScatterPlot(title=f"{metric} vs λ", x=lam, y=wr.SummaryMetric(metric))
        for metric in test_metrics
    ]
    sweep_panels.append(
        wr.ParallelCoordinatesPlot(
            title="regularizer, miner, λ -> test metrics",
            columns=[
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config(REGULARIZER)),
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config(MINER)),
                wr.ParallelCoordinatesPlotColumn(metric=lam, display_name="λ"),
                *[
                    wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m))
                    for m in test_metrics
                ],
            ],
        )
    )
    curve_panels = [
        wr.LinePlot(
            title=f"{metric}: softmax vs triplet (mean ± s.e. over runs)",
            x=STEP,
            y=[metric],
            groupby=wr.Config(REGULARIZER),
            groupby_aggfunc="mean",
            groupby_rangefunc="stderr",
        )
        for metric in curves
    ]
    picture_panels = [
        wr.MediaBrowser(
            title=f"{stage}/{plot}", media_keys=[f"{stage}/{plot}"], gallery_axis="step"
        )
        for stage in ("val", "test")
        for plot in PLOT_NAMES
    ]
    runset = ws.RunsetSettings()
    if group:
        runset = ws.RunsetSettings(filters=[expr.Metric("Group") == group])
    return ws.Workspace(
        name=name if not group else f"{name} [{group}]"[:128],
        entity=entity,
        project=project,
        sections=[
            ws.Section(name="λ sweep: test metrics against λ", panels=sweep_panels, is_open=True),
            ws.Section(
                name="softmax vs triplet: learning curves", panels=curve_panels, is_open=True
            ),
            ws.Section(name="pictures (plots callback)", panels=picture_panels, is_open=False),
        ],
        runset_settings=runset,
    )


def workspace_spec(workspace: Any) -> dict[str, Any]:
    """The JSON view spec ``save_workspace`` would upload (built offline, for checks)."""
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def save_workspace(workspace: Any) -> str:
    """Upload ``workspace`` as a saved view (needs a W&B login) and return its URL."""
    return str(workspace.save().url)


def require_login() -> None:
    """Fail with a clear message (instead of a login prompt) when no W&B API key is configured."""
    from ranking_reg.integrations.wandb_utils import has_api_key

    if not has_api_key():
        raise ConfigError(
            "saving a W&B workspace needs a W&B account: run `wandb login` (or set"
            " WANDB_API_KEY) and try again."
        )


def default_entity() -> str:
    """The logged-in user's default entity (network call)."""
    import wandb

    entity = wandb.Api().default_entity
    if not entity:
        raise ConfigError(
            "no W&B entity: pass --entity (your user or team name) or run `wandb login`."
        )
    return str(entity)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ranking_reg.dashboard",
        description="Create a saved W&B workspace for ranking_reg runs (needs `wandb login`).",
    )
    parser.add_argument("--project", required=True, help="W&B project of the runs")
    parser.add_argument("--entity", default=None, help="W&B user or team (default: yours)")
    parser.add_argument("--group", default=None, help="only the runs of this sweep group")
    parser.add_argument("--name", default=DEFAULT_NAME, help="name of the saved workspace")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        require_login()
        entity = args.entity or default_entity()
        workspace = build_workspace(args.project, entity, group=args.group, name=args.name)
        print(save_workspace(workspace))
    except UserError as error:
        exit_with_user_error(error)


if __name__ == "__main__":
    main()
