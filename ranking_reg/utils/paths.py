"""Where the package keeps its Hydra configs and table specs (shipped inside the wheel)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_DIR / "conf"
SPECS_DIR = PACKAGE_DIR / "reporting" / "specs"


def _register_resolvers() -> None:
    # Every entry point imports CONFIG_DIR from here before Hydra composes its config, and the
    # configs name their output folder with ${rr_run_folder:...} (ranking_reg.utils.run_folder).
    from ranking_reg.utils.run_folder import register_run_folder_resolver

    register_run_folder_resolver()


_register_resolvers()
