"""Bronze: each day of the landing feed, validated against the contract, in Delta.

The step never raises on bad data. Good rows go to bronze, the rest to quarantine with every
reason; the checks in checks.py then judge the partition. Re-materializing a day replaces exactly
that day in both tables, so the same landing files always give the same tables.
"""


import time
from collections import Counter
from datetime import date

import dagster as dg
import polars as pl

from ml_assets.defs.policies import daily_partitions, one_run_per_range, storage_retry
from ml_assets.defs.resources import LakeResource, LandingResource
from ml_assets.lib import tables
from ml_assets.lib.contract import LABELS, TRANSACTIONS, Feed
from ml_assets.lib.ingest import QUARANTINE_SCHEMA, IngestResult, ingest_partition
from ml_assets.defs.metadata import markdown_table, table_schema


def _ingest(context: dg.AssetExecutionContext, feed: Feed, lake: LakeResource, landing: LandingResource):
    totals: Counter = Counter()
    bronze, quarantine = tables.BRONZE[feed.name], tables.QUARANTINE[feed.name]
    for key in context.partition_keys:
        started = time.perf_counter()
        day = date.fromisoformat(key)
        result = ingest_partition(
            feed, landing.partition_dir(feed.name, key), day, _ingested_elsewhere(feed, lake, day)
        )
        bronze_version = lake.write_partition(
            bronze, result.bronze, partition_column=feed.partition_column, partition=day,
            schema=feed.bronze_schema(),
        )  # fmt: skip
        quarantine_version = lake.write_partition(
            quarantine, result.quarantine, partition_column=feed.partition_column, partition=day,
            schema={**QUARANTINE_SCHEMA, feed.partition_column: pl.Date()},
        )  # fmt: skip
        stats = result.stats()
        totals.update(stats)
        context.log.info(f"{feed.name} {key}: {stats}")
        context.add_asset_metadata(
            _partition_metadata(result, lake.uri(bronze), bronze_version, quarantine_version)
            | {"seconds": round(time.perf_counter() - started, 2)},
            partition_key=key,
        )
    return dg.MaterializeResult(
        metadata={
            "days": len(context.partition_keys),
            **{f"total_{k}": v for k, v in totals.items()},
            "delta_version": lake.version(bronze),
        }
    )


def _ingested_elsewhere(feed: Feed, lake: LakeResource, day: date) -> pl.DataFrame | None:
    """Keys already in bronze for other days, for feeds whose key must be unique across the feed."""
    table = tables.BRONZE[feed.name]
    if feed.name != TRANSACTIONS.name or not lake.exists(table):
        return None
    return (
        lake.scan(table)
        .filter(pl.col(feed.partition_column) != day)
        .select(*feed.key, feed.partition_column)
        .collect()
    )


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
        ) or "none",
        "files": dg.MetadataValue.md(
            markdown_table(
                ["file", "outcome"],
                [(f, "read") for f in result.files_read]
                + [(f, f"ignored: {why}") for f, why in result.files_ignored.items()],
            )
        ),
        "quarantine_reasons": dg.MetadataValue.md(
            markdown_table(["reason", "records"], reasons.most_common(10)) if reasons else "nothing quarantined"
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
def raw_labels(context: dg.AssetExecutionContext, lake: LakeResource, landing: LandingResource) -> dg.MaterializeResult:
    """Fraud labels made on one day (chargebacks and analyst verdicts), validated like transactions.

    Labels arrive days after their transaction and may be revised: the one with the latest
    `labeled_at` wins downstream. Writes `bronze/labels` (partitioned by `label_date`) and
    `quarantine/labels`.
    """
    return _ingest(context, LABELS, lake, landing)
