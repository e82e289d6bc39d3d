"""The lake on object storage: the real LakeResource and ingestion job against an S3 server on loopback.

The server is moto's, in its own process: deltalake holds the GIL in some blocking calls
(`is_deltatable`), so an in-process (threaded) server would deadlock with it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import date

import polars as pl
import pytest

from ml_assets.defs.resources import LakeResource
from ml_assets.lib import paths, tables
from ml_assets_tests.conftest import check_results, csv_bytes, load_defs, run_job, tx, write_landing

DAY = date(2026, 1, 15)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free 127.0.0.1 port, for the tests of this module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"moto server did not start on {endpoint}") from None
            time.sleep(0.1)
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def bucket(s3_endpoint):
    """A fresh bucket; returns (name, storage options, a boto3 client)."""
    import boto3

    name = f"lake-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, **_boto(CREDENTIALS))
    client.create_bucket(Bucket=name)
    options = {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
        # Commits are PUTs with If-None-Match: * (delta-rs 1.6's default on S3, stated here).
        "conditional_put": "etag",
    }
    return name, options, client


def _boto(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": credentials["AWS_REGION"],
    }


def _keys(client, bucket: str, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def _rows(day: date, n: int, writer: str = "A") -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"tx-{i}" for i in range(n)], "writer": [writer] * n, "day": [day] * n},
        schema={"id": pl.String, "writer": pl.String, "day": pl.Date},
    )


SCHEMA = dict(_rows(DAY, 0).schema)


def test_lake_storage_options_come_from_json_in_the_environment(monkeypatch):
    var = "ML_ASSETS_LAKE_STORAGE_OPTIONS"
    monkeypatch.delenv(var, raising=False)
    assert paths.lake_storage_options() == {}
    monkeypatch.setenv(var, '{"AWS_REGION": "eu-west-1", "conditional_put": "etag"}')
    assert paths.lake_storage_options() == {"AWS_REGION": "eu-west-1", "conditional_put": "etag"}
    for bad, why in [("{AWS_REGION: x}", "not valid JSON"), ('{"AWS_ALLOW_HTTP": true}', "of strings")]:
        monkeypatch.setenv(var, bad)
        with pytest.raises(ValueError, match=why):
            paths.lake_storage_options()


def test_lake_writes_reads_replaces_and_time_travels_on_s3(bucket):
    name, options, client = bucket
    lake = LakeResource(root=f"s3://{name}/lake", storage_options=options)
    other = date(2026, 1, 16)
    assert not lake.exists("bronze/t") and lake.version("bronze/t") is None
    assert lake.read_partitions("bronze/t", "day", [DAY]).is_empty()

    first = lake.write_partitions(
        "bronze/t", pl.concat([_rows(DAY, 3), _rows(other, 2)]), partition_column="day",
        partitions=[DAY, other], schema=SCHEMA,
    )  # fmt: skip
    assert lake.exists("bronze/t") and lake.version("bronze/t") == first
    assert any(k.startswith("lake/bronze/t/day=2026-01-15/") for k in _keys(client, name, "lake/bronze/t/"))

    second = lake.write_partitions(
        "bronze/t", _rows(DAY, 5, writer="B"), partition_column="day", partitions=[DAY], schema=SCHEMA
    )
    assert second == first + 1
    today = lake.read_partitions("bronze/t", "day", [DAY])
    assert (today.height, set(today["writer"])) == (5, {"B"})  # the day replaced, nothing duplicated
    assert lake.read_partitions("bronze/t", "day", [other]).height == 2  # the other day untouched
    before = lake.scan("bronze/t", version=first).filter(pl.col("day") == DAY).collect()
    assert (before.height, set(before["writer"])) == (3, {"A"})  # time travel

    v1 = lake.replace_table("gold/t", _rows(DAY, 4))
    v2 = lake.replace_table("gold/t", _rows(DAY, 2).with_columns(score=pl.lit(0.5)))
    assert v2 == v1 + 1 and lake.version("gold/t") == v2
    assert lake.scan("gold/t").collect().columns == ["id", "writer", "day", "score"]
    assert lake.scan("gold/t").collect().height == 2
    assert lake.scan("gold/t", version=v1).collect().height == 4
    assert _keys(client, name, "lake/gold/t/_delta_log/")


@pytest.mark.parametrize("existing", [False, True], ids=["new table", "existing day"])
def test_a_writer_that_loses_the_commit_race_fails_and_commits_nothing(bucket, existing, monkeypatch):
    """Two writers replace the same day (the same ids, as a re-run would write them). Writer A
    reads the table and is held just before its commit while B commits the day; A's real commit
    (a conditional PUT of the same log entry) then fails with CommitFailedError, every run, and
    commits nothing: the day holds B's rows only, never both frames.
    """
    from deltalake.exceptions import CommitFailedError

    from ml_assets.defs import resources

    name, options, _ = bucket
    lake = LakeResource(root=f"s3://{name}/lake", storage_options=options)
    if existing:
        lake.write_partitions(
            "t", _rows(DAY, 100, "old"), partition_column="day", partitions=[DAY], schema=SCHEMA
        )
    held, release = threading.Event(), threading.Event()

    def hold_a(stage: str, table: str) -> None:
        if stage == "before" and threading.current_thread().name == "A":
            held.set()
            assert release.wait(120)

    monkeypatch.setattr(resources, "commit_hook", hold_a)
    outcome: dict[str, int | Exception] = {}

    def write(writer: str) -> None:
        try:
            outcome[writer] = lake.write_partitions(
                "t", _rows(DAY, 1000, writer), partition_column="day", partitions=[DAY], schema=SCHEMA
            )
        except Exception as e:  # kept, to assert which error it was
            outcome[writer] = e

    a = threading.Thread(target=write, args=("A",), name="A")
    a.start()
    assert held.wait(120)  # A has read the table (created it, when new): B commits meanwhile
    write("B")
    release.set()
    a.join(timeout=120)
    assert isinstance(outcome["B"], int), outcome
    assert isinstance(outcome["A"], CommitFailedError), outcome
    day = lake.read_partitions("t", "day", [DAY])
    assert day.height == 1000 and day["id"].n_unique() == 1000
    assert set(day["writer"]) == {"B"}
    assert lake.version("t") == outcome["B"]


def test_ingestion_job_ingests_a_landing_day_into_s3(data_dir, bucket, monkeypatch):
    name, options, client = bucket
    monkeypatch.setenv("ML_ASSETS_LAKE_URI", f"s3://{name}/lake")
    monkeypatch.setenv("ML_ASSETS_LAKE_STORAGE_OPTIONS", json.dumps(options))
    day = DAY.isoformat()
    rows = [tx(i, day=day) for i in range(1, 40)] + [tx(99, day=day, channel="bus")]
    write_landing(data_dir / "landing", "transactions", day, "part-0.csv", csv_bytes(rows))

    result = run_job(load_defs(), "ingestion_job", partition=day)

    meta = result.asset_materializations_for_node("raw_transactions")[0].metadata
    assert meta["dagster/uri"].value == f"s3://{name}/lake/bronze/transactions"
    assert (meta["rows_ingested"].value, meta["rows_quarantined"].value) == (39, 1)
    lake = LakeResource.from_env()
    bronze = lake.read_partitions(tables.BRONZE["transactions"], "event_date", [DAY])
    quarantine = lake.read_partitions(tables.QUARANTINE["transactions"], "event_date", [DAY])
    assert bronze.height == 39 and bronze["transaction_id"].n_unique() == 39
    assert quarantine["line"].to_list() == [41] and "channel" in quarantine["reasons"][0][0]
    assert meta["delta_version"].value == lake.version(tables.BRONZE["transactions"])
    # The checks read the same tables from S3: the share (1 of 40) is under the 5% limit.
    checks = check_results(result)
    assert checks["raw_transactions:quarantined_share_within_limit"].passed
    assert not checks["raw_transactions:nothing_quarantined"].passed
    assert _keys(client, name, "lake/bronze/transactions/event_date=2026-01-15/")
    assert not (data_dir / "lake").exists()  # nothing went to the local default
