"""The service's settings: where the registry and the online store are, and its knobs
(ml_assets.lib.settings).

Read when the service starts (never at import), with the same data root as the pipeline
(`ML_ASSETS_DATA_DIR`, `MLFLOW_TRACKING_URI`, `ML_ASSETS_ONLINE_STORE`: see ml_assets.lib.paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ml_assets.lib import paths
from ml_assets.lib.settings import SETTINGS, value
from ml_assets.serving import auth
from ml_assets.serving.online_store import redacted

# The setting (ml_assets.lib.settings) behind each field; its default is the field's default.
ENV = {
    "model_name": "ML_ASSETS_MODEL_NAME",
    "poll_seconds": "ML_ASSETS_SERVING_POLL_SECONDS",
    "num_threads": "ML_ASSETS_SERVING_THREADS",
    "max_body_bytes": "ML_ASSETS_SERVING_MAX_BODY_BYTES",
    "max_batch": "ML_ASSETS_SERVING_MAX_BATCH",
    "body_timeout_seconds": "ML_ASSETS_SERVING_BODY_TIMEOUT_SECONDS",
    "max_in_flight": "ML_ASSETS_SERVING_MAX_IN_FLIGHT",
}


def _default(field: str, kind: type):
    return kind(SETTINGS[ENV[field]].default)


@dataclass(frozen=True)
class ServingSettings:
    tracking_uri: str  # the MLflow registry
    # The online store (ml_assets.serving.online_store): card histories, merchant risk and the
    # decision queue, shared by every replica. The service reads and writes nothing else.
    online_store: str
    model_name: str = _default("model_name", str)  # the registered model to serve
    poll_seconds: float = _default("poll_seconds", float)  # how often the registry is read
    num_threads: int = _default("num_threads", int)  # LightGBM threads per prediction call (few cores here)
    max_body_bytes: int = _default("max_body_bytes", int)  # larger request bodies get 413
    max_batch: int = _default("max_batch", int)  # more transactions in one request get 413
    body_timeout_seconds: float = _default("body_timeout_seconds", float)  # a body slower than this: 408
    max_in_flight: int = _default("max_in_flight", int)  # requests at once per process; past it, 429
    # Bearer tokens per scope (ml_assets.serving.auth): none configured, no authentication.
    scoring_tokens: tuple[str, ...] = field(default=(), repr=False)
    operations_tokens: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls) -> ServingSettings:
        values: dict = {
            "tracking_uri": paths.mlflow_tracking_uri(),
            "online_store": paths.online_store_url(),
        }
        for name, var in ENV.items():
            values[name] = type(getattr(cls, name))(value(var))
        tokens = auth.read_tokens()
        return cls(**values, scoring_tokens=tokens[auth.SCORING], operations_tokens=tokens[auth.OPERATIONS])

    def __repr__(self) -> str:
        """As a log may show them: stores redacted, tokens counted (dataclass keeps this one)."""
        knobs = ", ".join(f"{name}={getattr(self, name)!r}" for name in ENV)
        return (
            f"ServingSettings(tracking_uri={redacted(self.tracking_uri)!r}, "
            f"online_store={redacted(self.online_store)!r}, {knobs}, "
            f"tokens: {len(self.scoring_tokens)} scoring, {len(self.operations_tokens)} operations)"
        )
