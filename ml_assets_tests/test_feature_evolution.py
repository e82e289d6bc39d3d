"""Features change on a live world without breaking what serves.

A copy of the shared small world with a champion (v1) serving live traffic over HTTP and an
inference log. Then, in file order:

1. one more velocity window (6h), added through the feature spec alone (the dbt var
   `card_velocity_windows`, given here as ML_ASSETS_DBT_VARS so the committed files stay as they
   are): the features rebuild, the champion keeps scoring exactly as before on its own 19
   columns, drift compares only the features both sides have, the next model (v2) trains on the
   new list, passes every gate and is promoted, a rollback to v1 scores with v1's own columns, and
   the inference log holds the rows of both;
2. a column only SQL computes (the online side can't): the model trained on it is registered,
   and never reaches serving (the servable gate fails, the sensor and deployed_model refuse it);
3. removing a feature the champion or previous_champion needs: the features build refuses to run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager

import dagster as dg
import httpx
import numpy as np
import polars as pl
import pytest

from ml_assets.defs.promotion.sensors import model_promotion_sensor, not_online
from ml_assets.defs.resources import AlertsResource, MlflowResource
from ml_assets.lib import paths, registry, tables
from ml_assets.lib.gates import GATES
from ml_assets.lib.training import matrix
from ml_assets_tests.conftest import (
    WORLD_DAYS,
    check_results,
    load_defs,
    root_environ,
    run_job,
    scoped_environ,
)
from ml_assets_tests.conftest import tx as landing_tx

SPEC = "ML_ASSETS_DBT_VARS"
WINDOWS = {"1h": 1, "24h": 24, "7d": 168}  # dbt_project.yml's, as committed
WITH_6H = {"card_velocity_windows": WINDOWS | {"6h": 6}}
NEW = ["card_tx_count_6h", "card_amount_sum_6h"]
FAST = {"ops": {"fraud_model": {"config": {"n_trials": 1, "num_boost_round": 120}}}}
LAST_DAY = WORLD_DAYS[1]


@pytest.fixture(scope="module")
def world(small_world):
    """conftest's small world, blue-green (a validated version becomes champion directly)."""
    root, _, instance = small_world
    with scoped_environ(**root_environ(root), ML_ASSETS_SERVING_STRATEGY="blue_green"):
        yield root, load_defs(), instance


@pytest.fixture(scope="module")
def state():
    return {}


def _mlflow() -> MlflowResource:
    return MlflowResource(
        tracking_uri=paths.mlflow_tracking_uri(), artifact_location=paths.mlflow_artifact_root()
    )


def _aliases() -> dict[str, str | None]:
    mlflow = _mlflow()
    return {
        a: registry.alias_version(mlflow.client(), mlflow.registered_model_name, a) for a in registry.ALIASES
    }


def _tags(version: str) -> dict[str, str]:
    mlflow = _mlflow()
    return mlflow.client().get_model_version(mlflow.registered_model_name, version).tags


def _tick(instance, cursor):
    resources = {"mlflow": _mlflow(), "alerts": AlertsResource()}
    return model_promotion_sensor(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    )


def _run(world, job: str, **kw):
    _, definitions, instance = world
    return run_job(definitions, job, instance=instance, **kw)


def _failure(result) -> str:
    """What the run's first failed step said (a refusal's description, or the error)."""
    data = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data
    return data.user_failure_data.description if data.user_failure_data else data.error.message


def _retrain_and_tick(world, state):
    """A retraining run, then one tick of the promotion sensor on it (the cursor carried on)."""
    result = _run(world, "retraining_job", run_config=FAST)
    tick = _tick(world[2], state.get("cursor"))
    state["cursor"] = tick.cursor
    return result, tick, _aliases()[registry.CHALLENGER]


@contextmanager
def _serving(tmp_path, name: str):
    """The scoring service over HTTP on a loopback port, on its own online store under tmp_path,
    reading the feature spec of this process's environment now; polled by hand."""
    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import Server

    store = f"sqlite:///{tmp_path / name / 'online.db'}"
    service = Service(ServingSettings(paths.mlflow_tracking_uri(), store, poll_seconds=3600.0))
    with Server(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield service, client, store


def _score(client, prefix: str) -> dict[str, tuple[str, float]]:
    """12 transactions on 3 cards (each card's earlier ones are history for its later ones):
    transaction_id -> (model version, score)."""
    rows = [
        landing_tx(i, "2026-01-25", transaction_id=f"{prefix}-{i}", card_id=f"live-{i % 3}")
        for i in range(12)
    ]
    response = client.post("/predict", json={"transactions": rows})
    assert response.status_code == 200, response.text
    return {p["transaction_id"]: (p["model_version"], p["score"]) for p in response.json()["predictions"]}


def _warehouse(sql: str) -> list[tuple]:
    """A query of the warehouse in a fresh process (dbt's runs left it open in this one)."""
    code = (
        "import duckdb, json, sys; con = duckdb.connect(sys.argv[1]); "
        "print(json.dumps(con.sql(sys.argv[2]).fetchall() if sys.argv[2].startswith(('select', 'describe')) "
        "else con.execute(sys.argv[2]).fetchall(), default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(paths.warehouse_path()), sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def _batch_scores(version: str) -> pl.DataFrame:
    return (
        pl.read_delta(f"{paths.lake_uri()}/{tables.BATCH_PREDICTIONS}")
        .filter(
            (pl.col("model_version") == version) & (pl.col("event_date") == pl.lit(LAST_DAY).str.to_date())
        )
        .select("transaction_id", "score")
        .sort("transaction_id")
    )


def test_a_window_added_through_the_spec_reaches_the_next_model_and_the_champion_keeps_scoring(
    world, state, tmp_path_factory, monkeypatch
):
    from ml_assets_tests.serving_support import drain

    tmp = tmp_path_factory.mktemp("evolution")
    result, tick, v1 = _retrain_and_tick(world, state)
    assert result.success, _failure(result)
    assert _run(world, "promotion_job", run_config=tick.run_requests[0].run_config).success
    v1_columns = _tags(v1)[registry.TAG_FEATURE_COLUMNS].split(",")
    assert len(v1_columns) == 19 and not set(NEW) & set(v1_columns)
    with _serving(tmp, "before") as (_, client, store_before):
        before = _score(client, "x")
    assert {v for v, _ in before.values()} == {v1}
    assert _run(world, "monitoring_job", partition=LAST_DAY).success
    batch_before = _batch_scores(v1)

    # The change: one line of the spec (here through its setting), then a backfill of every day.
    monkeypatch.setenv(SPEC, json.dumps(WITH_6H))
    rebuilt = _run(world, "features_job", days=WORLD_DAYS)
    assert rebuilt.success, _failure(rebuilt)
    [(rows, nulls)] = _warehouse(
        "select count(*), count(*) - count(card_tx_count_6h) from transaction_features"
    )
    assert rows > 30_000 and nulls == 0  # the column joined the table, and every day was rebuilt
    assert (
        _warehouse("select count(*) from transaction_features where card_tx_count_6h > card_tx_count_1h")[0][
            0
        ]
        > 0
    )

    # The champion scores as before: in batch, and live (a service started with the new spec
    # computes 21 features, and hands v1 its own 19).
    monitored = _run(world, "monitoring_job", partition=LAST_DAY)
    assert monitored.success, _failure(monitored)
    assert _batch_scores(v1).equals(batch_before)
    drift = monitored.asset_materializations_for_node("drift_report")[0].metadata
    compared = drift["features_compared"].value
    assert set(compared) == set(v1_columns) and not set(NEW) & set(compared)  # what both sides have
    with _serving(tmp, "after") as (service, client, store_after):
        again = _score(client, "w")  # the same transactions under other ids (the log keeps one per id)
        assert list(again.values()) == list(before.values())
        assert service.params.columns == v1_columns[:11] + NEW + v1_columns[11:]  # the spec's order

        # The next model trains on the new list, passes every gate, and is promoted.
        result, tick, v2 = _retrain_and_tick(world, state)
        assert result.success, _failure(result)
        checks = check_results(result)
        assert all(checks[f"model_validation_report:{g}"].passed for g in GATES)
        servable = checks["model_validation_report:servable"].metadata
        print(f"servable gate: {servable['reason'].value}; pyfunc {servable['pyfunc_seconds'].value} s")
        v2_columns = _tags(v2)[registry.TAG_FEATURE_COLUMNS].split(",")
        assert v2_columns == v1_columns + NEW  # the table's order: the new columns joined at its end
        assert _tags(v2)[registry.TAG_FEATURES_DBT_HASH] != _tags(v1)[registry.TAG_FEATURES_DBT_HASH]
        report = result.asset_materializations_for_node("model_validation_report")[0].metadata
        assert "CHANGED" in report["features"].value and "added: card_tx_count_6h" in report["features"].value
        assert _run(world, "promotion_job", run_config=tick.run_requests[0].run_config).success
        assert (_aliases()[registry.CHAMPION], _aliases()[registry.PREVIOUS_CHAMPION]) == (v2, v1)
        service.poll()
        assert {v for v, _ in _score(client, "y").values()} == {v2}

        # Rolling back: v1 serves again, on its own columns.
        back = {"action": "rollback", "reason": "test", "actor": "pytest"}
        rollback = {"ops": {"deployed_model": {"config": back}}}
        assert _run(world, "rollback_job", run_config=rollback).success
        service.poll()
        rolled_back = _score(client, "z")
        assert {v for v, _ in rolled_back.values()} == {v1}
    state.update(v1=v1, v2=v2)

    # The inference log takes both services' decisions: v1's from before the change without the
    # new columns (null), v1's and v2's after it with them.
    for store in (store_before, store_after):
        drain(paths.lake_uri(), store)
    log = pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}")
    assert log.height == 48 and set(log["model_version"]) == {v1, v2}
    old_rows = log.filter(pl.col(NEW[0]).is_null())
    assert old_rows.height == 12 and set(old_rows["model_version"]) == {v1}  # scored before the change
    # Each logged score is its model's booster on its own columns of the logged features.
    mlflow = _mlflow()
    for version in (v1, v2):
        rows = log.filter(pl.col("model_version") == version)
        booster, columns = mlflow.load_model(version)
        np.testing.assert_allclose(
            booster.predict(matrix(rows, columns)), rows["score"].to_numpy(), rtol=1e-12
        )
        if version == v1:
            assert columns == v1_columns


def test_a_column_the_online_side_cannot_compute_never_reaches_serving(world, state, monkeypatch):
    """A feature only SQL computes (added to the warehouse's table here, as a column in the SQL
    would be): the model trained on it is registered and judged, and its `servable` gate fails;
    the sensor and deployed_model refuse it, saying which feature."""
    monkeypatch.setenv(SPEC, json.dumps(WITH_6H))
    _warehouse("alter table transaction_features add column sql_only double")
    _warehouse("update transaction_features set sql_only = amount * 2")
    result, tick, v3 = _retrain_and_tick(world, state)
    assert not result.success  # its blocking gate failed
    assert v3 not in (state["v1"], state["v2"])
    model = result.asset_materializations_for_node("fraud_model")[0].metadata
    assert model["features_not_online"].value == "sql_only"
    servable = check_results(result)["model_validation_report:servable"]
    assert servable.passed is False and "can't compute sql_only" in servable.metadata["reason"].value
    assert _tags(v3)[registry.TAG_VERDICT] == "failed"
    assert not tick.run_requests and "failed servable" in tick.skip_reason.skip_message
    assert not_online(_mlflow(), v3) == ["sql_only"]
    forced = {"ops": {"deployed_model": {"config": {"action": "promote", "version": v3, "actor": "pytest"}}}}
    refused = _run(world, "promotion_job", run_config=forced)
    assert not refused.success and "refusing to promote" in _failure(refused)
    assert _aliases()[registry.CHAMPION] == state["v1"]


def test_removing_a_feature_a_deployed_version_needs_is_refused_before_the_build(world, state, monkeypatch):
    """With v2 champion again and v1 its previous_champion: a spec without the 1h window, or the
    committed spec (without 6h), would drop columns they take. The build refuses, dbt never runs,
    and the table keeps them."""
    v1, v2 = state["v1"], state["v2"]
    monkeypatch.setenv(SPEC, json.dumps(WITH_6H))  # (deployed_model promotes only what it can serve)
    promote = {"ops": {"deployed_model": {"config": {"action": "promote", "version": v2, "actor": "pytest"}}}}
    assert _run(world, "promotion_job", run_config=promote).success
    assert (_aliases()[registry.CHAMPION], _aliases()[registry.PREVIOUS_CHAMPION]) == (v2, v1)
    monkeypatch.setenv(SPEC, json.dumps({"card_velocity_windows": {"24h": 24, "7d": 168, "6h": 6}}))
    refused = _run(world, "features_job", partition=LAST_DAY)
    assert not refused.success
    message = _failure(refused)
    assert "refusing to build the features" in message
    assert f"champion (v{v2}) needs card_tx_count_1h" in message
    assert f"previous_champion (v{v1}) needs card_tx_count_1h" in message
    assert "challenger (v" not in message  # v3, which its gates blocked, is never promoted
    monkeypatch.delenv(SPEC)  # the committed spec: no 6h window, which v2 takes
    refused = _run(world, "features_job", partition=LAST_DAY)
    assert not refused.success and f"champion (v{v2}) needs card_tx_count_6h" in _failure(refused)
    columns = {name for name, *_ in _warehouse("describe transaction_features")}
    assert {"card_tx_count_1h", "card_tx_count_6h"} <= columns

    # A full refresh rebuilds the tables from the run's days only: refused for a run of one day.
    monkeypatch.setenv(SPEC, json.dumps(WITH_6H))
    full = {"ops": {"feature_models": {"config": {"full_refresh": True}}}}
    refused = _run(world, "features_job", partition=LAST_DAY, run_config=full)
    assert not refused.success and "launch it over every day" in _failure(refused)
