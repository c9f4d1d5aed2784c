# One entry point for people and CI. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# Library caches (matplotlib's font cache) stay inside the repo too, not in ~/.cache.
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
# Tests: everything (slow tests included); `make test PYTEST_ARGS='-m "not slow"'` for the inner loop.
PYTEST_ARGS ?=

.PHONY: setup run ui test bench bench-short

setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/dagster.yaml $@

# (1) Materialize the whole asset graph (and run its checks) on the bundled sample.
run: setup
	$(BIN)/dagster job execute -m wb_pipeline.definitions -j full_pipeline

# The Dagster UI on http://127.0.0.1:3000
ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# (2) The test suite.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m benchmarks.run

bench-short: setup
	$(BIN)/python -m benchmarks.run --short
