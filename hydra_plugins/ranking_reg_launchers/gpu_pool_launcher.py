"""``hydra/launcher=gpu_pool``: the class Hydra instantiates. Hydra 1.3 accepts a launcher
``_target_`` only inside the ``hydra_plugins`` namespace package, among the classes its plugin scan
found; the implementation is :mod:`ranking_reg.launchers.gpu_pool`."""

from ranking_reg.launchers.gpu_pool import GpuPoolLauncher as _GpuPoolLauncher


class GpuPoolLauncher(_GpuPoolLauncher):
    """One job per GPU, each pinned with CUDA_VISIBLE_DEVICES (see ranking_reg.launchers.gpu_pool)."""


__all__ = ["GpuPoolLauncher"]
