# usage_pipeline — every target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test dev lint bench bench-workers bench-close clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Byte-compile once, whatever PYTHONDONTWRITEBYTECODE says: without .pyc files every process (each
	@# `usage-pipeline ingest`, each Dagster run worker) compiles Dagster's sources again, ~2 s a start.
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib usage_pipeline >/dev/null 2>&1
	touch $(STAMP)

## The main job on the embedded defaults: local S3 endpoint, DuckDB file, Dagster instance in ./.dagster_home
demo: $(STAMP)
	$(BIN)/usage-pipeline demo

## Lint + the whole test suite
test: $(STAMP)
	$(BIN)/ruff check usage_pipeline usage_pipeline_tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider usage_pipeline_tests

## Local S3 endpoint + Dagster UI with sensors and schedules
dev: $(STAMP)
	$(BIN)/usage-pipeline dev

lint: $(STAMP)
	$(BIN)/ruff check usage_pipeline usage_pipeline_tests bench
	$(BIN)/ruff format --check usage_pipeline usage_pipeline_tests bench

## Ingest benchmark: 5 files x 1,000,000 CSV events vs the floor, on the lake and a native DuckDB file, and history;
## then the product end to end (`usage-pipeline ingest` processes) vs the ingest step per workload, and the peers
## (dlt in its own venv under bench/out/, a hand-written DuckDB script) on the same S3 files. BENCH_ARGS adds options.
bench: $(STAMP)
	$(BIN)/usage-pipeline bench --peers $(BENCH_ARGS)

## Ingest with 1, 2 and 4 worker processes on a Postgres catalog + S3 data (needs PostgreSQL's server binaries)
bench-workers: $(STAMP)
	$(BIN)/python bench/workers_bench.py

## Period-close benchmark: 100,000 subscriptions, 10,000,000 events
bench-close: $(STAMP)
	$(BIN)/python bench/close_bench.py

clean:
	rm -rf $(VENV) .dagster_home data *.egg-info
