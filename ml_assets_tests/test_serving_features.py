"""Online features equal dbt's: the pure function on hand-made cases, then the skew test on a
simulated world (the service replays a day, the warehouse has computed it)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ml_assets.lib.features import feature_columns
from ml_assets.serving.features import (
    US,
    FeatureParams,
    Past,
    Tx,
    as_vector,
    merchant_risk,
    transaction_features,
)
from ml_assets_tests.conftest import WORLD_DAYS

PARAMS = FeatureParams.from_dbt_project()
FEATURE_COLUMNS = feature_columns()
T = int(datetime(2026, 1, 15, 12, 0, tzinfo=UTC).timestamp() * US)  # a Thursday


def _tx(ts: int = T, **kw) -> Tx:
    fields = dict(
        transaction_id="now", ts=ts, card_id="c", merchant_id="m", merchant_category="5411",
        amount=100.0, country="FR", channel="ecom", device_id="d1",
    )  # fmt: skip
    return Tx(**{**fields, **kw})


def _past(seconds_before: float, amount: float = 10.0, device="d1", country="FR", channel="ecom") -> Past:
    return Past(T - int(seconds_before * US), amount, device, country, channel, f"p{seconds_before}")


def test_every_model_feature_is_computed_online():
    assert list(transaction_features(_tx(), [], (0, 0), PARAMS)) == FEATURE_COLUMNS


def test_card_history_windows_are_strictly_before_and_inclusive_at_their_start():
    past = [
        _past(0, 1000.0),  # the same instant: not history
        _past(-5, 1000.0),  # later: not history
        _past(3600, 1.0),  # exactly 1h before: inside the 1h window
        _past(3601, 2.0),
        _past(86400 * 7, 4.0),  # exactly 7d before: inside the 7d window
        _past(86400 * 30, 8.0, country="DE"),  # exactly at the lookback's start: counted
        _past(86400 * 30 + 1, 16.0),  # older than the lookback
    ]
    f = transaction_features(_tx(), past, (0, 0), PARAMS)
    assert (f["card_tx_count_1h"], f["card_amount_sum_1h"]) == (1, 1.0)
    assert (f["card_tx_count_24h"], f["card_amount_sum_24h"]) == (2, 3.0)
    assert (f["card_tx_count_7d"], f["card_amount_sum_7d"]) == (3, 7.0)
    assert f["card_amount_avg_lookback"] == pytest.approx(15.0 / 4)
    assert f["amount_to_card_avg"] == pytest.approx(100.0 / (15.0 / 4))
    assert f["seconds_since_card_last_tx"] == 3600.0
    assert (f["hour_of_day"], f["day_of_week"], f["channel_code"]) == (12, 4, 1)
    assert (f["is_new_card_device"], f["is_new_card_country"], f["is_new_card_channel"]) == (0, 0, 0)


def test_a_card_without_history_and_missing_devices_give_nulls_as_sql_does():
    first = transaction_features(_tx(device_id=None), [], (0, 0), PARAMS)
    assert first["card_amount_avg_lookback"] is None
    assert first["amount_to_card_avg"] is None
    assert first["seconds_since_card_last_tx"] is None
    assert first["is_new_card_device"] is None  # no device: unknown, not new
    assert np.isnan(as_vector(first, FEATURE_COLUMNS)[FEATURE_COLUMNS.index("amount_to_card_avg")])
    # A past transaction without a device never matches a device (NULL = NULL is not true).
    f = transaction_features(_tx(), [_past(60, device=None)], (0, 0), PARAMS)
    assert (f["is_new_card_device"], f["is_new_card_country"]) == (1, 0)


def test_merchant_risk_counts_the_latest_label_made_in_the_window_before_the_day():
    day = date(2026, 3, 1)

    def d(n: int) -> date:
        return day - timedelta(days=n)

    labels = [  # (transaction, days before `day` the label was made, is_fraud)
        ("a", 3, 1),
        ("b", 5, 0), ("b", 2, 1),  # relabelled before the day: the newer label counts
        ("c", 4, 1), ("c", 0, 0),  # relabelled on the day itself: not known yet, the older counts
        ("d", 31, 1),  # made before the window
        ("e", 1, 0),
        ("g", 30, 1),  # made on the window's first day: still counts
        ("f", 2, 1),  # its transaction is older than window + horizon: not joined to a merchant
    ]  # fmt: skip
    label_frame = pl.DataFrame(
        {
            "transaction_id": [t for t, _, _ in labels],
            "labeled_at": [datetime.combine(d(n), datetime.min.time(), UTC) for _, n, _ in labels],
            "label_date": [d(n) for _, n, _ in labels],
            "is_fraud": pl.Series([f for _, _, f in labels], dtype=pl.Int8),
        }
    )
    transactions = pl.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d", "e", "f", "g"],
            "merchant_id": ["m1", "m1", "m1", "m1", "m2", "m1", "m2"],
            "event_date": [d(10), d(10), d(10), d(40), d(5), d(100), d(35)],
        }
    )
    risk = merchant_risk(label_frame.lazy(), transactions.lazy(), day, PARAMS)
    assert risk == {"m1": (3, 3), "m2": (2, 1)}
    f = transaction_features(_tx(merchant_id="m1"), [], risk["m1"], PARAMS)
    weight = PARAMS.merchant_prior_weight
    assert f["merchant_fraud_rate"] == pytest.approx((3 + PARAMS.merchant_prior_rate * weight) / (3 + weight))


# -- the skew test -------------------------------------------------------------------------------

LAST_DAY = date.fromisoformat(WORLD_DAYS[1])  # the last day of conftest's small world


def _warehouse_features(out, where: str) -> pl.DataFrame:
    """dbt's transaction_features rows `where` (SQL), read from the warehouse opened read-only.

    In a fresh process: the features job left the warehouse open read-write in this one
    (dagster-dbt's row counts), and DuckDB allows one configuration per file per process.
    """
    from ml_assets.lib import paths

    query = f"select * from transaction_features where {where}"
    code = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        "con.sql(sys.argv[2]).write_parquet(sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", code, str(paths.warehouse_path()), query, str(out)], check=True)
    return pl.read_parquet(out)


@pytest.fixture(scope="module")
def fed_store(small_world, tmp_path_factory) -> Path:
    """An SQLite online store fed from the world's bronze by the `online_store_feed` asset, up to
    the day before the last (the state as it was when the last day began); each test copies it."""
    from ml_assets.lib import paths
    from ml_assets_tests.serving_support import feed, materialization

    folder = tmp_path_factory.mktemp("fed_store")
    url = f"sqlite:///{folder / 'online.db'}"
    result = feed(paths.lake_uri(), url, WORLD_DAYS[0], (LAST_DAY - timedelta(days=1)).isoformat())
    meta = materialization(result, "online_store_feed")
    assert meta["days"] == (LAST_DAY - date.fromisoformat(WORLD_DAYS[0])).days
    assert meta["total_rows_upserted"] == meta["total_transactions"] > 10_000 and meta["store"] == url
    assert meta["merchants"] > 0 and meta["merchant_risk_day"] == LAST_DAY.isoformat()  # the last day's
    return folder / "online.db"


def _store_copy(fed_store: Path, tmp_path: Path) -> str:
    """A test's own copy of the fed store (the feed closed it: its WAL is checkpointed)."""
    import shutil

    target = tmp_path / "online" / "online.db"
    target.parent.mkdir(parents=True)
    for suffix in ("", "-wal"):
        if Path(f"{fed_store}{suffix}").exists():
            shutil.copyfile(f"{fed_store}{suffix}", f"{target}{suffix}")
    return f"sqlite:///{target}"


def _compare_with_dbt(logged: pl.DataFrame, dbt: pl.DataFrame) -> pl.DataFrame:
    """Every logged row is dbt's row, feature by feature (the comparison the parity check makes)."""
    from ml_assets.lib.parity import compare

    both, differ = compare(logged, dbt)
    assert both.height == dbt.height == logged.height
    assert differ.is_empty(), differ.head(20)
    return both


def _lake_with_bronze(tmp_path: Path) -> str:
    """A lake of the test's own holding the world's bronze transactions (what has landed), for the
    service's log to be drained into beside them."""
    import shutil

    from ml_assets.lib import paths, tables

    lake = tmp_path / "lake"
    shutil.copytree(
        Path(paths.lake_uri()) / tables.BRONZE["transactions"], lake / tables.BRONZE["transactions"]
    )
    return str(lake)


# The registered model as a serving platform runs it: plain MLflow in a process of its own, the
# online store given at load, one transaction per predict call (as real-time traffic arrives).
PYFUNC_REPLAY = """
import sys

import mlflow.pyfunc
import pandas as pd

tracking_uri, model_uri, store, rows = sys.argv[1:]
mlflow.set_tracking_uri(tracking_uri)
model = mlflow.pyfunc.load_model(model_uri, model_config={"online_store": store, "model_version": "1"})
landing = pd.read_csv(rows, dtype=str, keep_default_na=False)
for i in range(len(landing)):
    out = model.predict(landing.iloc[[i]])
    assert out["problems"].iloc[0] == "" and 0 < out["score"].iloc[0] < 1, out.to_dict()
"""


def _pyfunc_replay(
    tracking_uri: str, model_name: str, store: str, replay: pl.DataFrame, folder: Path
) -> None:
    """The day through `mlflow.pyfunc.load_model("models:/<name>@champion")` in a fresh Python
    process on the store, one transaction per call: the feed's text, as a landing CSV carries it."""
    import os

    from ml_assets.lib.contract import TRANSACTIONS

    rows = folder / "replay.csv"
    replay.select(list(TRANSACTIONS.columns)).with_columns(
        pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ"), pl.col("amount").cast(pl.String)
    ).write_csv(rows)
    args = [tracking_uri, f"models:/{model_name}@champion", store, str(rows)]
    # LightGBM on one thread, as the service runs it (ML_ASSETS_SERVING_THREADS): OpenMP's default
    # of every core made each one-row predict ~10 ms slower on this shared 2-core box.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", PYFUNC_REPLAY, *args], check=True, env=env)


@pytest.mark.parametrize("replicas", ["one", "two_alternating", "restart_halfway", "pyfunc_one_per_call"])
def test_service_features_equal_dbt_features_on_a_simulated_world(small_world, fed_store, tmp_path, replicas):
    """The small simulated world (24 days, ingested and featurized by the pipeline; the store fed
    from its bronze by `online_store_feed` up to the day before the last): the last day replayed
    in event-time order gives dbt's features row by row. Served by one replica; by two Services on
    the same store, requests alternating between them; by one that is replaced by a new Service on
    the same store halfway through; and by the registered model loaded with plain MLflow in a
    fresh process on the same store, one transaction per call (its decisions, features included,
    are recorded in the store as the service's are). With one replica, the parity check then
    judges the logged day and passes."""
    from fastapi.testclient import TestClient

    from ml_assets.lib import tables
    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import drain, request_rows, shared_registry

    registry = shared_registry()
    store = _store_copy(fed_store, tmp_path)
    settings = ServingSettings(
        tracking_uri=registry.tracking_uri,
        online_store=store,
        model_name=registry.register(aliases={"champion": 1}),
    )
    # One call per transaction costs the pyfunc ~13 ms: it replays every transaction of
    # the day's 80 busiest cards (~270, most cards with several that day), not the whole day.
    replay = _last_day(busiest_cards=80 if replicas == "pyfunc_one_per_call" else None)
    rows = request_rows(replay)
    batches = [rows[start : start + 100] for start in range(0, len(rows), 100)]  # in event-time order

    def post(client, batch):
        response = client.post("/predict", json={"transactions": batch})
        assert response.status_code == 200, response.text
        assert not any(p["stale_risk"] for p in response.json()["predictions"])  # the feed wrote the day's

    if replicas == "pyfunc_one_per_call":
        _pyfunc_replay(registry.tracking_uri, settings.model_name, store, replay, tmp_path)
    elif replicas == "two_alternating":
        with TestClient(create_app(Service(settings))) as a, TestClient(create_app(Service(settings))) as b:
            for i, batch in enumerate(batches):
                post((a, b)[i % 2], batch)
    else:
        half = len(batches) // 2 if replicas == "restart_halfway" else len(batches)
        for part in (batches[:half], batches[half:]):
            if part:
                with TestClient(create_app(Service(settings))) as client:  # a new process's state
                    for batch in part:
                        post(client, batch)

    lake = _lake_with_bronze(tmp_path)  # the service's log, apart from the world's lake
    drain(lake, store)
    logged = pl.read_delta(f"{lake}/{tables.INFERENCE_LOG}")
    assert set(logged["arm"]) == ({"pyfunc"} if replicas == "pyfunc_one_per_call" else {"champion"})
    assert not logged["stale_risk"].any()  # the feed wrote the day's merchant risk
    dbt = _warehouse_features(tmp_path / "dbt_features.parquet", f"event_date = date '{LAST_DAY}'")
    both = _compare_with_dbt(
        logged, dbt.filter(pl.col("transaction_id").is_in(replay["transaction_id"].implode()))
    )
    if replicas == "pyfunc_one_per_call":
        # Most rows follow an earlier call on their card that day: history only that call put in
        # the store (the feed stopped the day before), so the equality above says each call saw it.
        assert replay.height > 250 and replay.height - replay["card_id"].n_unique() > 150
        assert (both["card_tx_count_1h"] > 0).sum() > 20
    else:
        assert replay.height > 1000
        # The day exercises what the features are about, or the equality above would say little.
        assert (both["card_tx_count_24h"] > 0).sum() > 100
        assert both["seconds_since_card_last_tx"].null_count() > 0
        assert (both["merchant_labels_window"] > 0).sum() > 100
        assert both["is_new_card_device"].null_count() > 0
    if replicas == "one":  # the live check agrees with the replay (one way is enough: same log)
        evaluation = _parity(lake, small_world[2])
        assert evaluation.passed, evaluation.description
        meta = _values(evaluation)
        assert (meta["compared"], meta["mismatched"], meta["logged"]) == (replay.height, 0, replay.height)
        assert (
            evaluation.description
            == f"all {replay.height} compared transactions on {LAST_DAY} were served dbt's features"
        )


# -- the parity check on live traffic ------------------------------------------------------------


def _parity(lake: str, instance, day: date = LAST_DAY, max_share: float | None = None):
    from ml_assets_tests.serving_support import parity

    return parity(lake, instance, day, max_share)


def _values(evaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


def _ticks(instance):
    """(the promotion sensor's, the canary sensor's) skip reasons on `instance` now."""
    import dagster as dg

    from ml_assets.defs.monitoring.sensors import canary_sensor
    from ml_assets.defs.promotion.sensors import model_promotion_sensor
    from ml_assets.defs.resources import AlertsResource, LakeResource, MlflowResource, MonitoringResource
    from ml_assets.lib import paths
    from ml_assets_tests.serving_support import shared_registry

    mlflow = MlflowResource(
        tracking_uri=shared_registry().tracking_uri, artifact_location=paths.mlflow_artifact_root()
    )
    resources = {"mlflow": mlflow, "alerts": AlertsResource(), "lake": LakeResource.from_env(),
                 "monitoring": MonitoringResource()}  # fmt: skip
    reasons = []
    for sensor in (model_promotion_sensor, canary_sensor):
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert not result.run_requests
        reasons.append(result.skip_reason.skip_message)
    return tuple(reasons)


def _serve(store: str, rows: list[dict]) -> list[dict]:
    """`rows` through a Service on `store` serving a shared-registry model."""
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import serve, shared_registry

    registry = shared_registry()
    name = registry.register(aliases={"champion": 1})
    return serve(ServingSettings(registry.tracking_uri, store, model_name=name), rows)


def _last_day(busiest_cards: int | None = None) -> pl.DataFrame:
    """The last day's bronze transactions in event-time order (all those of its `busiest_cards`
    cards with the most transactions that day, if given)."""
    from ml_assets.lib import paths, tables

    bronze = pl.scan_delta(f"{paths.lake_uri()}/{tables.BRONZE['transactions']}")
    day = bronze.filter(pl.col("event_date") == LAST_DAY).sort("event_time").collect()
    if busiest_cards is None:
        return day
    counts = (
        day.group_by("card_id", maintain_order=True).len().sort("len", descending=True, maintain_order=True)
    )
    return day.filter(pl.col("card_id").is_in(counts["card_id"].head(busiest_cards).implode()))


def test_parity_fails_on_an_altered_store_row_and_the_deciding_sensors_hold(small_world, fed_store, tmp_path):
    """One card's stored history altered (an amount changed in the SQLite store, as a bad feed or a
    stray write would): its transactions of the day are served features that differ from dbt's,
    and no other card's are. The check fails (ERROR) with the count and examples, and the promotion
    and canary sensors hold, saying why; re-judged under a mismatch share above this one it passes,
    and they no longer hold. A logged transaction that never landed in bronze, and the day's
    transactions the service never saw, are not compared."""
    import sqlite3

    from ml_assets_tests.serving_support import drain, request_rows

    instance = small_world[2]
    store = _store_copy(fed_store, tmp_path)
    replay = _last_day(busiest_cards=25)
    day_start = int(datetime.combine(LAST_DAY, datetime.min.time(), UTC).timestamp() * US)
    with sqlite3.connect(store.removeprefix("sqlite:///")) as con:
        card, tx_id = next(
            found
            for card in replay["card_id"].unique(maintain_order=True)
            if (found := con.execute(
                "select card_id, transaction_id from history where card_id = ? and ts < ?"
                " order by ts desc limit 1", (card, day_start),
            ).fetchone())
        )  # fmt: skip
        con.execute("update history set amount = amount + 100 where transaction_id = ?", (tx_id,))
    con.close()
    never_landed = _request("never-landed", day_start + 12 * 3600 * US)
    predictions = _serve(store, [*request_rows(replay), never_landed])
    assert not any(p["stale_risk"] for p in predictions)
    lake = _lake_with_bronze(tmp_path)
    drain(lake, store)

    failed = _parity(lake, instance)
    meta = _values(failed)
    altered = set(replay.filter(pl.col("card_id") == card)["transaction_id"])
    assert not failed.passed
    assert (meta["logged"], meta["not_in_bronze"], meta["compared"]) == (replay.height + 1, 1, replay.height)
    assert meta["mismatched"] == len(altered) and meta["mismatch_share"] == len(altered) / replay.height
    assert "card_amount_avg_lookback" in meta["mismatches_by_feature"]
    assert failed.description.startswith(f"{len(altered)} of {replay.height} transactions on {LAST_DAY}")
    examples = meta["examples"]
    assert all(t in examples for t in sorted(altered)[:3]), examples
    promotion, canary = _ticks(instance)
    assert promotion == canary
    assert promotion.startswith("held: serving parity (online_features_match_dbt) failed in run ")
    assert promotion.endswith(f": {failed.description}")

    # The same traffic under a limit above its share: passes, and the sensors go on as usual.
    tolerated = _parity(lake, instance, max_share=0.5)
    assert tolerated.passed and _values(tolerated)["mismatched"] == len(altered)
    promotion, canary = _ticks(instance)
    assert promotion == "no new validation report" and canary == "no canary or shadow candidate deployed"


def test_parity_with_nothing_to_compare_passes_and_says_so(small_world, fed_store, tmp_path):
    """Transactions scored while the day's merchant risk was not written yet (stale_risk) are not
    compared, nor are days without logged traffic: such a day passes, and the check says why."""
    import sqlite3

    from ml_assets_tests.serving_support import drain, request_rows

    store = _store_copy(fed_store, tmp_path)
    with sqlite3.connect(store.removeprefix("sqlite:///")) as con:  # the feed of the day before not run
        for table in ("risk_days", "merchant_risk"):
            con.execute(f"delete from {table} where day = ?", (LAST_DAY.isoformat(),))  # noqa: S608
    con.close()
    replay = _last_day().head(20)
    assert all(p["stale_risk"] for p in _serve(store, request_rows(replay)))
    lake = _lake_with_bronze(tmp_path)
    drain(lake, store)

    stale = _parity(lake, small_world[2])
    meta = _values(stale)
    assert stale.passed and (meta["logged"], meta["stale_risk_skipped"], meta["compared"]) == (20, 20, 0)
    assert stale.description.startswith(f"nothing to compare on {LAST_DAY}: 20 logged transactions")
    quiet_day = LAST_DAY - timedelta(days=3)
    quiet = _parity(lake, small_world[2], day=quiet_day)
    assert quiet.passed and _values(quiet)["logged"] == 0
    assert quiet.description.startswith(f"nothing to compare on {quiet_day}: 0 logged transactions")
    assert not _ticks(small_world[2])[0].startswith("held")


# -- adversarial edges, through the service and the store ------------------------------------------


def _request(i: str, ts: int, card: str = "edge-card", merchant: str = "edge-m", amount: str = "10.00", **kw):
    moment = datetime.fromtimestamp(ts / US, UTC)
    row = {
        "transaction_id": i, "event_time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "card_id": card,
        "merchant_id": merchant, "merchant_category": "5411", "amount": amount, "currency": "EUR",
        "country": "FR", "channel": "pos", "device_id": "d1",
    }  # fmt: skip
    return row | kw


def test_edges_same_instants_window_edges_and_retries(data_dir, tmp_path):
    """Through two Services on one store: several transactions at one instant on one card and at
    one merchant (none is history for another), transactions exactly 1h, 24h and 7d before another
    (inside each window, as dbt's frames include their start), a microsecond past each edge
    (outside), and the same transaction_id retried (its first decision comes back, and it is
    history and logged once). Every logged row equals the pure function over everything the card
    had done before it."""
    from fastapi.testclient import TestClient

    from ml_assets.lib import paths, tables
    from ml_assets.serving.app import create_app
    from ml_assets.serving.features import Tx
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import drain, shared_registry

    registry = shared_registry()
    store = paths.online_store_url()
    settings = ServingSettings(
        registry.tracking_uri, store, model_name=registry.register(aliases={"champion": 2})
    )
    hour, day = 3600 * US, 86400 * US
    t = T + 8 * day
    plan = [  # (request batches, in the order sent)
        [_request("wk", t - 7 * day), _request("wk-", t - 7 * day - 1)],  # on the 7d edge / just past it
        [_request("dy", t - day), _request("dy-", t - day - 1, amount="20.00")],
        [_request("hr", t - hour), _request("hr-", t - hour - 1, amount="30.00")],
        # Three at one instant on the card (one of them at another merchant), and one at the merchant
        # on another card.
        [_request("s1", t, amount="1.00"), _request("s2", t, amount="2.00"), _request("s3", t, merchant="x")],
        [_request("s4", t, card="other-card")],
        [_request("after", t + 1)],
        [_request("s2", t, amount="99.00"), _request("later", t + hour)],  # s2 retried (another amount)
        [_request("after", t + 1)],  # retried alone
    ]
    answers = {}
    with TestClient(create_app(Service(settings))) as a, TestClient(create_app(Service(settings))) as b:
        for k, batch in enumerate(plan):
            response = (a, b)[k % 2].post("/predict", json={"transactions": batch})
            assert response.status_code == 200, response.text
            for p in response.json()["predictions"]:
                if p["transaction_id"] in answers:  # a retry: its first decision, whole
                    assert p == answers[p["transaction_id"]]
                answers.setdefault(p["transaction_id"], p)
    drain(paths.lake_uri(), store)
    logged = pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}")
    assert sorted(logged["transaction_id"]) == sorted(answers)  # once each, retries included
    assert dict(logged.select("transaction_id", "score").iter_rows()) == {
        i: p["score"] for i, p in answers.items()
    }

    # The reference: the pure function over every transaction sent before (the first copy of a
    # retried one), and no merchant risk (nothing fed this store: stale, empty).
    first_copies: dict[str, Tx] = {}
    for batch in plan:
        for r in batch:
            ts = int(datetime.fromisoformat(r["event_time"].replace("Z", "+00:00")).timestamp() * US)
            copy = Tx(r["transaction_id"], ts, r["card_id"], r["merchant_id"], "5411", float(r["amount"]),
                      "FR", "pos", "d1")  # fmt: skip
            first_copies.setdefault(r["transaction_id"], copy)
    everything = [
        Past(x.ts, x.amount, x.device_id, x.country, x.channel, x.transaction_id)
        for x in first_copies.values()
    ]
    cards = {x.transaction_id: x.card_id for x in first_copies.values()}
    for row in logged.iter_rows(named=True):
        x = first_copies[row["transaction_id"]]
        expected = as_vector(
            transaction_features(
                x, [p for p in everything if cards[p.transaction_id] == x.card_id], (0, 0), PARAMS
            ),
            FEATURE_COLUMNS,
        )
        assert np.allclose([row[c] if row[c] is not None else np.nan for c in FEATURE_COLUMNS], expected,
                           rtol=1e-12, atol=0, equal_nan=True), row["transaction_id"]  # fmt: skip
        assert row["stale_risk"] is True
    by_id = {r["transaction_id"]: r for r in logged.iter_rows(named=True)}
    # What the edges mean, spelled out: exactly on an edge counts, a microsecond past it does not.
    assert by_id["s1"]["card_tx_count_1h"] == 1 and by_id["s1"]["card_amount_sum_1h"] == 10.0  # hr only
    assert by_id["s1"]["card_tx_count_24h"] == 3 and by_id["s1"]["card_amount_sum_24h"] == 10 + 30 + 10
    assert by_id["s1"]["card_tx_count_7d"] == 5  # wk, dy-, dy, hr-, hr
    assert (
        by_id["s1"]["card_tx_count_1h"] == by_id["s2"]["card_tx_count_1h"] == by_id["s3"]["card_tx_count_1h"]
    )
    assert by_id["after"]["card_tx_count_1h"] == 3  # the three at t (hr is now a microsecond too old)
    # The three at t are exactly on later's 1h edge; the retry's amount (99) was never history.
    assert (by_id["later"]["card_tx_count_1h"], by_id["later"]["card_amount_sum_1h"]) == (4, 1 + 2 + 10 + 10)


def test_a_day_whose_risk_is_not_written_yet_scores_with_the_latest_and_says_stale(data_dir):
    """Merchant risk comes from the store, never from bronze: the day's table when the feed has
    written it, else the latest earlier day's, and the decision says stale_risk; a table the feed
    writes while the service runs counts from the next request on."""
    from fastapi.testclient import TestClient

    from ml_assets.lib import paths
    from ml_assets.serving.app import create_app
    from ml_assets.serving.online_store import open_store
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import shared_registry

    registry = shared_registry()
    store = paths.online_store_url()
    with open_store(store, lookback_days=PARAMS.card_lookback_days) as s:
        s.put_merchant_risk(date(2026, 1, 14), {"edge-m": (7, 3)})
        s.put_merchant_risk(date(2026, 1, 16), {"edge-m": (40, 1)})
    settings = ServingSettings(
        registry.tracking_uri, store, model_name=registry.register(aliases={"champion": 1})
    )
    weight = PARAMS.merchant_prior_weight
    with TestClient(create_app(Service(settings))) as client:
        for day, (labels, frauds), stale in (
            ("15", (7, 3), True),
            ("16", (40, 1), False),
            ("20", (40, 1), True),
        ):
            body = _request(f"r-{day}", int(datetime(2026, 1, int(day), 9, tzinfo=UTC).timestamp() * US))
            [p] = client.post("/predict", json=body).json()["predictions"]
            assert p["stale_risk"] is stale, day
            # The decision's features: what the model saw.
            with open_store(store, lookback_days=PARAMS.card_lookback_days) as s:
                [decision] = [d for d in s.read_decisions(None, 100)[0] if d.transaction_id == f"r-{day}"]
            assert decision.features["merchant_labels_window"] == labels
            rate = (frauds + PARAMS.merchant_prior_rate * weight) / (labels + weight)
            assert decision.features["merchant_fraud_rate"] == pytest.approx(rate)
        # The feed writes the 15th while the service runs: its next request reads it (nothing held).
        with open_store(store, lookback_days=PARAMS.card_lookback_days) as s:
            s.put_merchant_risk(date(2026, 1, 15), {"edge-m": (12, 4)})
        body = _request("r-15-again", int(datetime(2026, 1, 15, 10, tzinfo=UTC).timestamp() * US))
        [p] = client.post("/predict", json=body).json()["predictions"]
        with open_store(store, lookback_days=PARAMS.card_lookback_days) as s:
            [decision] = [d for d in s.read_decisions(None, 100)[0] if d.transaction_id == "r-15-again"]
        assert (p["stale_risk"], decision.features["merchant_labels_window"]) == (False, 12)


def _store_contents(url: str) -> str:
    """An order-independent hash of every row of an SQLite store's history and merchant risk."""
    import hashlib
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as con:
        rows = sorted(
            f"{table}:{row}"
            for table in ("history", "risk_days", "merchant_risk")
            for row in con.execute(f"select * from {table}")  # noqa: S608  (our own table names)
        )
    con.close()
    return f"{len(rows)} rows {hashlib.sha256(chr(10).join(rows).encode()).hexdigest()[:16]}"


def test_the_feed_materialized_twice_leaves_the_store_as_it_was(fed_store, small_world, tmp_path):
    """Materializing `online_store_feed` again for days it already fed (a backfill, a retry) adds
    nothing to the store and changes nothing in it: history is idempotent by transaction_id, and
    each day's merchant risk is replaced whole by the same table."""
    from ml_assets.lib import paths
    from ml_assets_tests.serving_support import feed, materialization

    url = _store_copy(fed_store, tmp_path)
    before = _store_contents(url)
    again = feed(paths.lake_uri(), url, "2026-01-10", "2026-01-16")
    meta = materialization(again, "online_store_feed")
    assert meta["total_transactions"] > 0 and meta["total_rows_upserted"] == 0
    assert _store_contents(url) == before and not before.startswith("0 rows")


# -- the skew test on an adversarial history, and the test of that test ----------------------------

ADVERSARIAL_DAYS = ("2026-01-25", "2026-01-26", "2026-02-01")  # after the small world's last day


def _adversarial_rows() -> dict[str, list[dict[str, str]]]:
    """Landing rows (per day) of two cards whose history sits on every edge dbt and the online
    side must agree on: transactions exactly 1h, 24h and 7d before another (inside each window)
    and a microsecond more (outside), three at one instant on one card (none is history for the
    others) and one at that instant on another card at the same merchant, one a microsecond later
    and one exactly 1h later, and a retried delivery (the same row in two files)."""
    from ml_assets_tests.conftest import tx

    def row(i: str, at: str, amount: str, card: str = "adv-card", merchant: str = "adv-m", **kw):
        return tx(0, day=at[:10], transaction_id=f"adv-{i}", event_time=at, card_id=card,
                  merchant_id=merchant, amount=amount, device_id="adv-d", **kw)  # fmt: skip

    return {
        "2026-01-25": [
            row("e7", "2026-01-25T12:00:00.000000Z", "7.00"),  # 7d before s1..s3, 24h before d0
            row("e7x", "2026-01-25T11:59:59.999999Z", "70.00"),  # a microsecond more: outside both
            row("h0", "2026-01-25T13:00:00.000000Z", "3.00", channel="ecom"),  # e7 on its 1h edge
        ],
        "2026-01-26": [row("d0", "2026-01-26T12:00:00.000000Z", "5.00", country="DE")],
        "2026-02-01": [
            row("s1", "2026-02-01T12:00:00.000000Z", "1.00"),
            row("s2", "2026-02-01T12:00:00.000000Z", "2.00"),
            row("s3", "2026-02-01T12:00:00.000000Z", "4.00", merchant="adv-x"),
            row("s4", "2026-02-01T12:00:00.000000Z", "8.00", card="adv-card-2"),
            row("a1", "2026-02-01T12:00:00.000001Z", "16.00"),
            row("r1", "2026-02-01T13:00:00.000000Z", "32.00", channel="atm"),  # s1..s3 on its 1h edge
        ],
    }


@pytest.fixture(scope="module")
def adversarial(small_world, tmp_path_factory):
    """The adversarial days landed in the module's world, ingested and featurized by the pipeline
    (real Dagster runs, real dbt); returns (dbt's rows of them, their bronze rows)."""
    from ml_assets.lib import paths, tables
    from ml_assets_tests.conftest import csv_bytes, run_job, write_landing

    root, definitions, instance = small_world
    for day, rows in _adversarial_rows().items():
        write_landing(root / "landing", "transactions", day, "part-adv.csv", csv_bytes(rows))
        if day == "2026-02-01":  # the retry: s2 delivered again, identical, in another file
            write_landing(root / "landing", "transactions", day, "part-adv-retry.csv", csv_bytes(rows[1:2]))
        result = run_job(definitions, "ingestion_job", instance=instance, partition=day)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
    days = (ADVERSARIAL_DAYS[0], ADVERSARIAL_DAYS[-1])
    result = run_job(definitions, "features_job", instance=instance, days=days)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    bronze = (
        pl.scan_delta(f"{paths.lake_uri()}/{tables.BRONZE['transactions']}")
        .filter(pl.col("transaction_id").str.starts_with("adv-"))
        .collect()
    )
    assert bronze.height == 10  # the retried delivery is one transaction
    dbt = _warehouse_features(
        tmp_path_factory.mktemp("adversarial") / "dbt.parquet", "transaction_id like 'adv-%'"
    )
    return dbt, bronze


def _adversarial_differences(features_module, dbt: pl.DataFrame, bronze: pl.DataFrame) -> dict[str, list]:
    """feature -> the transactions whose online value (by `features_module`, from the cards'
    history in bronze, as the registered pyfunc reads it) differs from dbt's."""
    from ml_assets.lib import paths
    from ml_assets.serving.mlflow_model import bronze_windows

    txs = features_module.transactions_of(bronze)
    windows, risk = bronze_windows(txs, PARAMS, paths.lake_uri(), None)
    online = features_module.batch_features(txs, windows, risk, PARAMS)
    logged = pl.DataFrame(
        [{"transaction_id": t.transaction_id} | f for t, f in zip(txs, online, strict=True)],
        schema={"transaction_id": pl.String} | dict.fromkeys(FEATURE_COLUMNS, pl.Float64),
    )
    both = dbt.join(logged, on="transaction_id", suffix="_online")
    assert both.height == dbt.height == len(txs)
    out = {}
    for column in FEATURE_COLUMNS:
        same = np.isclose(
            both[column].cast(pl.Float64).to_numpy(), both[f"{column}_online"].to_numpy(),
            rtol=1e-9, atol=1e-6, equal_nan=True,
        )  # fmt: skip
        if not same.all():
            out[column] = sorted(both.filter(~pl.Series(same))["transaction_id"])
    return out


def test_service_features_equal_dbt_features_on_an_adversarial_history(adversarial):
    """Same instants, window edges to the microsecond and a retried delivery: the online features
    equal dbt's, every feature of every transaction; and the history says what it should."""
    from ml_assets.serving import features

    dbt, bronze = adversarial
    assert _adversarial_differences(features, dbt, bronze) == {}
    f = {r["transaction_id"]: r for r in dbt.iter_rows(named=True)}
    assert [f[f"adv-s{i}"]["card_tx_count_1h"] for i in (1, 2, 3)] == [0, 0, 0]  # not each other's
    # 7d: e7 on the edge, h0 and d0; e7x a microsecond too old.
    assert (f["adv-s1"]["card_tx_count_7d"], f["adv-s1"]["card_amount_sum_7d"]) == (3, 15.0)
    assert (f["adv-h0"]["card_tx_count_1h"], f["adv-h0"]["card_amount_sum_1h"]) == (1, 7.0)  # e7, not e7x
    assert (f["adv-d0"]["card_tx_count_24h"], f["adv-d0"]["card_amount_sum_24h"]) == (2, 10.0)  # e7, h0
    assert f["adv-a1"]["card_tx_count_1h"] == 3 and f["adv-s4"]["card_tx_count_7d"] == 0
    assert (f["adv-r1"]["card_tx_count_1h"], f["adv-r1"]["card_amount_sum_1h"]) == (4, 1 + 2 + 4 + 16)


@pytest.mark.parametrize(
    "original, mismatch",
    [
        ("if not start <= p.ts < t:", "if not start <= p.ts <= t:"),  # the same instant as history
        ("if age <= span:", "if age < span:"),  # a window without its start
    ],
)
def test_the_adversarial_skew_test_fails_on_a_mismatched_online_window(adversarial, original, mismatch):
    """The test of the test: the online window comparison patched (`<` for `<=` or back) in a
    copy of ml_assets/serving/features.py makes the skew comparison above find differences. (The
    simulated day alone had no two transactions of a card at one instant: it passed `<=`.)"""
    import types

    from ml_assets.serving import features

    source = Path(features.__file__).read_text()
    assert source.count(original) == 1
    patched = types.ModuleType("patched_online_features")
    patched.__file__ = features.__file__
    sys.modules[patched.__name__] = patched  # dataclasses look their module up while decorating
    try:
        exec(compile(source.replace(original, mismatch), features.__file__, "exec"), patched.__dict__)  # noqa: S102
        dbt, bronze = adversarial
        differences = _adversarial_differences(patched, dbt, bronze)
    finally:
        del sys.modules[patched.__name__]
    assert differences, f"{mismatch!r} went unnoticed"
    assert "card_tx_count_1h" in differences
