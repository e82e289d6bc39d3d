"""Where local state lives. One root (`ML_ASSETS_DATA_DIR`), each path movable by its own variable.

Every function reads the environment when called, never at import, so tests and the CLI can
point a process at any data root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FEEDS = ("transactions", "labels")


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


def data_dir() -> Path:
    return _env_path("ML_ASSETS_DATA_DIR", REPO_ROOT / "data")


def landing_dir() -> Path:
    return _env_path("ML_ASSETS_LANDING_DIR", data_dir() / "landing")


def lake_uri() -> str:
    """The lake root: a local folder by default, or an object-store URI such as s3://bucket/lake."""
    return os.environ.get("ML_ASSETS_LAKE_URI") or str(data_dir() / "lake")


def lake_storage_options() -> dict[str, str]:
    """delta-rs/polars storage options for the lake, from `ML_ASSETS_LAKE_STORAGE_OPTIONS` (a JSON
    object of strings), e.g. {"AWS_ENDPOINT_URL": "http://minio:9000", "conditional_put": "etag"}.

    Keep credentials out of it: delta-rs, polars, boto3 and MLflow all read the standard AWS_*
    variables (or the pod's IAM role) themselves.
    """
    raw = os.environ.get("ML_ASSETS_LAKE_STORAGE_OPTIONS", "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"ML_ASSETS_LAKE_STORAGE_OPTIONS is not valid JSON: {e}") from e
    # delta-rs takes strings only ("true", not true): say so here rather than deep in Rust.
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise ValueError('ML_ASSETS_LAKE_STORAGE_OPTIONS must be a JSON object of strings: {"key": "value"}')
    return options


def simulator_dir() -> Path:
    return _env_path("ML_ASSETS_SIMULATOR_DIR", data_dir() / "simulator")


def warehouse_path() -> Path:
    return _env_path("ML_ASSETS_WAREHOUSE", data_dir() / "warehouse.duckdb")


def warehouse_uri() -> str:
    """The DuckDB database dbt builds into: a file, or a MotherDuck database ("md:name") in production."""
    value = os.environ.get("ML_ASSETS_WAREHOUSE", "")
    return value if value.startswith("md:") else str(warehouse_path())


def dbt_target() -> str:
    """The dbt target (an output in dbt_project/profiles.yml): `local` DuckDB, or `prod`."""
    return os.environ.get("ML_ASSETS_DBT_TARGET") or "local"


def mlflow_tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = data_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    return f"sqlite:///{folder / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    return os.environ.get("ML_ASSETS_MLFLOW_ARTIFACTS") or str(data_dir() / "mlflow" / "artifacts")


def dagster_home() -> Path:
    return _env_path("DAGSTER_HOME", data_dir() / "dagster_home")


def duckdb_memory_limit() -> str:
    """DuckDB's memory limit for the warehouse, `ML_ASSETS_DUCKDB_MEMORY_LIMIT` (past it, DuckDB
    spills to disk). dbt's profile reads the same variable, with the same default."""
    return os.environ.get("ML_ASSETS_DUCKDB_MEMORY_LIMIT", "4GB")


def online_store_url() -> str:
    """The serving's online store (ml_assets/serving/online_store), `ML_ASSETS_ONLINE_STORE`: an
    embedded SQLite file under the data root by default, or a shared Redis such as
    redis://127.0.0.1:6379/0 when several replicas must see the same card histories."""
    return os.environ.get("ML_ASSETS_ONLINE_STORE") or f"sqlite:///{data_dir() / 'online' / 'online.db'}"
