# `make demo` and `make test` create .venv on first use, so a fresh clone needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch/torchvision pair the development and CI machines install (from local disk there).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/demo.yaml

.PHONY: demo test test-slow test-browser lint format bench clean-runs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dermae run -c $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

test: lint
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-browser: $(STAMP)
	bash scripts/install-browser.sh
	$(PY) -m pytest -q -m browser tests/e2e

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean-runs:
	rm -rf runs
