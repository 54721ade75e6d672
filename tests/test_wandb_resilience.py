"""W&B never costs a run, and a resumed run stays one W&B run (integrations/wandb_logger.py).

With the real wandb library and its wandb-core service, no network: an API key (fake) and a W&B
server that refuses connections, accepts them and never answers, or answers the start of the
run and then goes away (a local HTTP server stopped when training starts).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config
from lightning.pytorch.callbacks import Callback
from test_wandb import run_summary

from ranking_reg.integrations import wandb_utils
from ranking_reg.integrations.wandb_logger import (
    CHECKPOINT_KEY,
    RUN_ID_FILE,
    ResilientWandbLogger,
    WandbRunIdCallback,
)
from ranking_reg.integrations.wandb_utils import finish_wandb, register_resolvers

torch.set_num_threads(1)
# one training batch, no test split: a second on the CPU
QUICK = [*TINY, "trainer.limit_train_batches=1", "test=false"]
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex characters, like a real key


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B writes only under tmp_path, silently, with no credentials; no run is left live."""
    import matplotlib

    # keep matplotlib's font cache where it is (a new HOME would rebuild it: seconds)
    monkeypatch.setenv("MPLCONFIGDIR", matplotlib.get_configdir())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        path = tmp_path / name.lower()
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # no error reports (to sentry.io and to the dead server: wandb-core's teardown would wait
    # 2 s for them, and the test process's exit 10 s)
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    # no requirements.txt of the environment in each run (~0.5 s of package metadata per run)
    monkeypatch.setenv("WANDB__SAVE_REQUIREMENTS", "false")
    for name in ("WANDB_API_KEY", "NETRC", "WANDB_BASE_URL", wandb_utils.GROUP_ENV):
        monkeypatch.delenv(name, raising=False)
    # set, then delete: the undo then removes whatever W&B writes here (WandbLogger sets it)
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.delenv("WANDB_MODE")
    # a Hydra app run earlier in this process with hydra/job_logging=disabled disables every
    # logger that existed then (disable_existing_loggers): ours must warn here
    for module in ("wandb_logger", "wandb_utils"):
        monkeypatch.setattr(
            logging.getLogger(f"ranking_reg.integrations.{module}"), "disabled", False
        )
    register_resolvers()
    yield tmp_path
    finish_wandb()


def use_server(monkeypatch, url: str) -> None:
    """An API key (so the run goes online) and the W&B server at ``url``."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", url)


@contextlib.contextmanager
def refusing_server() -> Iterator[str]:
    """A port nothing listens on: every connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


class StartOnlyServer(ThreadingHTTPServer):
    """Answers the start of a run (GraphQL ``RunResumeStatus``: no such run yet, ``UpsertBucket``:
    created) and nothing else (503, which wandb retries), until ``stop()``: then every
    connection is refused."""

    answered = frozenset({"RunResumeStatus", "UpsertBucket"})

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    operation = json.loads(body).get("operationName")
                except (ValueError, AttributeError):
                    operation = None
                ok = operation in self.server.answered
                reply = b'{"data": {}}' if ok else b'{"errors": [{"message": "unavailable"}]}'
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.shutdown()
            self.server_close()


def sync_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "wandb sync" in r.getMessage()
    ]


def timed_run(overrides: list[str], out: Path, callbacks=()) -> tuple[dict, float]:
    """``ranking_reg.train.run`` then ``finish_wandb()`` (as ``train.main`` does), timed."""
    from ranking_reg.train import run

    start = time.perf_counter()
    try:
        metrics = run(compose_config(overrides, output_dir=out), list(callbacks))
    finally:
        finish_wandb()
    return metrics, time.perf_counter() - start


def only(pattern: str) -> Path:
    (path,) = glob.glob(pattern)
    return Path(path)


# -- 1. an unreachable server at the start: offline after init_timeout ---------------------------
@pytest.mark.slow
def test_a_silent_server_costs_the_run_init_timeout_then_it_logs_offline(
    wandb_env, monkeypatch, caplog
):
    """The case that used to end the run after ~95 s (CommError before training)."""
    # wandb's first run in a process imports ~3 s of modules, whatever the server does: import
    # them before timing (wandb.init's _on_ready imports the launch inputs module)
    import wandb.sdk.launch.inputs.internal  # noqa: F401

    _, csv_seconds = timed_run([*QUICK, "logger=csv"], wandb_env / "csv")
    out = wandb_env / "run"
    with silent_server() as url, caplog.at_level(logging.INFO):
        use_server(monkeypatch, url)
        overrides = [*QUICK, "logger=[csv,wandb]", "logger.wandb.init_timeout=1"]
        metrics, seconds = timed_run(overrides, out)

    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert 0 <= metrics["val/acc_best"] <= 1
    run_id = (out / RUN_ID_FILE).read_text().strip()
    offline = only(str(out / "wandb" / f"offline-run-*-{run_id}"))
    # one warning line, with the command that uploads the run
    (warning,) = sync_warnings(caplog)
    assert "(init_timeout=1s; CommError: " in warning and "\n" not in warning
    assert warning.endswith(f"Upload it later with: wandb sync {offline}")
    # everything went to the offline transaction log and to the CSV logger
    summary = run_summary(str(offline))
    assert summary["exit_code"] == 0 and summary["name"] == "digits-small_cnn-semihard-λ1-s0"
    assert summary["config"]["seed"] == 0
    assert summary["history"]["val/acc"] == [pytest.approx(metrics["val/acc_best"])]
    csv_rows = (out / "csv" / "metrics.csv").read_text().splitlines()
    assert "val/acc" in csv_rows[0] and len(csv_rows) >= 2
    # the last checkpoint names the run
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint[CHECKPOINT_KEY] == run_id
    # the cost of the dead server: the 1 s timeout, ~1 s to restart wandb-core offline, and
    # wandb's own cost per run (~0.5 s); a margin for a loaded machine
    assert seconds - csv_seconds <= 1 + 6, (seconds, csv_seconds)


def test_a_refusing_server_costs_init_timeout_too(wandb_env, monkeypatch, caplog):
    """wandb retries a refused connection until init_timeout: no faster, no slower."""
    with refusing_server() as url, caplog.at_level(logging.WARNING):
        use_server(monkeypatch, url)
        logger = ResilientWandbLogger(project="p", save_dir=str(wandb_env), init_timeout=0.5)
        start = time.perf_counter()
        run = logger.experiment
        seconds = time.perf_counter() - start
        logger.log_metrics({"x": 1.0}, step=0)
        finish_wandb()
    assert logger.fell_back_offline and run.settings._offline and run.id == logger.version
    assert seconds <= 0.5 + 4, seconds
    (warning,) = sync_warnings(caplog)
    assert "connection refused" in warning
    offline = only(str(wandb_env / "wandb" / f"offline-run-*-{run.id}"))
    assert (offline / f"run-{run.id}.wandb").is_file()
    assert run_summary(str(offline))["history"]["x"] == [1.0]
    assert (wandb_env / RUN_ID_FILE).read_text().strip() == run.id


# -- 2. the server goes away mid-run: the run goes on, finish is bounded -------------------------
class StopAtTrainStart(Callback):
    def __init__(self, server: StartOnlyServer) -> None:
        self.server = server

    def on_train_start(self, trainer, pl_module) -> None:
        self.server.stop()


@pytest.mark.slow
def test_a_server_gone_mid_run_costs_finish_timeout_and_loses_no_metric(
    wandb_env, monkeypatch, caplog
):
    server = StartOnlyServer()
    out = wandb_env / "run"
    try:
        use_server(monkeypatch, server.url)
        overrides = [*QUICK, "logger=[csv,wandb]", "logger.wandb.finish_timeout=0.5"]
        with caplog.at_level(logging.WARNING):
            from ranking_reg.train import run

            metrics = run(compose_config(overrides, output_dir=out), [StopAtTrainStart(server)])
            start = time.perf_counter()
            finish_wandb()
            finish_seconds = time.perf_counter() - start
    finally:
        server.stop()
    assert not server.thread.is_alive()
    assert json.loads((out / "metrics.json").read_text()) == metrics
    run_id = (out / RUN_ID_FILE).read_text().strip()
    online = only(str(out / "wandb" / f"run-*-{run_id}"))
    assert not glob.glob(str(out / "wandb" / "offline-run-*"))  # it started online
    assert finish_seconds <= 0.5 + 4, finish_seconds
    (warning,) = sync_warnings(caplog)
    assert warning.endswith(f"wandb sync --include-online {online}")
    # the metrics logged after the server went away are in the local transaction log and the CSV
    history = run_summary(str(online))["history"]
    assert history["val/acc"] == [pytest.approx(metrics["val/acc_best"])]
    assert "val/acc" in (out / "csv" / "metrics.csv").read_text().splitlines()[0]


# -- 3. a resumed run continues its W&B run ---------------------------------------------------
@pytest.mark.slow
def test_a_run_resumed_in_its_folder_continues_its_wandb_run(wandb_env):
    out = wandb_env / "run"
    timed_run([*QUICK, "logger=wandb"], out)
    run_id = (out / RUN_ID_FILE).read_text().strip()
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)[CHECKPOINT_KEY] == run_id
    timed_run([*QUICK, "logger=wandb", f"ckpt_path={last}", "trainer.max_epochs=2"], out)

    assert (out / RUN_ID_FILE).read_text().strip() == run_id
    assert torch.load(last, weights_only=True)[CHECKPOINT_KEY] == run_id
    parts = sorted(glob.glob(str(out / "wandb" / "offline-run-*")))
    # offline-run-<date>_<time>-<id>, and W&B appends -1 to the second when both start within
    # the same second
    assert len(parts) == 2 and all(f"-{run_id}" in Path(p).name for p in parts), parts
    # `wandb sync <run dir>/wandb/offline-run-*` uploads both parts, in order, into one run
    epochs = [run_summary(p)["history"]["epoch"] for p in parts]
    assert epochs == [[0], [1]]
    for part in parts:
        assert (Path(part) / f"run-{run_id}.wandb").is_file()


def test_the_run_id_comes_from_the_checkpoint_or_the_run_folder(wandb_env):
    """Where the id of a new logger comes from, without starting a run."""
    from hydra.utils import instantiate

    def logger_id(overrides: list[str], out: Path, name: str = "train") -> str:
        config = compose_config(["logger=wandb", *overrides], output_dir=out, name=name)
        return instantiate(config.logger.wandb).version

    trained = wandb_env / "trained"
    (trained / "checkpoints").mkdir(parents=True)
    with_id = trained / "checkpoints" / "with_id.ckpt"
    torch.save({CHECKPOINT_KEY: "ckpt0001", "state_dict": {}}, with_id)
    without_id = trained / "checkpoints" / "without_id.ckpt"
    torch.save({"state_dict": {}}, without_id)
    (trained / RUN_ID_FILE).write_text("folder01\n")

    # a new folder: a new id, each time
    fresh = logger_id([], wandb_env / "a")
    assert len(fresh) == 8 and fresh != logger_id([], wandb_env / "b")
    # resumed in another folder: the checkpoint's id, else its run folder's
    assert logger_id([f"ckpt_path={with_id}"], wandb_env / "c") == "ckpt0001"
    assert logger_id([f"ckpt_path={without_id}"], wandb_env / "d") == "folder01"
    # started again in its own folder (ckpt_path=auto): the folder's id
    assert logger_id(["ckpt_path=auto"], trained) == "folder01"
    # an explicit id wins
    assert logger_id([f"ckpt_path={with_id}", "+logger.wandb.id=mine0001"], trained) == "mine0001"
    # evaluate's checkpoint is not a resume: a W&B run of its own
    evaluated = logger_id([f"ckpt_path={with_id}"], wandb_env / "e", name="eval")
    assert evaluated not in ("ckpt0001", "folder01")


def test_the_callback_saves_the_wandb_logger_id_in_checkpoints():
    class Trainer:
        loggers = [ResilientWandbLogger(project="p", save_dir=None, id="abcd1234")]

    checkpoint: dict = {}
    WandbRunIdCallback().on_save_checkpoint(Trainer(), None, checkpoint)
    assert checkpoint == {CHECKPOINT_KEY: "abcd1234"}
    Trainer.loggers = []
    checkpoint = {}
    WandbRunIdCallback().on_save_checkpoint(Trainer(), None, checkpoint)
    assert checkpoint == {}
