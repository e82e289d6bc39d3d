"""The serving's state, kept by the pipeline: what the online store must hold for the scoring
service to compute dbt's features (card histories from bronze, the next day's merchant risk), and
the inference log, drained from the store's decision queue into Delta.

The service never reads bronze on the request path and never writes the lake: these two assets
are the only bridges between the lake and the store.
"""

import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl

from ml_assets.defs.policies import daily_partitions, one_run_per_range, storage_retry
from ml_assets.defs.resources import LakeResource, OnlineStoreResource
from ml_assets.lib import tables

US = 1_000_000
DAY_US = 86_400 * US
EPOCH = date(1970, 1, 1)
READ_ROWS = 5_000  # decisions per read of the store's queue
COMMIT_ROWS = 50_000  # decisions per Delta commit (and per cursor write and ack)


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=one_run_per_range,
    deps=["raw_transactions", "raw_labels"],
    kinds={"python", "delta"},
    retry_policy=storage_retry,
    # Follows each day's ingestion (default_automation_condition_sensor), as the features do.
    automation_condition=dg.AutomationCondition.eager(),
    owners=["team:ml-platform"],
)
def online_store_feed(
    context: dg.AssetExecutionContext, lake: LakeResource, online_store: OnlineStoreResource
) -> dg.MaterializeResult:
    """Feeds the online store from bronze for each day: upserts the day's transactions into their
    cards' history (once per transaction_id: what the service already appended is not doubled)
    and writes the merchant risk the NEXT day's requests need, from labels made up to this day,
    counted as dbt counts them. Then expires history older than the card lookback."""
    from ml_assets.serving.features import FeatureParams, merchant_risk, transactions_of

    days = sorted(date.fromisoformat(k) for k in context.partition_keys)
    params = FeatureParams.from_dbt_project()
    if not lake.exists(tables.BRONZE["transactions"]):
        raise dg.Failure("no bronze transactions yet: ingest first", allow_retries=False)
    transactions = lake.scan(tables.BRONZE["transactions"])
    labels = lake.scan(tables.BRONZE["labels"]) if lake.exists(tables.BRONZE["labels"]) else None
    totals = {"total_transactions": 0, "total_rows_upserted": 0}  # per day below, as ingestion does
    with online_store.open() as store:
        for day in days:
            started = time.perf_counter()
            frame = transactions.filter(pl.col("event_date") == day).collect()
            upserted = store.upsert_history(transactions_of(frame))
            # Labels made on `day` count from the next day on: that day's table is complete now.
            risk_day = day + timedelta(days=1)
            risk = merchant_risk(labels, transactions, risk_day, params) if labels is not None else {}
            store.put_merchant_risk(risk_day, risk)
            totals["total_transactions"] += frame.height
            totals["total_rows_upserted"] += upserted
            context.add_asset_metadata(
                {
                    "transactions": frame.height,
                    "rows_upserted": upserted,  # new to the store (the rest the service had appended)
                    "cards": frame["card_id"].n_unique() if frame.height else 0,
                    "merchant_risk_day": risk_day.isoformat(),
                    "merchants": len(risk),
                    "merchants_with_frauds": sum(1 for _, frauds in risk.values() if frauds),
                    "seconds": round(time.perf_counter() - started, 3),
                },
                partition_key=day.isoformat(),
            )
        # What no transaction of the next day (or a late one of this day) can look back on.
        horizon = ((days[-1] - EPOCH).days + 1 - params.card_lookback_days - 1) * DAY_US
        expired = store.forget_before(horizon)
    return dg.MaterializeResult(
        metadata={
            "store": online_store.describe(),
            "days": len(days),
            **totals,
            "history_rows_expired": expired,
        }
    )


CURSOR_SCHEMA = {
    "store": pl.String(),
    "cursor": pl.String(),
    "drained_at": pl.Datetime("us", "UTC"),
    "decisions": pl.Int64(),
}


def read_cursor(lake: LakeResource, store: str) -> str | None:
    """The consumer cursor of `store` (its redacted URL) kept in the lake: where the last drain
    that wrote the log stopped.

    Cursors only order within one store's life (an SQLite file's sequence, a Redis stream's ids):
    a store replaced by an empty one at the same URL must have its row removed from
    `serving/inference_log_cursor`, or the drain would skip (and ack) its first decisions."""
    if not lake.exists(tables.INFERENCE_LOG_CURSOR):
        return None
    found = lake.scan(tables.INFERENCE_LOG_CURSOR).filter(pl.col("store") == store).collect()
    return found["cursor"][0] if found.height else None


def _write_cursor(lake: LakeResource, store: str, cursor: str, decisions: int) -> None:
    others = (
        lake.scan(tables.INFERENCE_LOG_CURSOR).filter(pl.col("store") != store).collect()
        if lake.exists(tables.INFERENCE_LOG_CURSOR)
        else pl.DataFrame(schema=CURSOR_SCHEMA)
    )
    mine = pl.DataFrame(
        {"store": [store], "cursor": [cursor], "drained_at": [datetime.now(UTC)], "decisions": [decisions]},
        schema=CURSOR_SCHEMA,
    )
    lake.replace_table(tables.INFERENCE_LOG_CURSOR, pl.concat([others.select(list(CURSOR_SCHEMA)), mine]))


def not_logged(lake: LakeResource, rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` without those the log already holds (by transaction_id and arm, on their days): a
    retried drain, or a decision read twice, is logged once."""
    from ml_assets.serving.inference_log import KEY, PARTITION_COLUMN

    rows = rows.unique(list(KEY), keep="first", maintain_order=True)
    if not lake.exists(tables.INFERENCE_LOG):
        return rows
    days = rows[PARTITION_COLUMN].unique().to_list()
    logged = (
        lake.scan(tables.INFERENCE_LOG).filter(pl.col(PARTITION_COLUMN).is_in(days)).select(*KEY).collect()
    )
    return rows.join(logged, on=list(KEY), how="anti", maintain_order="left")


@dg.asset(
    key="inference_log",
    kinds={"delta"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
)
def inference_log(
    context: dg.AssetExecutionContext, lake: LakeResource, online_store: OnlineStoreResource
) -> dg.MaterializeResult:
    """Drains the online store's decision queue into `serving/inference_log` (Delta, partitioned
    by scored_date): every decision the service answered with, shadow scores as rows of their own,
    with the feature values. From the consumer cursor kept in the lake; rows the log already holds
    are skipped (a retried drain logs nothing twice); written, then the cursor, then acked. One
    materialization drains everything queued so far."""
    from ml_assets.serving.inference_log import PARTITION_COLUMN, rows_of

    started = time.perf_counter()
    where = online_store.describe()
    cursor = start = read_cursor(lake, where)
    drained = written = 0
    days: set[date] = set()
    version = None
    with online_store.open() as store:
        if cursor is not None:
            # A drain that died after writing its cursor but before acking left those decisions
            # queued: they are logged, drop them (ack is idempotent).
            store.ack(cursor)
        while True:
            decisions, short = [], False
            end = cursor
            while len(decisions) < COMMIT_ROWS:
                batch, end = store.read_decisions(end, READ_ROWS)
                decisions += batch
                if len(batch) < READ_ROWS:
                    short = True  # the queue's end, as of this read
                    break
            if not decisions:
                break
            fresh = not_logged(lake, rows_of(decisions))
            if fresh.height:
                version = lake.append(tables.INFERENCE_LOG, fresh, partition_column=PARTITION_COLUMN)
                days.update(fresh[PARTITION_COLUMN].unique().to_list())
            # Only after the rows are committed: a crash before this re-reads them, and the
            # dedupe above drops what the first attempt wrote.
            _write_cursor(lake, where, end, len(decisions))
            store.ack(end)
            drained += len(decisions)
            written += fresh.height
            cursor = end
            context.log.info(f"drained {len(decisions)} decisions ({fresh.height} new log rows) to {end}")
            if short:
                break
    seconds = time.perf_counter() - started
    return dg.MaterializeResult(
        metadata={
            "store": where,
            "rows_drained": drained,  # decisions read from the queue
            "log_rows_written": written,  # one per decision and per shadow score, minus those logged before
            "rows_per_second": round(drained / seconds, 1) if seconds > 0 else 0.0,
            "days_touched": dg.MetadataValue.json(sorted(d.isoformat() for d in days)),
            "cursor_before": str(start),
            "cursor_after": str(cursor),
            "delta_version": version if version is not None else lake.version(tables.INFERENCE_LOG) or 0,
            "dagster/row_count": written,
        }
    )
