"""A Hydra launcher that fills a multi-GPU node: one job per GPU, in parallel, each pinned to its
own device.

``hydra/launcher=gpu_pool`` (``conf/hydra/launcher/gpu_pool.yaml``) runs each job of a multirun
in a fresh process started with ``CUDA_VISIBLE_DEVICES=<its device>`` in its environment, so the
variable is in place before the job imports torch or initialises CUDA, and the job's
``cuda:0`` is its own GPU. At most ``jobs_per_device`` jobs share a device; the next pending job
starts as soon as one finishes (:func:`~ranking_reg.launchers.device_pool.run_on_devices`).
Each job writes its usual Hydra job folder (``<sweep dir>/<job num>``, ``.hydra/``, its log), its
device is recorded there as ``hydra.job.env_set.CUDA_VISIBLE_DEVICES``, and the sweeper gets one
``JobReturn`` per job, in job order.

Why not Hydra's own launchers: the joblib launcher runs ``n_jobs`` jobs in parallel but every job
sees every GPU, so they all train on ``cuda:0``; the submitit launcher pins one GPU per task but
needs a SLURM cluster. This one needs neither: a workstation or an interactive node with GPUs.

Like the joblib launcher, the task function, the config and Hydra's state are pickled (with
cloudpickle, which also handles a task function defined in ``__main__``) and the job is run with
``hydra.core.utils.run_job`` in the child. A child process that dies (killed, out of host memory)
becomes a failed ``JobReturn``; the other jobs still run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from ranking_reg.launchers.device_pool import resolve_devices, run_on_devices
from ranking_reg.utils.errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_VARIABLE = "CUDA_VISIBLE_DEVICES"
# Starting a child with a device in its environment: os.environ is process-wide, so one at a time.
_ENVIRONMENT_LOCK = threading.Lock()


def _cloudpickle() -> Any:
    """cloudpickle, imported when a sweep starts (Hydra imports this module at every start-up):
    the standalone package, else the copy joblib (a scikit-learn dependency) carries."""
    try:
        import cloudpickle
    except ImportError:
        from joblib.externals import cloudpickle
    return cloudpickle


class JobSetupError(RuntimeError):
    """The job's process failed before or around its task (its traceback is the message)."""


class JobProcessDied(RuntimeError):
    """A job's process ended without returning (killed, out of memory, a crash in native code)."""


def _execute_job(payload: bytes) -> bytes:
    """In the job's process: rebuild Hydra's state, compose the job's config, run the task; the
    pickled ``JobReturn``. An error outside the task (composing the job's config) comes back as a
    :class:`JobSetupError` with its traceback as text (OmegaConf errors do not pickle)."""
    try:
        return _execute_job_unsafe(payload)
    except Exception as error:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        raise JobSetupError(text) from None


def _execute_job_unsafe(payload: bytes) -> bytes:
    cloudpickle = _cloudpickle()
    idx, overrides, hydra_context, config, task_function, singleton_state, device = (
        cloudpickle.loads(payload)
    )
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
        sweep_config.hydra.job.env_set[DEVICE_VARIABLE] = device  # recorded in .hydra/hydra.yaml
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    try:
        return cloudpickle.dumps(ret)
    except Exception:  # an exception or a return value that does not pickle: keep its text
        value = ret._return_value
        ret._return_value = RuntimeError(f"{type(value).__name__}: {value}")
        ret.status = JobStatus.FAILED
        return cloudpickle.dumps(ret)


def _run_pinned(payload: bytes, device: str) -> JobReturn:
    """Run one job in a fresh spawned process whose environment has ``CUDA_VISIBLE_DEVICES``."""
    context = multiprocessing.get_context("spawn")
    with _ENVIRONMENT_LOCK:
        previous = os.environ.get(DEVICE_VARIABLE)
        os.environ[DEVICE_VARIABLE] = device
        try:  # spawn starts the process inside submit(): it inherits the environment now
            executor = ProcessPoolExecutor(max_workers=1, mp_context=context)
            future = executor.submit(_execute_job, payload)
        finally:
            if previous is None:
                os.environ.pop(DEVICE_VARIABLE, None)
            else:
                os.environ[DEVICE_VARIABLE] = previous
    try:
        ret = _cloudpickle().loads(future.result())
    finally:
        executor.shutdown(wait=True)
    assert isinstance(ret, JobReturn)
    return ret


class GpuPoolLauncher(Launcher):
    """One job per GPU slot (``devices`` x ``jobs_per_device``), each in its own process pinned to
    its device with ``CUDA_VISIBLE_DEVICES``. Hydra instantiates the subclass in
    ``hydra_plugins.ranking_reg_launchers`` (plugins must live in that namespace)."""

    def __init__(self, devices: Any = "auto", jobs_per_device: int = 1) -> None:
        self.devices = OmegaConf.to_container(devices) if OmegaConf.is_config(devices) else devices
        self.jobs_per_device = int(jobs_per_device)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.task_function is not None
        assert self.hydra_context is not None
        if self.jobs_per_device < 1:
            raise ConfigError(
                f"hydra.launcher.jobs_per_device={self.jobs_per_device}: must be 1 or more."
            )
        devices = resolve_devices(self.devices)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            f"GPU pool: launching {len(job_overrides)} jobs on devices {','.join(devices)} "
            f"({self.jobs_per_device} job(s) per device), sweep output dir: {sweep_dir}"
        )
        singleton_state = Singleton.get_state()
        jobs = []
        for n, overrides in enumerate(job_overrides):
            idx = initial_job_idx + n
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            jobs.append((idx, list(overrides)))

        def start(job: tuple[int, list[str]], device: str) -> JobReturn:
            idx, overrides = job
            log.info(f"\t#{idx} starts on {DEVICE_VARIABLE}={device}")
            payload = _cloudpickle().dumps(
                (
                    idx,
                    overrides,
                    self.hydra_context,
                    self.config,
                    self.task_function,
                    singleton_state,
                    device,
                )
            )
            return _run_pinned(payload, device)

        outcomes = run_on_devices(jobs, devices, start, self.jobs_per_device)
        runs: list[JobReturn] = []
        for (idx, overrides), outcome in zip(jobs, outcomes, strict=True):
            if outcome.ok:
                assert outcome.value is not None
                runs.append(outcome.value)
                continue
            log.error(f"\t#{idx} on {DEVICE_VARIABLE}={outcome.device}: {outcome.error!r}")
            died = JobProcessDied(
                f"job {idx} ({' '.join(filter_overrides(overrides))}) on "
                f"{DEVICE_VARIABLE}={outcome.device} ended without a result: {outcome.error!r}"
            )
            died.__cause__ = outcome.error
            runs.append(
                JobReturn(
                    overrides=overrides,
                    status=JobStatus.FAILED,
                    _return_value=died,
                    task_name=str(self.config.hydra.job.name),
                )
            )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs
