# Every target creates .venv on first use, so a fresh machine needs nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
SCALE ?= smoke
OUT ?=
# torch/torchvision that resolve on CPU-only machines here; override for another platform,
# e.g. make install TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install train test test-fast lint bench reproduce-tables clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	# compat: Hydra's plugin scan finds hydra_plugins/ (the gpu_pool launcher) from any directory
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

train: install
	$(PY) -m ranking_reg.train $(ARGS)

test: install
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15

test-fast: install
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow"

lint: install
	$(VENV)/bin/ruff check ranking_reg tests experiments hydra_plugins
	$(VENV)/bin/ruff format --check ranking_reg tests experiments hydra_plugins

bench: install
	$(PY) -m experiments.benchmarks.run_all --out $(or $(OUT),bench_out)

reproduce-tables: install
	$(PY) -m ranking_reg.reproduce --scale $(SCALE) --out $(or $(OUT),tables_out/$(SCALE))

clean:
	rm -rf logs bench_out tables_out .pytest_cache
