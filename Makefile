# One entry point for people and CI. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# Library caches (matplotlib's font cache) stay inside the repo too, not in ~/.cache.
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
# numba's compile cache (UMAP / pynndescent) inside the repo: kept between runs, whatever site-packages allows.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
# Debian packages the tests drive for real: headless Chromium + its driver (UI test), PostgreSQL (instance test).
SYSTEM_PACKAGES ?= chromium chromium-driver postgresql
# Tests: everything (slow tests included); `make test PYTEST_ARGS='-m "not slow"'` for the inner loop.
PYTEST_ARGS ?=

.PHONY: setup system-deps run eval ui serve test lint bench bench-short

setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/dagster.yaml $@

# Installs the missing SYSTEM_PACKAGES (as root or with passwordless sudo), else stops with the command to run.
system-deps:
	@.ci/system-deps $(SYSTEM_PACKAGES)

# (1) Materialize the whole asset graph (and run its checks) on the bundled sample. First the default text
# encoder's model files are built once per models folder (wb_pipeline.prepare_models: a few seconds when they
# exist), while no run is in memory. deploy/cli-run.yaml: one log line per finished step (time, rows) plus the
# steps' own progress, instead of every DEBUG event.
run: setup
	$(BIN)/python -m wb_pipeline.prepare_models
	$(BIN)/dagster job execute -m wb_pipeline.definitions -j full_pipeline -c deploy/cli-run.yaml

# Quality of the whole graph on any dump in the WB layout: `make eval RAW_DIR=/path/to/folder`. The folder is
# checked first (files, readable, required columns: `python -m wb_pipeline.check_raw`), then its own
# storage and Dagster instance under storage/eval/<name>/ (converted models shared with the main run: the
# models folder the main run's settings give, `python -m wb_pipeline.settings --get models_dir`),
# then one quality table, also written there as quality.md / quality.json.
RAW_DIR ?=
EVAL_NAME ?= $(notdir $(patsubst %/,%,$(RAW_DIR)))
# extra options of the quality table (`python -m wb_pipeline.evaluate --help`), e.g. fewer seeds in CI
EVAL_ARGS ?=
EVAL_DIR := $(CURDIR)/storage/eval/$(EVAL_NAME)
eval: setup
	@test -n "$(RAW_DIR)" || { echo "usage: make eval RAW_DIR=/path/to/wb_layout_folder [EVAL_NAME=name]"; exit 2; }
	@$(BIN)/python -m wb_pipeline.check_raw "$(RAW_DIR)"
	mkdir -p $(EVAL_DIR)/dagster_home
	cp deploy/dagster.yaml $(EVAL_DIR)/dagster_home/dagster.yaml
	WB_PIPELINE_RAW_DIR=$(abspath $(RAW_DIR)) WB_PIPELINE_STORAGE_DIR=$(EVAL_DIR) \
	  WB_PIPELINE_MODELS_DIR=$$($(BIN)/python -m wb_pipeline.settings --get models_dir) DAGSTER_HOME=$(EVAL_DIR)/dagster_home \
	  $(BIN)/dagster job execute -m wb_pipeline.definitions -j full_pipeline -c deploy/cli-run.yaml
	$(BIN)/python -m wb_pipeline.evaluate $(EVAL_DIR) --name $(EVAL_NAME) $(EVAL_ARGS)

# The Dagster UI on http://127.0.0.1:3000
ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The HTTP service over the latest materialized models and index on http://127.0.0.1:8000 (README, "Serving").
serve: setup
	$(BIN)/python -m wb_pipeline.serve

# (2) The test suite.
test: system-deps setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lint (ruff: pycodestyle, pyflakes, import order, bugbear; ruff format) and the layer contracts (import-linter:
# the core imports no dagster / defs / settings / benchmarks; no import cycles). Config: pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m benchmarks.run

bench-short: setup
	$(BIN)/python -m benchmarks.run --short
