"""Every setting the project reads from the environment: one table of name, default, description.

Nothing else reads a setting from `os.environ`: the paths, the resources, the partitions, the
serving service and the registered model all call `value()`, and dbt gets what it needs as vars
(`dbt_vars()`), so a plain `dbt build` and a Dagster run read the same values. Tests clear every
name in `SETTINGS` (ml_assets_tests/conftest.py), so a shell with production's variables can't
point a test at production. The README's settings table is `markdown()`; a test holds them equal.

Defaults in angle brackets are derived from other settings when the value is read (paths.py).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    name: str  # the environment variable
    default: str | None  # None: unset unless given (derived, optional, or read by another program)
    description: str
    secret: bool = False  # never logged or shown in the UI: resources take it as dg.EnvVar


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("ML_ASSETS_DATA_DIR", "<repo>/data", "Root of all local state."),
        Setting("ML_ASSETS_LANDING_DIR", "<data>/landing", "The upstream feed's landing zone (read-only)."),
        Setting(
            "ML_ASSETS_LAKE_URI", "<data>/lake", "Root of the Delta lake: a folder or s3://bucket/prefix."
        ),
        Setting(
            "ML_ASSETS_LAKE_STORAGE_OPTIONS",
            "{}",
            "JSON object of strings for delta-rs and polars (AWS_REGION, AWS_ENDPOINT_URL, conditional_put).",
        ),
        Setting("ML_ASSETS_SIMULATOR_DIR", "<data>/simulator", "Where the simulator writes its oracle."),
        Setting("ML_ASSETS_WAREHOUSE", "<data>/warehouse.duckdb", "dbt's DuckDB: a file, or md:<name>."),
        Setting("ML_ASSETS_DBT_TARGET", "local", "The output of dbt_project/profiles.yml dbt runs against."),
        Setting("ML_ASSETS_DUCKDB_MEMORY_LIMIT", "4GB", "DuckDB's memory limit (past it, DuckDB spills)."),
        Setting(
            "ML_ASSETS_DBT_VARS",
            None,
            "JSON object of dbt vars over dbt_project.yml's (the feature spec, say), for dbt runs and "
            "the online features alike.",
        ),
        Setting(
            "MLFLOW_TRACKING_URI", "sqlite:///<data>/mlflow/mlflow.db", "MLflow tracking store and registry."
        ),
        Setting("ML_ASSETS_MLFLOW_ARTIFACTS", "<data>/mlflow/artifacts", "Artifacts of new experiments."),
        Setting("DAGSTER_HOME", "<data>/dagster_home", "The Dagster instance (make targets set it)."),
        Setting(
            "ML_ASSETS_ONLINE_STORE",
            "sqlite:///<data>/online/online.db",
            "The serving's online store: an SQLite file, or redis://host:port/db shared by replicas.",
        ),
        Setting(
            "ML_ASSETS_EXECUTOR",
            "in_process",
            "How a run executes its steps: in_process (one import of the stack per run), multiprocess "
            "(a process per step, forked from one that loaded the location; the stack's), or k8s (a pod "
            "per step).",
        ),
        Setting("ML_ASSETS_START_DATE", "2026-01-01", "The first daily partition."),
        Setting(
            "ML_ASSETS_STEP_RETRY_SECONDS",
            "2",
            "Wait before the first of 3 retries of a step that talks to storage or the registry; the "
            "next wait 3x and 7x as long (exponential backoff, give or take one wait of jitter).",
        ),
        Setting("ML_ASSETS_MODEL_NAME", "fraud_detector", "The registered model that is trained and served."),
        Setting(
            "ML_ASSETS_SERVING_STRATEGY",
            "canary",
            "How a validated version reaches traffic: single, blue_green, canary, shadow or ab.",
        ),
        Setting(
            "ML_ASSETS_CANARY_STEPS",
            "0.05,0.25,0.5,1.0",
            "A canary's traffic shares, step by step: each holds until its guards pass, then the last "
            "promotes it.",
        ),
        Setting(
            "ML_ASSETS_ALERT_WEBHOOK", None, "Webhook that failed runs are posted to (JSON).", secret=True
        ),
        # One read of the aliases and tags costs milliseconds; the interval is how long a rollback
        # waits to be served (bench/rollback.py measures both).
        Setting("ML_ASSETS_SERVING_POLL_SECONDS", "1.0", "How often the service reads the registry."),
        Setting("ML_ASSETS_SERVING_THREADS", "1", "LightGBM threads per prediction call."),
        Setting("ML_ASSETS_SERVING_MAX_BODY_BYTES", "1000000", "Larger request bodies get 413."),
        Setting("ML_ASSETS_SERVING_MAX_BATCH", "1000", "More transactions in one request get 413."),
        Setting(
            "ML_ASSETS_SERVING_BODY_TIMEOUT_SECONDS",
            "10.0",
            "A request body not received whole within this many seconds gets 408 (slow clients).",
        ),
        Setting(
            "ML_ASSETS_SERVING_MAX_IN_FLIGHT",
            "64",
            "Requests one service process handles at once; past it, 429 with Retry-After.",
        ),
        Setting(
            "ML_ASSETS_SERVING_SCORING_TOKEN",
            None,
            "Bearer token(s) for POST /predict (whitespace-separated: several while rotating).",
            secret=True,
        ),
        Setting(
            "ML_ASSETS_SERVING_SCORING_TOKEN_FILE",
            None,
            "A file holding the scoring token(s) instead (a mounted secret).",
        ),
        Setting(
            "ML_ASSETS_SERVING_OPERATIONS_TOKEN",
            None,
            "Bearer token(s) for /model, /health/details and the API docs; they do not score.",
            secret=True,
        ),
        Setting(
            "ML_ASSETS_SERVING_OPERATIONS_TOKEN_FILE",
            None,
            "A file holding the operations token(s) instead (a mounted secret).",
        ),
        Setting(
            "ML_ASSETS_STACK_PORT_BASE",
            None,
            "make stack: the first of 8 consecutive loopback ports of its parts (free ports if unset).",
        ),
        # Read by MLflow itself, never by the project: cleared by tests all the same.
        Setting("MLFLOW_REGISTRY_URI", None, "MLflow's registry, if not the tracking store."),
        # Read by Dagster itself; the local instance's event log (ml_assets/event_log_storage.py)
        # puts the default in the environment where it is unset.
        Setting(
            "DAGSTER_EVENT_BATCH_SIZE",
            "1000",
            "Asset events Dagster hands the event log at once (a step's materializations, a run's "
            "planned events): one write per batch, not per event and day (0: one by one).",
        ),
    )
}


def value(name: str) -> str | None:
    """The setting's value: the environment's, or its default (None for a derived one: see paths)."""
    setting = SETTINGS[name]
    given = os.environ.get(name)
    if given:
        return given
    return None if setting.default is None or "<" in setting.default else setting.default


def environment_without_settings() -> dict[str, str]:
    """The process's environment less every setting of this table: what a program this project
    starts (the stack's servers) inherits before it gets its own settings, so that a shell with
    production's variables can't point it elsewhere. PATH, HOME, locale and the like stay."""
    return {k: v for k, v in os.environ.items() if k not in SETTINGS}


def export_default(name: str) -> None:
    """Put the setting's default in the environment when it is unset there: for a setting read by
    another library itself (from os.environ), which would not know this table's default."""
    os.environ.setdefault(name, SETTINGS[name].default)


@contextlib.contextmanager
def unset(name: str):
    """The setting `name` unset for the block, then as it was."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def replace_environment(env: dict[str, str]) -> None:
    """Make `env` this process's whole environment (a forked process that must see only what its
    parent gave it, as a fresh one would; a test's environment put back as it was), writing only
    the variables that differ.

    Never `os.environ.clear()` then `update(env)`: native threads read the C environment without
    a lock (polars' and deltalake's tokio and executor threads getenv POLARS_* and DELTARS_*;
    deltalake walks the whole environment when it opens a table), and glibc grows the array by a
    realloc for every variable it adds, freeing the old array under such a reader, which then
    crashes on freed memory. Changing a variable's value, or unsetting one, rewrites pointers in
    place and frees nothing; adding one is what moves the array, so a restore adds back only the
    variables that were removed.
    """
    for name in os.environ.keys() - env.keys():
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def markdown() -> str:
    """The table, as the README shows it."""
    rows = [
        f"| `{s.name}` | {s.description} | {f'`{s.default}`' if s.default else 'unset'} |"
        for s in SETTINGS.values()
    ]
    return "\n".join(["| variable | what | default |", "| --- | --- | --- |", *rows])
