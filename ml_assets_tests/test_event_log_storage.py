"""The local instance's event log (ml_assets/event_log_storage.py, named by dagster.local.yaml)
stores a batch of asset events in one transaction per database: the same rows as Dagster's own
SQLite storage writes event by event, and the batch path really runs (Dagster falls back to one by
one, and says so on stderr, when a batch write raises)."""

import os
import shutil
import sqlite3

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from ml_assets.lib.paths import REPO_ROOT
from ml_assets_tests.conftest import scoped_environ

DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-11")
RANGE = {
    "dagster/asset_partition_range_start": "2026-01-01",
    "dagster/asset_partition_range_end": "2026-01-10",
}


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
def daily(context: dg.AssetExecutionContext) -> None:
    for i, key in enumerate(context.partition_keys):
        context.add_asset_metadata({"rows": i, "table": dg.MetadataValue.md(f"| day |\n|---|\n| {key} |")},
                                   partition_key=key)  # fmt: skip


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[daily])
def downstream(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    for key in context.partition_keys:
        context.add_asset_metadata({"day": key}, partition_key=key)
    return dg.MaterializeResult(metadata={"days": len(context.partition_keys)})


@dg.asset_check(asset=daily, partitions_def=DAYS)
def daily_has_rows(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True, metadata={"days": len(context.partition_keys)})


JOB = dg.define_asset_job("days_job")
DEFS = dg.Definitions(assets=[daily, downstream], asset_checks=[daily_has_rows], jobs=[JOB])

# What each table of the index (and the run's own database) holds, without ids and clocks.
INDEX_ROWS = {
    "event_logs": "select dagster_event_type, asset_key, partition, step_key from event_logs",
    "asset_keys": "select asset_key, last_run_id is not null, cached_status_data is null from asset_keys",
    # A data version hashes the run's own identity: its tag is compared by name.
    "asset_event_tags": "select asset_key, key, iif(key like '%version%', '', value) from asset_event_tags",
    "asset_check_executions": "select asset_key, check_name, partition, execution_status from "
    "asset_check_executions",
}


def _run(home, batched: bool, capfd) -> tuple[dict, list, str]:
    """Run the job over the range on a fresh instance; what its databases hold, the run's own
    events in order (type, partition, metadata) and the stderr of the run."""
    home.mkdir()
    if batched:
        shutil.copy(REPO_ROOT / "dagster.local.yaml", home / "dagster.yaml")
    else:
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {"DAGSTER_HOME": str(home)} | ({} if batched else {"DAGSTER_EVENT_BATCH_SIZE": "0"})
    with scoped_environ(**env), dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        storage = type(instance.event_log_storage).__name__
        assert storage == ("BatchingSqliteEventLogStorage" if batched else "SqliteEventLogStorage")
        assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == ("1000" if batched else "0")  # the table's default
        result = DEFS.resolve_job_def("days_job").execute_in_process(instance=instance, tags=RANGE)
        assert result.success
        events = [
            (e.dagster_event_type, e.dagster_event.partition, e.asset_materialization.metadata)
            if e.asset_materialization else (e.dagster_event_type, e.dagster_event.partition, None)
            for e in instance.all_logs(result.run_id)
            if e.is_dagster_event
        ]  # fmt: skip
        days = DAYS.get_partition_keys()
        statuses = instance.get_status_by_partition(dg.AssetKey("downstream"), days, DAYS)
        assert set(statuses.values()) == {dg.AssetPartitionStatus.MATERIALIZED}, statuses
    index = sqlite3.connect(home / "history" / "runs" / "index.db")
    rows = {table: sorted(map(tuple, index.execute(query)), key=repr) for table, query in INDEX_ROWS.items()}
    index.close()
    return rows, events, capfd.readouterr().err


def test_batched_event_log_stores_what_dagsters_own_stores(tmp_path, capfd):
    plain_rows, plain_events, _ = _run(tmp_path / "plain", False, capfd)
    rows, events, err = _run(tmp_path / "batched", True, capfd)
    assert "Exception while storing event batch" not in err, err
    materializations = [e for e in events if e[0] == dg.DagsterEventType.ASSET_MATERIALIZATION]
    assert len(materializations) == 20 and materializations[0][2]["rows"] == dg.IntMetadataValue(0)
    assert events == plain_events
    for table, expected in plain_rows.items():
        assert rows[table] == expected, table
    # every day of both assets planned, then materialized, as the UI shows them
    assert len([r for r in rows["event_logs"] if r[0] == "ASSET_MATERIALIZATION_PLANNED"]) == 20


@pytest.mark.parametrize("value", ["0", "7"])
def test_a_batch_size_given_is_kept(tmp_path, value):
    shutil.copy(REPO_ROOT / "dagster.local.yaml", tmp_path / "dagster.yaml")
    with scoped_environ(DAGSTER_HOME=str(tmp_path), DAGSTER_EVENT_BATCH_SIZE=value):
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
            assert instance.event_log_storage is not None
        assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == value
