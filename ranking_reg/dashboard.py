"""``python -m ranking_reg.dashboard``: entry point of :mod:`ranking_reg.integrations.dashboard`."""

from ranking_reg.integrations.dashboard import main

if __name__ == "__main__":
    raise SystemExit(main())
