"""dbt features on hand-built histories, through the real ingestion and features jobs (DuckDB,
Delta, dbt), and the leakage test catching a planted leak."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ml_assets.lib import paths
from ml_assets.lib.dbt_project import DBT_PROJECT_DIR
from ml_assets_tests.conftest import csv_bytes, label, load_defs, run_job, scoped_environ, tx, write_landing

D = "2026-01-20"
DAYS = ("2026-01-15", "2026-01-20")


def _tx(i: int, day: str, time: str, card: str = "c1", **kw) -> dict:
    return tx(i, day=day, transaction_id=f"t{i}", event_time=f"{day}T{time}Z", card_id=card, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six days of hand-made history, ingested and featurized once for the module's tests."""
    root = tmp_path_factory.mktemp("features") / "data"
    with scoped_environ(ML_ASSETS_DATA_DIR=str(root)):
        landing = root / "landing"
        rows = {
            "2026-01-15": [
                _tx(1, "2026-01-15", "09:00:00", merchant_id="m1"),
                _tx(2, "2026-01-15", "09:00:00", card="c2", merchant_id="m1"),
            ],
            "2026-01-16": [_tx(3, "2026-01-16", "09:00:00", card="c3", merchant_id="m1")],
            "2026-01-19": [_tx(9, "2026-01-19", "08:00:00", card="c9", merchant_id="m1")],
            D: [
                _tx(10, D, "10:00:00", channel="ecom", device_id="d1", amount="10.00"),
                _tx(11, D, "10:30:00", channel="ecom", device_id="d1", amount="20.00"),
                _tx(12, D, "11:00:00", amount="30.00"),
                _tx(13, D, "11:00:00", amount="40.00", country="DE"),  # same instant as t12
                _tx(14, D, "12:00:00.500000", amount="100.00", channel="ecom", device_id="d2"),
                _tx(15, D, "13:00:00", card="c5", merchant_id="m1"),
            ],
        }
        labels = {
            # t1 (m1) labelled fraud on 01-18: counts for 01-19 and 01-20, not for 01-18 itself.
            "2026-01-18": [label(1, day="2026-01-18", transaction_id="t1", is_fraud="1")],
            # t2 (m1) fraud on 01-17, revised to legit on 01-19 (the latest label wins from 01-20 on).
            "2026-01-17": [label(2, day="2026-01-17", transaction_id="t2", is_fraud="1")],
            "2026-01-19": [label(2, day="2026-01-19", transaction_id="t2", is_fraud="0")],
            # A label made on the transaction's own day is not known before it.
            D: [label(3, day=D, transaction_id="t3", is_fraud="1")],
        }
        for day, r in rows.items():
            write_landing(landing, "transactions", day, "p.csv", csv_bytes(r))
        for day, r in labels.items():
            write_landing(landing, "labels", day, "p.csv", csv_bytes(r))
        definitions = load_defs()
        assert run_job(definitions, "ingestion_job", days=DAYS).all_events  # empty days fail a gate; fine
        result = run_job(definitions, "features_job", days=DAYS)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        with duckdb.connect(str(paths.warehouse_path()), read_only=True) as con:
            features = con.sql("select * from transaction_features").pl()
        yield {r["transaction_id"]: r for r in features.iter_rows(named=True)}, root


def test_velocity_windows_at_their_edges(world):
    f, _ = world
    assert f["t10"]["card_tx_count_1h"] == 0
    # t12 at 11:00 sees 10:00 (exactly 1 h before: inside) and 10:30, not t13 (same instant).
    assert (f["t12"]["card_tx_count_1h"], f["t12"]["card_amount_sum_1h"]) == (2, 30.0)
    assert (f["t13"]["card_tx_count_1h"], f["t13"]["card_amount_sum_1h"]) == (2, 30.0)
    # t14 at 12:00:00.5: 11:00 is more than 1 h before; the day and week see t1, t10..t13.
    assert (f["t14"]["card_tx_count_1h"], f["t14"]["card_tx_count_24h"]) == (0, 4)
    assert (f["t14"]["card_tx_count_7d"], f["t14"]["card_amount_sum_7d"]) == (5, 12.5 + 100.0)


def test_history_relative_features(world):
    f, _ = world
    assert f["t10"]["seconds_since_card_last_tx"] == pytest.approx((5 * 24 + 1) * 3600)  # t1, 5 days earlier
    assert f["t13"]["seconds_since_card_last_tx"] == 1800  # 10:30, not t12 at the same instant
    assert f["t14"]["amount_to_card_avg"] == pytest.approx(100.0 / ((12.5 + 10 + 20 + 30 + 40) / 5))


def test_first_time_flags(world):
    f, _ = world
    assert f["t10"]["is_new_card_device"] == 1 and f["t11"]["is_new_card_device"] == 0
    assert f["t14"]["is_new_card_device"] == 1  # d2 is new
    assert f["t12"]["is_new_card_device"] is None  # no device: not a new one
    assert f["t13"]["is_new_card_country"] == 1 and f["t12"]["is_new_card_country"] == 0
    assert f["t10"]["is_new_card_channel"] == 1 and f["t12"]["is_new_card_channel"] == 0


def test_merchant_risk_uses_only_matured_labels(world):
    f, _ = world
    rate = lambda frauds, labels: (frauds + 0.01 * 20) / (labels + 20)  # noqa: E731
    # 01-16: no label made before it.
    assert f["t3"]["merchant_labels_window"] == 0
    # 01-19: t2's fraud label (01-17) and t1's (01-18) are known; t2's revision (01-19) is not yet.
    assert (f["t9"]["merchant_labels_window"], f["t9"]["merchant_fraud_rate"]) == (
        2,
        pytest.approx(rate(2, 2)),
    )
    # 01-20: t2's revision to legit now wins; t3's label made on 01-20 is not known yet.
    assert (f["t15"]["merchant_labels_window"], f["t15"]["merchant_fraud_rate"]) == (
        2,
        pytest.approx(rate(1, 2)),
    )


def test_leakage_test_catches_a_planted_leak(world, tmp_path):
    """Let the card windows see the transaction itself: dbt's leakage test must fail."""
    _, root = world
    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    model = project / "models" / "features" / "transaction_features.sql"
    sql = model.read_text()
    assert "and p.event_ts < c.event_ts" in sql
    model.write_text(sql.replace("and p.event_ts < c.event_ts", "and p.event_ts <= c.event_ts"))
    dbt = str(Path(sys.executable).parent / "dbt")
    vars_ = {"min_date": "2026-01-15", "max_date": "2026-01-20", "leakage_test_sample_modulo": 1}
    vars_ |= {"lake_uri": str(root / "lake"), "warehouse": str(tmp_path / "leak.duckdb")}
    out = subprocess.run(
        [dbt, "build", "--profiles-dir", ".", "--vars", json.dumps(vars_)],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "FAIL" in out.stdout and "transaction_features_use_only_the_past" in out.stdout
