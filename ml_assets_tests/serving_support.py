"""Shared by the serving tests: a real MLflow registry with small real models, and a real server.

One store (a copy of the session's pre-migrated empty store) and three logged LightGBM models are
shared by every serving test in the session. Each test registers its own model name in it, so
tests that move aliases and tags never see each other's.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ml_assets.lib import tracking
from ml_assets.lib.features import FEATURE_COLUMNS

_names = itertools.count()


@dataclass
class SharedRegistry:
    tracking_uri: str
    model_uris: list[str]  # three logged models, trained on different random data

    def register(self, *, prefix: str = "fraud_detector", aliases: dict[str, int], tags=None) -> str:
        """A new registered model with one version per logged model (versions 1, 2, 3), the given
        aliases (alias -> version) and tags; returns its name."""
        import mlflow

        tracking.use_store(self.tracking_uri)
        name = f"{prefix}_{next(_names)}"
        for uri in self.model_uris:
            mlflow.register_model(uri, name)
        client = self.client()
        for alias, version in aliases.items():
            client.set_registered_model_alias(name, alias, str(version))
        for tag, value in (tags or {}).items():
            client.set_registered_model_tag(name, tag, value)
        return name

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


_shared: SharedRegistry | None = None


def shared_registry() -> SharedRegistry:
    """The session's registry (created on first use)."""
    global _shared
    if _shared is None:
        root = Path(tempfile.mkdtemp(prefix="ml_assets_serving_"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _shared = _create_registry(root)
    return _shared


def train_booster(seed: int, rounds: int = 20):
    """A small real LightGBM model on FEATURE_COLUMNS (random data; the seed makes it distinct)."""
    import lightgbm as lgb
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(2000, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    x.iloc[::7, 3] = np.nan  # missing values, as real features have
    y = (x["amount"] + x.iloc[:, seed % len(FEATURE_COLUMNS)] + rng.normal(size=len(x)) > 1).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "seed": seed}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds), x


def log_booster(booster) -> str:
    """Log a booster as the training stage does (no lake: landing rows would score without
    history); return its model URI."""
    import mlflow

    with mlflow.start_run():
        return tracking.log_model(booster, lake_uri=None)


def _create_registry(root: Path) -> SharedRegistry:
    import mlflow

    from ml_assets_tests.conftest import seed_mlflow_store

    uri = f"sqlite:///{seed_mlflow_store(root)}"
    tracking.use_store(uri)
    experiment = mlflow.create_experiment("serving-tests", artifact_location=str(root / "artifacts"))
    mlflow.set_experiment(experiment_id=experiment)
    return SharedRegistry(uri, [log_booster(train_booster(seed)[0]) for seed in (1, 2, 3)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving `app` on a free loopback port, in a thread (lifespan included)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def request_rows(bronze: pl.DataFrame) -> list[dict]:
    """Bronze transactions back as request JSON: the feed's fields, the event time as ISO-8601
    text, amounts as JSON numbers (replays, benchmarks)."""
    from ml_assets.lib.contract import TRANSACTIONS

    iso = pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")
    return bronze.select(list(TRANSACTIONS.columns)).with_columns(iso).to_dicts()


def service_and_server(registry: SharedRegistry, model_name: str, lake: str, **settings):
    """A Service on the shared registry and `lake`, polling fast, and a Server for it (not started)."""
    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings

    options = {"poll_seconds": 0.2, "log_flush_seconds": 0.5, **settings}
    service = Service(ServingSettings(registry.tracking_uri, lake, model_name=model_name, **options))
    return service, Server(create_app(service))
