"""The service's settings: where the registry and the lake are, and its knobs (ml_assets.lib.settings).

Read when the service starts (never at import), with the same data root as the pipeline
(`ML_ASSETS_DATA_DIR`, `MLFLOW_TRACKING_URI`, `ML_ASSETS_LAKE_URI`: see ml_assets.lib.paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from ml_assets.lib import paths
from ml_assets.lib.settings import SETTINGS, value

# The setting (ml_assets.lib.settings) behind each field; its default is the field's default.
ENV = {
    "model_name": "ML_ASSETS_MODEL_NAME",
    "poll_seconds": "ML_ASSETS_SERVING_POLL_SECONDS",
    "num_threads": "ML_ASSETS_SERVING_THREADS",
    "max_body_bytes": "ML_ASSETS_SERVING_MAX_BODY_BYTES",
    "max_batch": "ML_ASSETS_SERVING_MAX_BATCH",
    "log_flush_seconds": "ML_ASSETS_SERVING_LOG_FLUSH_SECONDS",
    "log_max_rows": "ML_ASSETS_SERVING_LOG_MAX_ROWS",
}


def _default(field: str, kind: type):
    return kind(SETTINGS[ENV[field]].default)


@dataclass(frozen=True)
class ServingSettings:
    tracking_uri: str  # the MLflow registry
    lake_uri: str  # bronze tables (features) and the inference log
    model_name: str = _default("model_name", str)  # the registered model to serve
    poll_seconds: float = _default("poll_seconds", float)  # how often the registry and bronze labels are read
    num_threads: int = _default("num_threads", int)  # LightGBM threads per prediction call (few cores here)
    max_body_bytes: int = _default("max_body_bytes", int)  # larger request bodies get 413
    max_batch: int = _default("max_batch", int)  # more transactions in one request get 413
    log_flush_seconds: float = _default("log_flush_seconds", float)  # the log is written at least this often
    log_max_rows: int = _default("log_max_rows", int)  # rows waiting for the log writer before drops
    history_until: date | None = None  # the last bronze day of card history to load (None: latest)

    @classmethod
    def from_env(cls) -> ServingSettings:
        values: dict = {"tracking_uri": paths.mlflow_tracking_uri(), "lake_uri": paths.lake_uri()}
        for name, var in ENV.items():
            values[name] = type(getattr(cls, name))(value(var))
        return cls(**values)
