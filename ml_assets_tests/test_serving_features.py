"""Online features equal dbt's: the pure function on hand-made cases, then the skew test on a
simulated world (the service replays a day, the warehouse has computed it)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from ml_assets.lib.features import FEATURE_COLUMNS
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
    assert np.isnan(as_vector(first)[FEATURE_COLUMNS.index("amount_to_card_avg")])
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


def _warehouse_features(day: date, out) -> pl.DataFrame:
    """dbt's transaction_features of `day`, read from the warehouse opened read-only.

    In a fresh process: the features job left the warehouse open read-write in this one
    (dagster-dbt's row counts), and DuckDB allows one configuration per file per process.
    """
    from ml_assets.lib import paths

    query = f"select * from transaction_features where event_date = date '{day}'"
    code = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        "con.sql(sys.argv[2]).write_parquet(sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", code, str(paths.warehouse_path()), query, str(out)], check=True)
    return pl.read_parquet(out)


def test_service_features_equal_dbt_features_on_a_simulated_world(small_world, tmp_path):
    """The small simulated world (24 days, ingested and featurized by the pipeline): its last day
    replayed through the service, in event-time order, gives dbt's features row by row."""
    from fastapi.testclient import TestClient

    from ml_assets.lib import paths, tables
    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import request_rows, shared_registry

    registry = shared_registry()
    settings = ServingSettings(
        tracking_uri=registry.tracking_uri,
        lake_uri=paths.lake_uri(),
        model_name=registry.register(aliases={"champion": 1}),
        history_until=LAST_DAY - timedelta(days=1),  # the state as it was when the last day began
    )
    bronze = pl.scan_delta(f"{paths.lake_uri()}/{tables.BRONZE['transactions']}")
    replay = bronze.filter(pl.col("event_date") == LAST_DAY).sort("event_time").collect()
    rows = request_rows(replay)
    service = Service(settings)
    with TestClient(create_app(service)) as client:
        for start in range(0, len(rows), 100):  # in event-time order, in batches
            response = client.post("/predict", json={"transactions": rows[start : start + 100]})
            assert response.status_code == 200, response.text
    # Leaving the client shut the service down, which flushed the inference log.

    logged = pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}")
    dbt = _warehouse_features(LAST_DAY, tmp_path / "dbt_features.parquet")
    assert logged.height == dbt.height == replay.height > 1000
    both = dbt.join(logged, on="transaction_id", suffix="_online")
    assert both.height == dbt.height
    for column in FEATURE_COLUMNS:
        batch = both[column].cast(pl.Float64).to_numpy()
        online = both[f"{column}_online"].to_numpy()
        same = np.isclose(batch, online, rtol=1e-9, atol=1e-6, equal_nan=True)  # epoch() is a double
        differ = both.filter(~pl.Series(same)).select("transaction_id", column, f"{column}_online")
        assert same.all(), (column, differ)
    # The day exercises what the features are about, or the equality above would say little.
    assert (both["card_tx_count_24h"] > 0).sum() > 100
    assert both["seconds_since_card_last_tx"].null_count() > 0
    assert (both["merchant_labels_window"] > 0).sum() > 100
    assert both["is_new_card_device"].null_count() > 0
