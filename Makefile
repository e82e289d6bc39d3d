# Two commands on a fresh machine: `make run` and `make test`. Everything else is a convenience.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# Resolved now, before the venv goes on PATH below: uv runs from this interpreter, and once
# .venv exists a bare `python3` would be the venv's (which has no uv).
PYTHON := $(shell command -v $(PYTHON))
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
UV := $(PYTHON) -m uv
export ML_ASSETS_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(ML_ASSETS_DATA_DIR)/dagster_home
# MLflow sends usage telemetry unless told not to (dbt's is off in dbt_project.yml): a pipeline run
# contacts no one.
export MLFLOW_DISABLE_TELEMETRY := true
# `dg` warns unless it runs inside the project's environment, and dagster-dbt finds dbt on PATH.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help setup run dev serve test lint chromium redis-server bench lock clean mlflow-ui rollback retrain kserve \
	stack stack-status stack-down stack-restart test-stack postgresql

help:
	@echo "make run    set up, write the demo feed if landing is empty, run the whole pipeline"
	@echo "make dev    the Dagster UI on http://127.0.0.1:3000"
	@echo "make serve  the scoring service on http://127.0.0.1:8000 (the registry's champion; WORKERS=2: two processes)"
	@echo "make test   set up, lint, validate the definitions, run the tests"
	@echo "make bench  the benchmarks in bench/ (minutes; big data)"
	@echo "make lock   recompile requirements.lock from pyproject.toml"
	@echo "make mlflow-ui                       the MLflow UI on http://127.0.0.1:5000"
	@echo "make retrain VERSION=3               retrain a model version from its pinned snapshot"
	@echo "make rollback REASON='why'           champion back to previous_champion"
	@echo "make rollback VERSION=2 REASON='why' champion back to v2, an earlier champion (the promotion ledger)"
	@echo "make kserve                          render deploy/kserve/fraud-detector.yaml (KServe) from the registry's aliases"
	@echo "make stack / stack-status / stack-down  the production topology on this box (PostgreSQL, S3, MLflow, Redis, Dagster, 2 replicas)"
	@echo "make stack-restart PART=dagster-daemon  stop one part of the stack and start it again"
	@echo "make run STACK=1                     any target, against the running stack (its stack.env)"
	@echo "make test-stack                      the stack's end-to-end test (minutes; CI runs it after make test)"

# The environment is rebuilt whenever the lock or the project changes. Its packages are compiled
# to bytecode once, here: uv doesn't by default, and where PYTHONDONTWRITEBYTECODE is set (as on
# these machines) Python never writes it either, so every process would compile MLflow, Dagster,
# LightGBM and pandas from source again (importing MLflow: 4.7 CPU-s without, 1.8 with).
$(VENV)/.synced: requirements.lock pyproject.toml
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(PY) || $(UV) venv --quiet --python 3.11 $(VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@touch $@

# dagster-dbt reads dbt's manifest when the code location loads: parse the project whenever it
# changes (dbt parse reads no data).
MANIFEST := dbt_project/target/manifest.json
DBT_FILES := $(shell find dbt_project/models dbt_project/tests dbt_project/macros -type f) \
	dbt_project/dbt_project.yml dbt_project/profiles.yml
$(MANIFEST): $(VENV)/.synced $(DBT_FILES)
	cd dbt_project && $(VENV)/bin/dbt parse --profiles-dir . --quiet

# The local instance's settings (run queue limits, no telemetry), unless DAGSTER_HOME has its own.
setup: $(VENV)/.synced $(MANIFEST)
	@mkdir -p "$(DAGSTER_HOME)"
	@test -f "$(DAGSTER_HOME)/dagster.yaml" || cp dagster.local.yaml "$(DAGSTER_HOME)/dagster.yaml"

# `make <target> STACK=1`: the recipe runs with the stack's settings (`make stack` writes them):
# its PostgreSQL-backed DAGSTER_HOME, the lake on its object store, its MLflow server and Redis.
STACK_ENV := $(ML_ASSETS_DATA_DIR)/stack/stack.env
IN_STACK := $(if $(STACK),set -a && . $(STACK_ENV) && set +a &&,)

run: setup
	$(IN_STACK) $(PY) -m ml_assets.simulate --if-empty
	$(IN_STACK) $(PY) -m ml_assets.run

dev: setup
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000

# Serves models:/$${ML_ASSETS_MODEL_NAME:-fraud_detector}@champion from the data root's registry.
# WORKERS processes on the one port, sharing card history and decisions through the online store.
WORKERS ?= 1
serve: setup
	$(IN_STACK) $(PY) -m ml_assets.serving --host 127.0.0.1 --port 8000 --workers $(WORKERS)

lint: setup
	$(VENV)/bin/ruff check ml_assets ml_assets_tests bench
	$(VENV)/bin/ruff format --check ml_assets ml_assets_tests bench

# The browser test drives Debian's chromium (playwright's own browser download is not reachable
# everywhere). Install it where apt can (the quiet first try fails if the package lists are stale:
# then update and retry); elsewhere this only warns, and that test skips and says why. Under CI
# (`CI` set) both fail instead: a green CI run must include the browser test.
# Where test_real_clients looks for it.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
chromium:
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null && \
	  { $(APT_INSTALL) chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) chromium; }; }; } \
	  || true
	@test -x $(CHROMIUM) || if [ -n "$$CI" ]; then \
	  echo "chromium: $(CHROMIUM) not installed (no apt-get, or no permission), and CI is set" >&2; exit 1; \
	else echo "chromium: not installed (no apt-get, or no permission): the browser test will skip"; fi

# The online store's tests start their own redis-server (ml_assets_tests/test_online_store.py).
# Installed the same way as chromium; elsewhere the Redis tests skip and say why, but under CI
# (`CI` set) a missing server fails here: CI must not pass by skipping one of the two engines.
redis-server:
	@command -v redis-server >/dev/null || { command -v apt-get >/dev/null && \
	  { $(APT_INSTALL) redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) redis-server; }; }; } \
	  || { if [ -n "$$CI" ]; then echo "redis-server: not installed and could not be (CI is set): the online store's tests need it" >&2; exit 1; \
	       else echo "redis-server: not installed (no apt-get, or no permission): the Redis tests will skip"; fi; }

# A worker process per core (pytest-xdist): one process kept about 0.8 of 2 cores busy, most of
# the rest waiting for servers, daemons and subprocesses. --dist loadfile keeps a module's tests in
# one worker, in file order: they share the module's world and may build on each other's state.
# --no-loadscope-reorder: the modules in the order conftest.py gives them, the longest first.
test: lint chromium redis-server
	$(VENV)/bin/dg check defs
	$(VENV)/bin/pytest -n auto --dist loadfile --no-loadscope-reorder

# The production topology on one box (ml_assets/stack.py): every part in the background on
# 127.0.0.1, its state under $(ML_ASSETS_DATA_DIR)/stack. `stack` returns once each part is
# healthy; `stack-down` stops them by their recorded PIDs and keeps the data. The stack's own
# webserver and daemon stand for `make dev` (a second daemon would tick the same sensors).
stack: setup redis-server postgresql
	$(PY) -m ml_assets.stack up

# Debian's PostgreSQL for the stack, installed as redis-server is; under CI a missing one fails here.
postgresql:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { command -v apt-get >/dev/null && \
	  { $(APT_INSTALL) postgresql >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) postgresql; }; }; } \
	  || { if [ -n "$$CI" ]; then echo "postgresql: not installed and could not be (CI is set): the stack needs it" >&2; exit 1; \
	       else echo "postgresql: not installed (no apt-get, or no permission): the stack's test will skip"; fi; }

stack-status: setup
	@$(PY) -m ml_assets.stack status

stack-down: setup
	$(PY) -m ml_assets.stack down

# The daemon is restarted alone: the runs it launched finish meanwhile (ml_assets/stack.py).
stack-restart: setup
	$(PY) -m ml_assets.stack restart $(PART)

# Its end-to-end test (ml_assets_tests/stack/): a stack in a temp data root, driven by its daemon
# through ingestion, automation, retraining, promotion, serving, the drain and monitoring, compared
# with the same feed on the embedded default; then taken down. Not in `make test`: its tests carry
# the marker `stack`, which pytest's addopts deselect unless asked for (pyproject.toml).
test-stack: setup redis-server postgresql
	$(VENV)/bin/pytest -m stack -rP ml_assets_tests/stack

bench: setup
	$(PY) -m bench

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri "$$($(PY) -c 'from ml_assets.lib import paths; print(paths.mlflow_tracking_uri())')"

retrain: setup
	$(PY) -m ml_assets.retrain $(VERSION)

rollback: setup
	$(PY) -m ml_assets.rollback --reason "$(or $(REASON),manual rollback from the command line)" $(if $(VERSION),--version $(VERSION))

# The registry (MLFLOW_TRACKING_URI) decides what serves; this writes it as a KServe InferenceService.
kserve: setup
	$(PY) -m ml_assets.kserve

lock:
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 --no-header -o requirements.lock

clean:
	rm -rf $(VENV) $(ML_ASSETS_DATA_DIR)/lake $(ML_ASSETS_DATA_DIR)/dagster_home
