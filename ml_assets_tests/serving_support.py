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

        from ml_assets.serving.surface import UVICORN

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", **UVICORN
        )
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


def store_url(where: str) -> str:
    """An online store URL as given, or a folder's own SQLite store."""
    return where if "://" in where else f"sqlite:///{Path(where) / 'online' / 'online.db'}"


def service_and_server(registry: SharedRegistry, model_name: str, store: str, **settings):
    """A Service on the shared registry and the online store `store` (a URL, or a folder to keep
    an SQLite store in), polling fast, and a Server for it (not started)."""
    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings

    options = {"poll_seconds": 0.2, **settings}
    service = Service(
        ServingSettings(registry.tracking_uri, store_url(store), model_name=model_name, **options)
    )
    return service, Server(create_app(service))


def _resources(lake: str, store: str) -> dict:
    from ml_assets.defs.resources import LakeResource, OnlineStoreResource

    return {"lake": LakeResource(root=lake), "online_store": OnlineStoreResource(url=store_url(store))}


def drain(lake: str, store: str, instance=None):
    """Materialize the `inference_log` asset (a real Dagster run): the store's queue into the Delta
    log under `lake`. Returns the run's result (its metadata says what it drained)."""
    import dagster as dg

    from ml_assets.defs.serving_state.assets import inference_log

    result = dg.materialize(
        [inference_log],
        resources=_resources(lake, store),
        instance=instance or dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    return result


def feed(lake: str, store: str, first: str, last: str, instance=None):
    """Materialize `online_store_feed` for the days first..last (one run, as a backfill does):
    bronze history and the next days' merchant risk into the store."""
    import dagster as dg

    from ml_assets.defs.serving_state.assets import online_store_feed

    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    result = dg.materialize(
        [online_store_feed], resources=_resources(lake, store), tags=tags,
        instance=instance or dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    assert result.success
    return result


def materialization(result, key: str) -> dict:
    """The metadata of the run's (last) materialization of `key`, as plain values."""
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key][
        -1:
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def serve(settings, rows: list[dict]) -> list[dict]:
    """`rows` (request JSON) through a Service with `settings`, 100 a request, in order; returns
    the predictions."""
    from fastapi.testclient import TestClient

    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service

    predictions = []
    with TestClient(create_app(Service(settings))) as client:
        for start in range(0, len(rows), 100):
            response = client.post("/predict", json={"transactions": rows[start : start + 100]})
            assert response.status_code == 200, response.text
            predictions += response.json()["predictions"]
    return predictions


def parity(lake: str, instance, day, max_share: float | None = None):
    """Evaluate the serving parity check `online_features_match_dbt` for `day` in a real Dagster
    run of the check alone (as the UI's "execute" of a check does), recorded on `instance`, against
    `lake` and the current data root's warehouse; returns the evaluation."""
    import dagster as dg

    from ml_assets.defs.policies import daily_partitions
    from ml_assets.defs.resources import LakeResource, WarehouseResource
    from ml_assets.defs.serving_state.checks import PARITY_CHECK, online_features_match_dbt
    from ml_assets.lib import paths

    config = {"max_mismatch_share": max_share} if max_share is not None else {}
    result = dg.materialize(
        [dg.AssetSpec(PARITY_CHECK.asset_key, partitions_def=daily_partitions), online_features_match_dbt],
        selection=dg.AssetSelection.checks(PARITY_CHECK),
        resources={
            "lake": LakeResource(root=lake),
            "warehouse": WarehouseResource(path=paths.warehouse_uri()),
        },
        run_config={"ops": {"transaction_features_online_features_match_dbt": {"config": config}}},
        # A check-only run takes its day as the tag (Dagster validates partition_key against assets).
        tags={"dagster/partition": day.isoformat()},
        instance=instance,
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.severity.value == "ERROR" and evaluation.partition == day.isoformat()
    return evaluation
