"""The inference log: every decision the service answered with is recorded in the online store
before the response, and the `inference_log` asset drains the store's queue into Delta (with the
features, partitioned by scored day), once per transaction and arm however often it is drained or
a request is retried."""

from __future__ import annotations

import httpx
import polars as pl
import pytest

from ml_assets.lib import paths, tables
from ml_assets.lib.features import FEATURE_COLUMNS
from ml_assets.serving.inference_log import SCHEMA
from ml_assets_tests.conftest import tx
from ml_assets_tests.serving_support import drain, materialization, service_and_server, shared_registry


def _log() -> pl.DataFrame:
    return pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}")


def test_every_prediction_lands_in_the_delta_table_with_its_features(data_dir):
    from deltalake import DeltaTable

    registry = shared_registry()
    name = registry.register(aliases={"champion": 2})
    store = paths.online_store_url()
    _, server = service_and_server(registry, name, store)
    responses = []
    with server, httpx.Client(base_url=server.url) as client:
        for i in range(30):
            responses.append(client.post("/predict", json=tx(i, amount=f"{10 + i}.25")).json())
        responses.append(client.post("/predict", json={"transactions": [tx(100), tx(101)]}).json())
    # The service wrote nothing to the lake: its decisions wait in the store's queue.
    assert not (data_dir / "lake" / "serving").exists()
    meta = materialization(drain(paths.lake_uri(), store), "inference_log")
    assert (meta["rows_drained"], meta["log_rows_written"], meta["dagster/row_count"]) == (32, 32, 32)
    assert meta["rows_per_second"] > 0 and meta["store"] == store and len(meta["days_touched"]) >= 1

    uri = f"{paths.lake_uri()}/{tables.INFERENCE_LOG}"
    assert DeltaTable(uri).metadata().partition_columns == ["scored_date"]
    log = _log()
    assert dict(log.schema) == SCHEMA
    assert log.height == 32
    expected = {
        (r["request_id"], p["transaction_id"], p["model_version"], p["score"])
        for r in responses
        for p in r["predictions"]
    }
    logged = set(log.select("request_id", "transaction_id", "model_version", "score").iter_rows())
    assert logged == expected
    assert log["returned"].all() and set(log["strategy"]) == {"single"} and set(log["model_name"]) == {name}
    assert log["stale_risk"].all()  # nothing fed merchant risk into this store
    assert (log["scored_date"] == log["scored_at"].dt.date()).all()
    first = log.filter(pl.col("transaction_id") == "tx-3").row(0, named=True)
    assert first["amount"] == 13.25 and first["card_id"] == "card-3" and first["channel_code"] == 0
    assert str(first["event_time"]) == "2026-01-15 10:03:00+00:00"
    # A card's first transaction has no history: a null, as dbt has it (not a NaN).
    assert log["seconds_since_card_last_tx"].null_count() == 7  # one per card of tx(): 7 cards
    assert log.select(pl.col(FEATURE_COLUMNS).is_nan().any()).row(0) == (False,) * len(FEATURE_COLUMNS)


def test_draining_twice_and_a_retried_request_log_once(data_dir):
    registry = shared_registry()
    name = registry.register(aliases={"champion": 1})
    store = paths.online_store_url()
    _, server = service_and_server(registry, name, store)
    with server, httpx.Client(base_url=server.url) as client:
        first = client.post("/predict", json={"transactions": [tx(i) for i in range(5)]})
        meta = materialization(drain(paths.lake_uri(), store), "inference_log")
        assert (meta["rows_drained"], meta["log_rows_written"]) == (5, 5)
        again = materialization(drain(paths.lake_uri(), store), "inference_log")
        assert (again["rows_drained"], again["log_rows_written"]) == (0, 0)  # nothing queued since
        # The same request again (a client that timed out and retried): the recorded decisions
        # come back whole, and nothing is queued for them.
        retried = client.post("/predict", json={"transactions": [tx(i) for i in range(5)]})
        assert (
            retried.json() == first.json() and retried.headers["x-request-id"] == first.json()["request_id"]
        )
        assert client.post("/predict", json={"transactions": [tx(3), tx(7)]}).status_code == 200
    meta = materialization(drain(paths.lake_uri(), store), "inference_log")
    assert (meta["rows_drained"], meta["log_rows_written"]) == (1, 1)  # tx-7 only
    log = _log()
    assert sorted(log["transaction_id"]) == [f"tx-{i}" for i in (0, 1, 2, 3, 4, 7)]


def test_a_drain_retried_after_its_write_logs_nothing_twice(data_dir, monkeypatch):
    """The drain's Delta commit lands, then the step fails before it stores its cursor and acks
    (the fault tests' commit hook raises there, once): the step's retry reads the same decisions
    from the store again, and the dedupe against the log drops them."""
    from ml_assets.defs import resources

    registry = shared_registry()
    name = registry.register(aliases={"champion": 1})
    store = paths.online_store_url()
    _, server = service_and_server(registry, name, store)
    with server, httpx.Client(base_url=server.url) as client:
        assert client.post("/predict", json={"transactions": [tx(i) for i in range(8)]}).status_code == 200
    faults = []

    def fail_once_after_the_log_commit(stage: str, table: str) -> None:
        if (stage, table) == ("after", tables.INFERENCE_LOG) and not faults:
            faults.append(table)
            raise OSError("the drain died after its log commit")

    monkeypatch.setattr(resources, "commit_hook", fail_once_after_the_log_commit)
    result = drain(paths.lake_uri(), store)
    assert faults == [tables.INFERENCE_LOG]
    assert any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events)  # the retry ran
    meta = materialization(result, "inference_log")
    assert (meta["rows_drained"], meta["log_rows_written"]) == (8, 0)  # the first attempt wrote them
    log = _log()
    assert log.height == 8 and log["transaction_id"].n_unique() == 8


def test_a_new_feature_column_joins_the_log_without_breaking_it(data_dir):
    """Decisions of a model with a feature the log has not seen (schema_mode merge): the column is
    added, older rows read null in it, and nothing earlier is rewritten or lost."""
    from ml_assets.serving.online_store import Decision, open_store

    store = paths.online_store_url()

    def decision(i: int, extra_feature: bool) -> Decision:
        features = dict.fromkeys(FEATURE_COLUMNS, 1.0) | ({"card_velocity_5m": 3.0} if extra_feature else {})
        extra = {"alias": "champion", "card_id": "c", "merchant_id": "m", "event_time": 0,
                 "strategy": "single", "model_name": "x", "stale_risk": False}  # fmt: skip
        return Decision(f"tx-{i}", "r", 0.5, "1", "champion", features, 1_768_478_400_000_000, extra)

    with open_store(store, lookback_days=30) as s:
        s.record([decision(i, False) for i in range(3)])
    drain(paths.lake_uri(), store)
    with open_store(store, lookback_days=30) as s:
        s.record([decision(i, True) for i in range(3, 5)])
    drain(paths.lake_uri(), store)
    log = _log().sort("transaction_id")
    assert dict(log.schema) == SCHEMA | {"card_velocity_5m": pl.Float64()}
    assert log["card_velocity_5m"].to_list() == [None, None, None, 3.0, 3.0]


@pytest.mark.parametrize("shadow", [False, True])
def test_log_rows_of_decisions_carry_shadow_scores_as_rows(shadow):
    """One decision per transaction in the store; its shadow scores become rows (returned false),
    each with the decision its own arm's threshold made."""
    from ml_assets.serving.inference_log import rows_of
    from ml_assets.serving.online_store import Decision

    extra = {
        "alias": "champion",
        "decision": "approve",
        "shadow": [
            {"arm": "shadow", "alias": "shadow", "model_version": "2", "score": 0.9, "decision": "review"}
        ],
    }
    d = Decision("t", "r", 0.1, "1", "champion", dict.fromkeys(FEATURE_COLUMNS), 0, extra if shadow else {})
    rows = rows_of([d])
    assert rows.select("arm", "model_version", "score", "returned", "decision").rows() == [
        ("champion", "1", 0.1, True, "approve" if shadow else None)
    ] + ([("shadow", "2", 0.9, False, "review")] if shadow else [])
    assert dict(rows.schema) == SCHEMA


def test_a_log_from_before_decisions_takes_the_decision_column(data_dir):
    """A deployment's log written before decisions were logged has no `decision` column: the next
    drain adds it (schema merge), its old rows read null, the new ones their decision."""
    from ml_assets.defs.resources import LakeResource
    from ml_assets.serving.inference_log import PARTITION_COLUMN, rows_of
    from ml_assets.serving.online_store import Decision, open_store

    def decision(i: int, decided: str | None) -> Decision:
        extra = {"alias": "champion", "card_id": "c", "merchant_id": "m", "event_time": 0,
                 "strategy": "single", "model_name": "x", "stale_risk": False}  # fmt: skip
        extra |= {"decision": decided} if decided else {}
        features = dict.fromkeys(FEATURE_COLUMNS, 1.0)
        return Decision(f"tx-{i}", "r", 0.5, "1", "champion", features, 1_768_478_400_000_000, extra)

    old = rows_of([decision(i, None) for i in range(2)]).drop("decision")  # the older writer's rows
    LakeResource(root=paths.lake_uri()).append(tables.INFERENCE_LOG, old, partition_column=PARTITION_COLUMN)
    assert "decision" not in _log().columns
    store = paths.online_store_url()
    with open_store(store, lookback_days=30) as s:
        s.record([decision(2, "review"), decision(3, "approve")])
    drain(paths.lake_uri(), store)
    log = _log().sort("transaction_id")
    assert dict(log.schema) == SCHEMA
    assert log["decision"].to_list() == [None, None, "review", "approve"]


def test_the_sensor_asks_for_a_drain_only_when_decisions_are_queued(data_dir):
    import dagster as dg

    from ml_assets.defs.resources import OnlineStoreResource
    from ml_assets.defs.serving_state.sensors import inference_log_sensor
    from ml_assets.serving.online_store import Decision, open_store

    store = paths.online_store_url()
    resources = {"online_store": OnlineStoreResource(url=store)}
    with dg.DagsterInstance.ephemeral() as instance:
        tick = inference_log_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert not tick.run_requests and "no decisions queued" in tick.skip_reason.skip_message
        with open_store(store, lookback_days=30) as s:
            s.record([Decision("tx-1", "r", 0.5, "1", "champion", {}, 0, {})])
        tick = inference_log_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert len(tick.run_requests) == 1
    drain(paths.lake_uri(), store)
    with dg.DagsterInstance.ephemeral() as instance:
        tick = inference_log_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert not tick.run_requests  # drained and acked
