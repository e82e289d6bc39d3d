"""The landing sensor: requests new and re-delivered days once, and never misses or repeats one."""

from __future__ import annotations

import os

import dagster as dg

from ml_assets.defs.ingestion.sensors import landing_sensor
from ml_assets.defs.resources import LandingResource
from ml_assets_tests.conftest import csv_bytes, label, tx, write_landing


def _tick(root, cursor=None):
    context = dg.build_sensor_context(cursor=cursor, resources={"landing": LandingResource(root=str(root))})
    result = landing_sensor(context)
    return result, result.cursor


def _requested(result) -> list[tuple]:
    """(asset, single day, range start, range end) of every run request."""
    rows = [
        (
            r.asset_selection[0].to_user_string(),
            r.partition_key,
            r.tags.get("dagster/asset_partition_range_start"),
            r.tags.get("dagster/asset_partition_range_end"),
        )
        for r in result.run_requests
    ]
    return sorted(rows, key=str)


def test_backlog_becomes_one_run_per_consecutive_range(tmp_path):
    for day in ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-07"]:
        write_landing(tmp_path, "transactions", day, "p.csv", csv_bytes([tx(1, day=day)]))
    write_landing(tmp_path, "labels", "2026-01-04", "p.csv", csv_bytes([label(1, day="2026-01-04")]))
    result, _ = _tick(tmp_path)
    assert _requested(result) == [
        ("raw_labels", "2026-01-04", None, None),
        ("raw_transactions", "2026-01-07", None, None),
        ("raw_transactions", None, "2026-01-01", "2026-01-03"),
    ]


def test_nothing_new_means_no_run_and_redelivery_means_one(tmp_path):
    path = write_landing(
        tmp_path, "transactions", "2026-01-01", "p.csv", csv_bytes([tx(1, day="2026-01-01")])
    )
    first, cursor = _tick(tmp_path)
    assert len(first.run_requests) == 1
    again, cursor = _tick(tmp_path, cursor)
    assert again.run_requests == [] and again.skip_reason is not None

    # Upstream's temporary files and hidden files are not deliveries.
    write_landing(tmp_path, "transactions", "2026-01-01", "q.csv.tmp", b"partial")
    write_landing(tmp_path, "transactions", "2026-01-01", ".q.csv", b"hidden")
    still, cursor = _tick(tmp_path, cursor)
    assert still.run_requests == []

    # A re-delivered file (new content) requests its day again, with a new run key.
    path.write_bytes(csv_bytes([tx(1, day="2026-01-01"), tx(2, day="2026-01-01")]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    redelivered, cursor = _tick(tmp_path, cursor)
    assert _requested(redelivered) == [("raw_transactions", "2026-01-01", None, None)]
    assert redelivered.run_requests[0].run_key != first.run_requests[0].run_key

    # A new day requests only that day.
    write_landing(tmp_path, "transactions", "2026-01-02", "p.csv", csv_bytes([tx(1, day="2026-01-02")]))
    new_day, _ = _tick(tmp_path, cursor)
    assert _requested(new_day) == [("raw_transactions", "2026-01-02", None, None)]


def test_a_failed_tick_repeats_the_same_run_keys(tmp_path):
    """The cursor is saved only when a tick succeeds: a retry asks again, with the same run keys,
    which Dagster deduplicates, so a delivery is neither missed nor run twice."""
    write_landing(tmp_path, "transactions", "2026-01-05", "p.csv", csv_bytes([tx(1, day="2026-01-05")]))
    first, _ = _tick(tmp_path)
    retry, _ = _tick(tmp_path)  # as if `first`'s cursor had been lost
    assert [r.run_key for r in retry.run_requests] == [r.run_key for r in first.run_requests]


def test_folders_outside_the_partitions_are_ignored(tmp_path):
    write_landing(tmp_path, "transactions", "2025-12-31", "p.csv", csv_bytes([tx(1, day="2025-12-31")]))
    (tmp_path / "transactions" / "date=garbage").mkdir()
    result, _ = _tick(tmp_path)
    assert result.run_requests == []
