"""``python -m ranking_reg.tables``: entry point of :mod:`ranking_reg.reporting.tables`."""

from ranking_reg.reporting.tables import main

if __name__ == "__main__":
    raise SystemExit(main())
