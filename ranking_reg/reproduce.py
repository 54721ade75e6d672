"""``python -m ranking_reg.reproduce``: entry point of :mod:`ranking_reg.reporting.reproduce`."""

from ranking_reg.reporting.reproduce import main

if __name__ == "__main__":
    raise SystemExit(main())
