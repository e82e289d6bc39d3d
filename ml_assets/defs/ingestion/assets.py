"""Bronze: each day of the landing feed, validated against the contract, in Delta.

The step never raises on bad data. Good rows go to bronze, the rest to quarantine with every
reason; the checks in checks.py then judge the partition. Re-materializing a day replaces exactly
that day in both tables, so the same landing files always give the same tables.
"""

import time
from collections import Counter
from datetime import UTC, date, datetime

import dagster as dg
import polars as pl

from ml_assets.defs.metadata import markdown_table, table_schema
from ml_assets.defs.policies import daily_partitions, one_run_per_range, storage_retry
from ml_assets.defs.resources import LakeResource, LandingResource
from ml_assets.lib import tables
from ml_assets.lib.contract import LABELS, TRANSACTIONS, Feed
from ml_assets.lib.ingest import QUARANTINE_SCHEMA, IngestResult, ingest_partition
from ml_assets.lib.landing import fingerprint

# Days are written to Delta in batches of about this many rows: one commit per batch, not per
# day, keeps a long backfill from piling up thousands of tiny commits.
BATCH_ROWS = 2_000_000


# One row per ingested day: the landing fingerprint of the files that day's run read.
DELIVERED_SCHEMA = {
    "day": pl.Date(),
    "fingerprint": pl.String(),
    "files_read": pl.Int64(),
    "ingested_at": pl.Datetime("us", "UTC"),
    "run_id": pl.String(),
}


def delivered(lake: LakeResource, feed: str) -> dict[str, str]:
    """Day -> the landing fingerprint ingestion last took in for it (what is really done)."""
    if not lake.exists(tables.DELIVERED[feed]):
        return {}
    frame = lake.scan(tables.DELIVERED[feed]).select("day", "fingerprint").collect()
    return {d.isoformat(): fp for d, fp in frame.iter_rows()}


def _ingest(context: dg.AssetExecutionContext, feed: Feed, lake: LakeResource, landing: LandingResource):
    days = [date.fromisoformat(k) for k in context.partition_keys]
    known = _keys_outside(feed, lake, days)
    totals: Counter = Counter()
    phases: Counter = Counter()
    batch: list[tuple[IngestResult, float, str]] = []
    for day in days:
        started = time.perf_counter()
        folder = landing.partition_dir(feed.name, day.isoformat())
        delivery = fingerprint(folder)  # before reading: a file landing meanwhile is new work
        result = ingest_partition(feed, folder, day, known)
        if known is not None:
            known = pl.concat([known, result.bronze.select(known.columns)])
        stats = result.stats()
        totals.update(stats)
        phases.update(result.seconds_by_phase)
        context.log.info(f"{feed.name} {day}: {stats}")
        batch.append((result, time.perf_counter() - started, delivery))
        if sum(r.bronze.height for r, _, _ in batch) >= BATCH_ROWS or day == days[-1]:
            started = time.perf_counter()
            _write_batch(context, feed, lake, batch)
            phases["write"] += time.perf_counter() - started
            batch = []
    return dg.MaterializeResult(
        metadata={
            "days": len(days),
            **{f"total_{k}": v for k, v in totals.items()},
            "delta_version": lake.version(tables.BRONZE[feed.name]),
            "seconds_by_phase": dg.MetadataValue.json({k: round(v, 3) for k, v in phases.items()}),
        }
    )


def _write_batch(
    context, feed: Feed, lake: LakeResource, batch: list[tuple[IngestResult, float, str]]
) -> None:
    """Replace the batch's days in bronze and quarantine, record what was taken in (after both:
    a day is done only once its data is written), then each day's metadata."""
    days = [r.partition for r, _, _ in batch]
    bronze, quarantine = tables.BRONZE[feed.name], tables.QUARANTINE[feed.name]
    bronze_version = lake.write_partitions(
        bronze, pl.concat([r.bronze for r, _, _ in batch]), partition_column=feed.partition_column,
        partitions=days, schema=feed.bronze_schema(),
    )  # fmt: skip
    quarantine_version = lake.write_partitions(
        quarantine, pl.concat([r.quarantine for r, _, _ in batch]), partition_column=feed.partition_column,
        partitions=days, schema={**QUARANTINE_SCHEMA, feed.partition_column: pl.Date()},
    )  # fmt: skip
    now = datetime.now(UTC)
    taken_in = pl.DataFrame(
        [(r.partition, fp, len(r.files_read), now, context.run.run_id) for r, _, fp in batch],
        schema=DELIVERED_SCHEMA,
        orient="row",
    )
    lake.write_partitions(
        tables.DELIVERED[feed.name],
        taken_in,
        partition_column="day",
        partitions=days,
        schema=DELIVERED_SCHEMA,
    )
    for result, seconds, _ in batch:
        context.add_asset_metadata(
            _partition_metadata(result, lake.uri(bronze), bronze_version, quarantine_version)
            | {"seconds": round(seconds, 2)},
            partition_key=result.partition.isoformat(),
        )


def _keys_outside(feed: Feed, lake: LakeResource, days: list[date]) -> pl.DataFrame | None:
    """Keys bronze holds for days outside this run, for a feed whose key is unique across days."""
    table = tables.BRONZE[feed.name]
    if feed.name != TRANSACTIONS.name:
        return None
    columns = [*feed.key, feed.partition_column]
    if not lake.exists(table):
        return pl.DataFrame(schema={c: feed.bronze_schema()[c] for c in columns})
    return lake.scan(table).filter(~pl.col(feed.partition_column).is_in(days)).select(columns).collect()


def _partition_metadata(result: IngestResult, uri: str, version: int, quarantine_version: int) -> dict:
    reasons = Counter(r for rs in result.quarantine["reasons"].to_list() for r in rs)
    return {
        **result.stats(),
        "dagster/row_count": result.bronze.height,
        "dagster/column_schema": table_schema(result.bronze.schema),
        "dagster/uri": uri,
        "delta_version": version,
        "quarantine_delta_version": quarantine_version,
        "unknown_columns": ", ".join(
            f"{c} (in {', '.join(files)})" for c, files in result.unknown_columns.items()
        )
        or "none",
        "files": dg.MetadataValue.md(
            markdown_table(
                ["file", "outcome"],
                [(f, "read") for f in result.files_read]
                + [(f, f"ignored: {why}") for f, why in result.files_ignored.items()],
            )
        ),
        "quarantine_reasons": dg.MetadataValue.md(
            markdown_table(["reason", "records"], reasons.most_common(10))
            if reasons
            else "nothing quarantined"
        ),
    }


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=one_run_per_range,
    retry_policy=storage_retry,
    kinds={"delta", "polars", "pandera"},
    owners=["team:ml-platform"],
)
def raw_transactions(
    context: dg.AssetExecutionContext, lake: LakeResource, landing: LandingResource
) -> dg.MaterializeResult:
    """Card transactions of one day, as delivered upstream, validated against the landing contract.

    Reads `landing/transactions/date=<day>/*.csv[.gz]`, writes good rows to the Delta table
    `bronze/transactions` (partitioned by `event_date`) and everything rejected, with its reasons,
    to `quarantine/transactions`. Identical re-delivered rows are dropped and counted; copies of a
    transaction_id that disagree are all quarantined.
    """
    return _ingest(context, TRANSACTIONS, lake, landing)


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=one_run_per_range,
    retry_policy=storage_retry,
    kinds={"delta", "polars", "pandera"},
    owners=["team:ml-platform"],
)
def raw_labels(
    context: dg.AssetExecutionContext, lake: LakeResource, landing: LandingResource
) -> dg.MaterializeResult:
    """Fraud labels made on one day (chargebacks and analyst verdicts), validated like transactions.

    Labels arrive days after their transaction and may be revised: the one with the latest
    `labeled_at` wins downstream. Writes `bronze/labels` (partitioned by `label_date`) and
    `quarantine/labels`.
    """
    return _ingest(context, LABELS, lake, landing)
