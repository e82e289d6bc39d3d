"""The local instance's event log (dagster.local.yaml): Dagster's SQLite storage, writing a batch of
events in one transaction per database instead of one per event.

Dagster's SQLite event log opens an engine, a connection and a transaction for every event, on the
run's database and again on the index, and closes them after it; the last connection to close
checkpoints the write-ahead log. A run over a range of days writes an event per asset and day
(the day's materialization, with its metadata) and as many "planned" events before it: ~800 in
`make run`'s 45 days, where storing them cost more than a quarter of the pipeline's own work.
Dagster hands exactly those events to the storage in batches when DAGSTER_EVENT_BATCH_SIZE is set
(its PostgreSQL storage, production's, writes a batch in one statement); the SQLite one stores a
batch event by event. This one writes the same rows as event by event would (the run's events in
order, each asset event mirrored into the index with its tags and the asset's record), with one
transaction on the run's database and one on the index. Any other event is stored as Dagster does.
"""

from __future__ import annotations

from collections.abc import Sequence

from dagster import Field, StringSource
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.sqlalchemy_compat import db_result


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose `store_event_batch` commits once per database; it asks Dagster
    for batches (DAGSTER_EVENT_BATCH_SIZE, the settings table's default) in every process that
    opens the instance."""

    def __init__(self, base_dir: str, inst_data=None):
        from ml_assets.lib import settings

        settings.export_default("DAGSTER_EVENT_BATCH_SIZE")
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def config_type(cls):
        # Where Dagster's own would keep it unless told otherwise: DAGSTER_HOME/history/runs.
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> BatchingSqliteEventLogStorage:
        from ml_assets.lib import paths

        base_dir = config_value.get("base_dir") or str(paths.dagster_home() / "history" / "runs")
        return cls(base_dir=base_dir, inst_data=inst_data)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        if len(events) < 2 or len({e.run_id for e in events}) > 1:
            return super().store_event_batch(events)
        statements = [self.prepare_insert_event(e) for e in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        kind = [e.dagster_event_type if e.is_dagster_event else None for e in events]
        assets = [(e, s) for e, s, k in zip(events, statements, kind, strict=True) if k in ASSET_EVENTS]
        if assets:
            ids = []
            with self.index_transaction() as conn:
                for _, statement in assets:
                    with db_result(conn, statement) as result:
                        ids.append(result.inserted_primary_key[0])
                self._store_asset_event_tags(conn, [e for e, _ in assets], ids)
                for (event, _), event_id in zip(assets, ids, strict=True):
                    self._store_asset_event(conn, event, event_id)
        # As store_event does for these: mirrored into the index, then the check's own record
        # (which opens a connection of its own, so not inside the transaction above).
        for event, statement, k in zip(events, statements, kind, strict=True):
            if k in ASSET_CHECK_EVENTS:
                with self.index_connection() as conn, db_result(conn, statement) as result:
                    event_id = result.inserted_primary_key[0]
                self.store_asset_check_event(event, event_id)
