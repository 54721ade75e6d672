"""Hand devices to jobs: at most ``jobs_per_device`` jobs on a device at once, the next pending job
starting as soon as a device frees.

Pure scheduling, no Hydra and no processes: :func:`run_on_devices` calls ``start_job(job,
device)`` (which blocks until that job has finished) from one thread per device slot and returns
one :class:`JobOutcome` per job, in job order. A job that raises frees its device like any other;
its exception is kept in its outcome and the other jobs still run. :func:`resolve_devices` turns
the launcher's ``devices`` option into device ids.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ranking_reg.utils.errors import ConfigError

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class JobOutcome(Generic[R]):
    """What became of one job: its device, its result or its exception, when it ran
    (``time.monotonic()``)."""

    index: int
    device: str
    value: R | None = None
    error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class DevicePool:
    """Device slots: each device id ``jobs_per_device`` times. :meth:`acquire` blocks until a slot
    is free and returns its device id; :meth:`release` gives the slot back."""

    def __init__(self, devices: Sequence[str | int], jobs_per_device: int = 1) -> None:
        if not devices:
            raise ValueError("DevicePool needs at least one device")
        if jobs_per_device < 1:
            raise ValueError(f"jobs_per_device must be >= 1, got {jobs_per_device}")
        self.devices = [str(d) for d in devices]
        self.jobs_per_device = jobs_per_device
        self._free: queue.Queue[str] = queue.Queue()
        for _ in range(jobs_per_device):  # interleaved: the first jobs spread over all devices
            for device in self.devices:
                self._free.put(device)
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {d: 0 for d in self.devices}

    @property
    def slots(self) -> int:
        return len(self.devices) * self.jobs_per_device

    def acquire(self) -> str:
        device = self._free.get()
        with self._lock:
            self._busy[device] += 1
            assert self._busy[device] <= self.jobs_per_device
        return device

    def release(self, device: str) -> None:
        with self._lock:
            self._busy[device] -= 1
        self._free.put(device)

    def busy(self) -> dict[str, int]:
        """Jobs running on each device now."""
        with self._lock:
            return dict(self._busy)


def run_on_devices(
    jobs: Sequence[J],
    devices: Sequence[str | int],
    start_job: Callable[[J, str], R],
    jobs_per_device: int = 1,
) -> list[JobOutcome[R]]:
    """Run every job once, each on a device of ``devices`` that has a free slot, in job order as
    slots free up; return their outcomes in job order. ``start_job(job, device)`` runs the job to
    its end (for the launcher: a child process pinned to ``device``); it is called from a thread
    per slot, so concurrent calls must be safe."""
    pool = DevicePool(devices, jobs_per_device)
    outcomes: list[JobOutcome[R]] = [JobOutcome(i, "") for i in range(len(jobs))]

    def run(index: int) -> None:
        device = pool.acquire()
        outcome = outcomes[index]
        outcome.device, outcome.started = device, time.monotonic()
        try:
            outcome.value = start_job(jobs[index], device)
        except BaseException as error:  # noqa: B036 - kept in the outcome; the other jobs go on
            outcome.error = error
        finally:
            outcome.finished = time.monotonic()
            pool.release(device)

    if jobs:
        with ThreadPoolExecutor(max_workers=min(pool.slots, len(jobs))) as executor:
            for future in [executor.submit(run, i) for i in range(len(jobs))]:
                future.result()
    return outcomes


def _count_gpus() -> int:
    """GPUs the driver shows: ``nvidia-smi -L`` lines, else ``torch.cuda.device_count()``."""
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
            return sum(1 for line in listed.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def resolve_devices(
    devices: Any,
    visible: str | None = None,
    count: Callable[[], int] | None = None,
) -> list[str]:
    """Device ids for ``hydra.launcher.devices``: ``auto`` (the entries of ``CUDA_VISIBLE_DEVICES``
    when it is set, else ``0 .. n-1`` for the n GPUs of the machine), a list of ids (GPU indices
    or UUIDs, written into each job's ``CUDA_VISIBLE_DEVICES`` as given) or a comma-separated
    string of them."""
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if isinstance(devices, str) and devices.strip().lower() == "auto":
        if visible is not None and visible.strip():
            ids = [d.strip() for d in visible.split(",") if d.strip()]
            if ids and ids[0] not in ("-1", "NoDevFiles"):
                return ids
        n = (count or _count_gpus)()
        if n < 1:
            raise ConfigError(
                "hydra.launcher.devices=auto found no GPU on this machine (nvidia-smi -L and "
                "torch.cuda.device_count() show none). The gpu_pool launcher runs one job per GPU: "
                "run the sweep on a GPU node, use hydra/launcher=joblib on CPU, or give the "
                "devices explicitly, e.g. hydra.launcher.devices=[0,1]."
            )
        return [str(i) for i in range(n)]
    if isinstance(devices, str):
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, int) and not isinstance(devices, bool):
        devices = [devices]
    try:
        ids = [str(d).strip() for d in devices]
    except TypeError:
        ids = []
    if not ids or any(not d or d.startswith("-") for d in ids):
        raise ConfigError(
            f"hydra.launcher.devices={devices!r}: expected auto or a list of GPU ids such as "
            "[0,1,2,3]."
        )
    if len(set(ids)) != len(ids):
        raise ConfigError(
            f"hydra.launcher.devices={ids}: a device is listed twice; to run several jobs on one "
            "GPU set hydra.launcher.jobs_per_device instead."
        )
    return ids
