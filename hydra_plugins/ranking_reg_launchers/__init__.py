"""Hydra plugins of ranking_reg (Hydra instantiates plugins only from the hydra_plugins namespace)."""
