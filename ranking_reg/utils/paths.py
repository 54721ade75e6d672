"""Where the package keeps its Hydra configs and table specs (shipped inside the wheel)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_DIR / "conf"
SPECS_DIR = PACKAGE_DIR / "reporting" / "specs"
