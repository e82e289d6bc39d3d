"""The ingestion assets and their checks, run through Dagster on real Delta tables in a temp dir."""

from __future__ import annotations

import hashlib

import polars as pl
import pytest

from ml_assets.lib import tables
from ml_assets_tests.conftest import (
    check_results,
    csv_bytes,
    label,
    load_defs,
    run_job,
    tx,
    write_landing,
)

DAY = "2026-01-15"


def _lake(data_dir, table: str) -> pl.DataFrame:
    return pl.read_delta(str(data_dir / "lake" / table))


def _landing_hashes(data_dir) -> dict[str, str]:
    return {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((data_dir / "landing").rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def feed(data_dir):
    """One day with good rows, a broken row, a re-delivered row, an unreadable file and ignored files."""
    landing = data_dir / "landing"
    good = [tx(i, day=DAY) for i in range(1, 40)]
    write_landing(landing, "transactions", DAY, "part-0.csv", csv_bytes(good[:30] + [tx(99, channel="bus")]))
    write_landing(landing, "transactions", DAY, "part-1.csv", csv_bytes(good[29:]))  # tx-30 re-delivered
    write_landing(landing, "transactions", DAY, "part-2.csv", b"\xff\xfe not text")
    write_landing(landing, "transactions", DAY, "part-3.csv.tmp", b"half a file")
    write_landing(landing, "transactions", DAY, ".part-4.csv", csv_bytes([tx(77)]))
    write_landing(landing, "labels", DAY, "labels.csv", csv_bytes([label(i, day=DAY) for i in range(1, 5)]))
    return data_dir


def test_ingestion_writes_bronze_quarantine_and_metadata(feed):
    before = _landing_hashes(feed)
    result = run_job(load_defs(), "ingestion_job", partition=DAY)
    assert _landing_hashes(feed) == before  # landing is never touched

    bronze = _lake(feed, tables.BRONZE["transactions"])
    assert bronze.height == 39 and bronze["transaction_id"].n_unique() == 39
    quarantine = _lake(feed, tables.QUARANTINE["transactions"]).sort("source_file")
    assert quarantine.select("source_file", "level").rows() == [
        ("part-0.csv", "row"),
        ("part-2.csv", "file"),
    ]

    mats = {
        m.asset_key.to_user_string(): m for m in result.asset_materializations_for_node("raw_transactions")
    }
    meta = mats["raw_transactions"].metadata
    assert mats["raw_transactions"].partition == DAY
    assert {k: meta[k].value for k in ["rows_in", "rows_ingested", "rows_quarantined", "files_quarantined",
                                       "duplicates_dropped", "files_read", "files_ignored"]} == {
        "rows_in": 42, "rows_ingested": 39, "rows_quarantined": 1, "files_quarantined": 1,
        "duplicates_dropped": 1, "files_read": 3, "files_ignored": 2,
    }  # fmt: skip
    assert meta["delta_version"].value == 1  # version 0 creates the table, empty (LakeResource)
    assert [c.name for c in meta["dagster/column_schema"].value.columns][:2] == [
        "transaction_id",
        "event_time",
    ]
    assert "ignored: temporary file" in meta["files"].value

    checks = check_results(result)
    assert checks["raw_transactions:nothing_quarantined"].passed is False  # WARN: something was quarantined
    assert checks["raw_transactions:nothing_quarantined"].metadata["quarantine_records"].value == 2
    assert (
        "channel must be one of" in checks["raw_transactions:nothing_quarantined"].metadata["examples"].value
    )
    # 1 bad row + the unreadable file (counted as one row) out of 41: above a 2% limit, below 5%.
    assert checks["raw_transactions:quarantined_share_within_limit"].passed is True
    assert checks["raw_transactions:partition_not_empty"].passed is True
    assert checks["raw_labels:labels_match_transactions"].passed is True
    assert result.success


def test_rematerializing_is_idempotent(feed):
    definitions = load_defs()
    run_job(definitions, "ingestion_job", partition=DAY)
    first = _lake(feed, tables.BRONZE["transactions"]).sort("transaction_id")
    first_q = _lake(feed, tables.QUARANTINE["transactions"]).sort("source_file", "line")
    run_job(definitions, "ingestion_job", partition=DAY)
    assert _lake(feed, tables.BRONZE["transactions"]).sort("transaction_id").equals(first)
    assert _lake(feed, tables.QUARANTINE["transactions"]).sort("source_file", "line").equals(first_q)


def test_a_bad_day_is_blocked_and_the_good_rows_stay(feed):
    config = {
        "ops": {
            "raw_transactions_quarantined_share_within_limit": {"config": {"max_quarantined_share": 0.02}}
        }
    }
    result = run_job(load_defs(), "ingestion_job", partition=DAY, run_config=config)
    gate = check_results(result)["raw_transactions:quarantined_share_within_limit"]
    assert gate.passed is False and gate.metadata["days_over_limit"].value == 1
    assert not result.success  # the blocking gate marks the run failed: the intended signal
    assert _lake(feed, tables.BRONZE["transactions"]).height == 39  # what was written stays


def test_empty_day_fails_the_blocking_check(data_dir):
    result = run_job(load_defs(), "ingestion_job", partition="2026-01-20")
    assert check_results(result)["raw_transactions:partition_not_empty"].passed is False
    assert not result.success


def test_a_range_of_days_in_one_run_records_each_day(data_dir):
    for day in ["2026-01-15", "2026-01-16", "2026-01-17"]:
        write_landing(
            data_dir / "landing",
            "transactions",
            day,
            "p.csv",
            csv_bytes([tx(i, day=day, transaction_id=f"t{day}-{i}") for i in range(int(day[-2:]))]),
        )
    result = run_job(load_defs(), "ingestion_job", days=("2026-01-15", "2026-01-17"))
    mats = {
        m.partition: m.metadata["rows_ingested"].value
        for m in result.asset_materializations_for_node("raw_transactions")
    }
    assert mats == {"2026-01-15": 15, "2026-01-16": 16, "2026-01-17": 17}
    assert _lake(data_dir, tables.BRONZE["transactions"]).height == 48
    assert result.success


def test_a_transaction_id_seen_on_another_day_conflicts(data_dir):
    for day in ["2026-01-15", "2026-01-16"]:
        rows = [tx(i, day=day, transaction_id=f"t{day}-{i}") for i in range(30)] + [
            tx(1, day=day, transaction_id="same")
        ]
        write_landing(data_dir / "landing", "transactions", day, "p.csv", csv_bytes(rows))
    run_job(load_defs(), "ingestion_job", days=("2026-01-15", "2026-01-16"))
    bronze = _lake(data_dir, tables.BRONZE["transactions"])
    assert bronze.filter(pl.col("transaction_id") == "same")["event_date"].cast(str).to_list() == [
        "2026-01-15"
    ]
    q = _lake(data_dir, tables.QUARANTINE["transactions"])
    assert "already ingested for event_date 2026-01-15" in q["reasons"][0][0]


def test_every_check_of_a_day_ends_evaluated_for_that_day(feed):
    """Dagster plans a daily asset's checks for the run's day: each must record its result for that
    day too. One that recorded it for no partition (an unpartitioned check) left the day's record
    planned for ever, and declarative automation, which waits for the day's blocking checks, never
    built the day's features (found by the stack's end-to-end test)."""
    import dagster as dg

    instance = dg.DagsterInstance.ephemeral()
    definitions = load_defs()
    assert run_job(definitions, "ingestion_job", instance=instance, partition=DAY).success
    job = definitions.resolve_job_def("ingestion_job")
    checks = [key for key in job.asset_layer.asset_graph.asset_check_keys]
    assert dg.AssetCheckKey(dg.AssetKey("raw_transactions"), "transaction_id_unique") in checks
    for key in checks:
        (record,) = instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
        assert record.status.value in ("SUCCEEDED", "FAILED"), (key, record.status)
        assert record.partition == DAY, key
