"""The service's settings: where the registry and the lake are, and its knobs, from the environment.

Read when the service starts (never at import), with the same data root as the pipeline
(`ML_ASSETS_DATA_DIR`, `MLFLOW_TRACKING_URI`, `ML_ASSETS_LAKE_URI`: see ml_assets.lib.paths).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date

from ml_assets.lib import paths
from ml_assets.lib.serving_config import DEFAULT_MODEL_NAME

# Environment variable -> the setting it sets (unset: the default below).
ENV = {
    "ML_ASSETS_MODEL_NAME": "model_name",
    "ML_ASSETS_SERVING_POLL_SECONDS": "poll_seconds",
    "ML_ASSETS_SERVING_THREADS": "num_threads",
    "ML_ASSETS_SERVING_MAX_BODY_BYTES": "max_body_bytes",
    "ML_ASSETS_SERVING_MAX_BATCH": "max_batch",
    "ML_ASSETS_SERVING_LOG_FLUSH_SECONDS": "log_flush_seconds",
    "ML_ASSETS_SERVING_LOG_MAX_ROWS": "log_max_rows",
}


@dataclass(frozen=True)
class ServingSettings:
    tracking_uri: str  # the MLflow registry
    lake_uri: str  # bronze tables (features) and the inference log
    model_name: str = DEFAULT_MODEL_NAME  # the registered model to serve
    poll_seconds: float = 5.0  # how often the registry and bronze labels are read
    num_threads: int = 1  # LightGBM threads per prediction call (the box has few cores)
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    max_batch: int = 1000  # more transactions in one request get 413
    log_flush_seconds: float = 5.0  # the inference log is written at least this often
    log_max_rows: int = 200_000  # rows waiting for the log writer before new ones are dropped
    history_until: date | None = None  # the last bronze day of card history to load (None: latest)

    @classmethod
    def from_env(cls) -> ServingSettings:
        values: dict = {"tracking_uri": paths.mlflow_tracking_uri(), "lake_uri": paths.lake_uri()}
        for var, name in ENV.items():
            if os.environ.get(var):
                values[name] = type(getattr(cls, name))(os.environ[var])
        return cls(**values)
