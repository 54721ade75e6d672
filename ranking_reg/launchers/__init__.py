"""Hydra launchers of the project.

:mod:`ranking_reg.launchers.gpu_pool` runs a multirun as one job per GPU of the machine (selected
with ``hydra/launcher=gpu_pool``); its scheduling is the pure :mod:`.device_pool`. Hydra only
instantiates launchers whose class lives in the ``hydra_plugins`` namespace package, so the
class Hydra sees is the thin subclass in ``hydra_plugins/ranking_reg_launchers/`` (shipped in
the wheel next to ``ranking_reg``).
"""
