"""Where local state lives. One root (`ML_ASSETS_DATA_DIR`), each path movable by its own variable.

Every function reads its setting (ml_assets.lib.settings) when called, never at import, so tests
and the CLI can point a process at any data root. The derived defaults ("<data>/lake") are here.
"""

from __future__ import annotations

import json
from pathlib import Path

from ml_assets.lib.settings import value

REPO_ROOT = Path(__file__).resolve().parents[2]
FEEDS = ("transactions", "labels")


def _env_path(var: str, default: Path) -> Path:
    given = value(var)
    return Path(given).expanduser().resolve() if given else default


def data_dir() -> Path:
    return _env_path("ML_ASSETS_DATA_DIR", REPO_ROOT / "data")


def landing_dir() -> Path:
    return _env_path("ML_ASSETS_LANDING_DIR", data_dir() / "landing")


def lake_uri() -> str:
    """The lake root: a local folder by default, or an object-store URI such as s3://bucket/lake."""
    return value("ML_ASSETS_LAKE_URI") or str(data_dir() / "lake")


def lake_storage_options() -> dict[str, str]:
    """delta-rs/polars storage options for the lake, from `ML_ASSETS_LAKE_STORAGE_OPTIONS` (a JSON
    object of strings), e.g. {"AWS_ENDPOINT_URL": "http://minio:9000", "conditional_put": "etag"}.

    Keep credentials out of it: delta-rs, polars, boto3 and MLflow all read the standard AWS_*
    variables (or the pod's IAM role) themselves.
    """
    options = _json_object("ML_ASSETS_LAKE_STORAGE_OPTIONS")
    # delta-rs takes strings only ("true", not true): say so here rather than deep in Rust.
    if not all(isinstance(v, str) for v in options.values()):
        raise ValueError('ML_ASSETS_LAKE_STORAGE_OPTIONS must be a JSON object of strings: {"key": "value"}')
    return options


def simulator_dir() -> Path:
    return _env_path("ML_ASSETS_SIMULATOR_DIR", data_dir() / "simulator")


def warehouse_path() -> Path:
    return _env_path("ML_ASSETS_WAREHOUSE", data_dir() / "warehouse.duckdb")


def warehouse_uri() -> str:
    """The DuckDB database dbt builds into: a file, or a MotherDuck database ("md:name") in production."""
    given = value("ML_ASSETS_WAREHOUSE") or ""
    return given if given.startswith("md:") else str(warehouse_path())


def dbt_target() -> str:
    """The dbt target (an output in dbt_project/profiles.yml): `local` DuckDB, or `prod`."""
    return value("ML_ASSETS_DBT_TARGET")


def mlflow_tracking_uri() -> str:
    if given := value("MLFLOW_TRACKING_URI"):
        return given
    folder = data_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    return f"sqlite:///{folder / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    return value("ML_ASSETS_MLFLOW_ARTIFACTS") or str(data_dir() / "mlflow" / "artifacts")


def dbt_runs_dir() -> Path:
    """dbt's artifacts (manifest, run results, compiled SQL, its log), one folder per Dagster run."""
    return data_dir() / "dbt" / "runs"


def dagster_home() -> Path:
    return _env_path("DAGSTER_HOME", data_dir() / "dagster_home")


def duckdb_memory_limit() -> str:
    """DuckDB's memory limit for the warehouse, `ML_ASSETS_DUCKDB_MEMORY_LIMIT` (past it, DuckDB
    spills to disk). dbt's profile reads the same variable, with the same default."""
    return value("ML_ASSETS_DUCKDB_MEMORY_LIMIT")


def dbt_vars() -> dict[str, str]:
    """What dbt reads of the settings, as the vars every dbt invocation gets (dbt reads no
    environment variable of ours: profiles.yml and sources.yml take these, with the local defaults
    for a plain `dbt build` inside dbt_project/)."""
    return {
        "lake_uri": lake_uri(),
        "warehouse": warehouse_uri(),
        "duckdb_memory_limit": duckdb_memory_limit(),
    } | dbt_var_overrides()


def dbt_var_overrides() -> dict:
    """Vars over dbt_project.yml's own, from `ML_ASSETS_DBT_VARS` (a JSON object), such as the
    feature spec's `card_velocity_windows`: every Dagster dbt run gets them, and the online
    features read the same (ml_assets.lib.features.project_vars)."""
    return _json_object("ML_ASSETS_DBT_VARS")


def _json_object(name: str) -> dict:
    """The setting `name` as a JSON object ({} when unset)."""
    raw = (value(name) or "").strip()
    if not raw:
        return {}
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} is not valid JSON: {e}") from e
    if not isinstance(given, dict):
        raise ValueError(f'{name} must be a JSON object: {{"key": value}}')
    return given


def online_store_url() -> str:
    """The serving's online store (ml_assets/serving/online_store), `ML_ASSETS_ONLINE_STORE`: an
    embedded SQLite file under the data root by default, or a shared Redis such as
    redis://127.0.0.1:6379/0 when several replicas must see the same card histories."""
    return value("ML_ASSETS_ONLINE_STORE") or f"sqlite:///{data_dir() / 'online' / 'online.db'}"


def stack_dir() -> Path:
    """The one-box stack's state (`make stack`, ml_assets/stack.py): PostgreSQL's and Redis's data,
    the stack's DAGSTER_HOME, its ports, PID files, logs and stack.env."""
    return data_dir() / "stack"
