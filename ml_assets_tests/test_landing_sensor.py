"""The landing sensor: requests new and re-delivered days, and never what ingestion already took in.

What is done is read from the lake (each ingested day's landing fingerprint), so these tests
ingest through the real job on a temp data root and tick the sensor with no cursor at all.
"""

from __future__ import annotations

import os

import dagster as dg

from ml_assets.defs.ingestion.sensors import landing_sensor
from ml_assets.defs.resources import LakeResource, LandingResource
from ml_assets.lib import paths
from ml_assets_tests.conftest import csv_bytes, label, load_defs, run_job, tx, write_landing


def _tick():
    resources = {"landing": LandingResource(root=str(paths.landing_dir())), "lake": LakeResource.from_env()}
    return landing_sensor(dg.build_sensor_context(resources=resources))


def _requested(result) -> list[tuple]:
    """(asset, single day, range start, range end) of every run request."""
    rows = [
        (
            r.asset_selection[0].to_user_string(),
            r.partition_key,
            r.tags.get("dagster/asset_partition_range_start"),
            r.tags.get("dagster/asset_partition_range_end"),
        )
        for r in result.run_requests or []
    ]
    return sorted(rows, key=str)


def _ingest(request, instance) -> None:
    """Run what the sensor asked for, as the daemon would launch it."""
    days = (
        request.tags.get("dagster/asset_partition_range_start"),
        request.tags.get("dagster/asset_partition_range_end"),
    )
    run_job(load_defs(), "ingestion_job", instance=instance, partition=request.partition_key,
            days=days if days[0] else None)  # fmt: skip


def test_backlog_becomes_one_run_per_consecutive_range(data_dir):
    landing = data_dir / "landing"
    for day in ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-07"]:
        write_landing(landing, "transactions", day, "p.csv", csv_bytes([tx(1, day=day)]))
    write_landing(landing, "labels", "2026-01-04", "p.csv", csv_bytes([label(1, day="2026-01-04")]))
    assert _requested(_tick()) == [
        ("raw_labels", "2026-01-04", None, None),
        ("raw_transactions", "2026-01-07", None, None),
        ("raw_transactions", None, "2026-01-01", "2026-01-03"),
    ]


def test_what_ingestion_took_in_is_never_asked_again_even_without_a_cursor(data_dir):
    """The state of `make run` then `make dev`, or of a reset DAGSTER_HOME: days already ingested
    are not requested (the sensor has no cursor here at all); a re-delivered file, or a new day,
    is; files upstream is still writing, and hidden files, are not deliveries."""
    landing = data_dir / "landing"
    instance = dg.DagsterInstance.ephemeral()
    path = write_landing(landing, "transactions", "2026-01-01", "p.csv", csv_bytes([tx(1, day="2026-01-01")]))
    first = _tick()
    (request,) = first.run_requests
    again = _tick()  # not ingested yet: asked again, with the same run key (Dagster runs it once)
    assert [r.run_key for r in again.run_requests] == [request.run_key]

    _ingest(request, instance)
    done = _tick()
    assert done.run_requests == [] and "every landing day is ingested" in done.skip_reason.skip_message

    write_landing(landing, "transactions", "2026-01-01", "q.csv.tmp", b"partial")
    write_landing(landing, "transactions", "2026-01-01", ".q.csv", b"hidden")
    assert _tick().run_requests == []

    # A re-delivered file (new content) requests its day again, with a new run key.
    path.write_bytes(csv_bytes([tx(1, day="2026-01-01"), tx(2, day="2026-01-01")]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    redelivered = _tick()
    assert _requested(redelivered) == [("raw_transactions", "2026-01-01", None, None)]
    assert redelivered.run_requests[0].run_key != request.run_key

    # A new day requests only that day, beside the re-delivery not yet ingested.
    write_landing(landing, "transactions", "2026-01-03", "p.csv", csv_bytes([tx(3, day="2026-01-03")]))
    assert _requested(_tick()) == [
        ("raw_transactions", "2026-01-01", None, None),
        ("raw_transactions", "2026-01-03", None, None),
    ]
    for request in _tick().run_requests:
        _ingest(request, instance)
    assert _tick().run_requests == []


def test_a_run_killed_before_it_recorded_the_day_is_asked_again(data_dir):
    """The fingerprint is written after the day's data: if the record is missing (the run died
    in between), the day is not done, and the sensor asks for it again."""
    import shutil

    landing = data_dir / "landing"
    write_landing(landing, "transactions", "2026-01-05", "p.csv", csv_bytes([tx(1, day="2026-01-05")]))
    (request,) = _tick().run_requests
    _ingest(request, dg.DagsterInstance.ephemeral())
    assert _tick().run_requests == []
    shutil.rmtree(data_dir / "lake" / "ingestion" / "delivered" / "transactions")
    assert [r.run_key for r in _tick().run_requests] == [request.run_key]


def test_folders_outside_the_partitions_are_ignored(data_dir):
    landing = data_dir / "landing"
    write_landing(landing, "transactions", "2025-12-31", "p.csv", csv_bytes([tx(1, day="2025-12-31")]))
    (landing / "transactions" / "date=garbage").mkdir()
    assert _tick().run_requests == []
