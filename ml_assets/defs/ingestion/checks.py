"""Quality gates on each ingested day, judged from the tables themselves (not the step's word).

A WARN check fails when anything was quarantined. A blocking ERROR check fails when the
quarantined share passes a configured limit, or the day is empty: that stops downstream assets
from using the day, and what was written stays for inspection.
"""

from datetime import date

import dagster as dg
import polars as pl
from pydantic import Field

from ml_assets.defs.metadata import markdown_table
from ml_assets.defs.policies import daily_partitions
from ml_assets.defs.resources import LakeResource
from ml_assets.lib import tables
from ml_assets.lib.contract import LABELS, TRANSACTIONS, Feed


class QuarantineLimit(dg.Config):
    max_quarantined_share: float = Field(
        default=0.05,
        description="Largest share of a day's rows that may be quarantined before the day is "
        "blocked from downstream use (0.05 = 5%).",
    )


def _days(context: dg.AssetCheckExecutionContext) -> list[date]:
    return [date.fromisoformat(k) for k in context.partition_keys]


def _per_day(lake: LakeResource, feed: Feed, days: list[date]) -> pl.DataFrame:
    """Per day: rows in bronze, quarantine records and the rows they stand for, and the share."""
    col = feed.partition_column
    bronze = lake.read_partitions(tables.BRONZE[feed.name], col, days)
    quarantine = lake.read_partitions(tables.QUARANTINE[feed.name], col, days)
    frame = pl.DataFrame({"day": days})
    ingested = (
        bronze.group_by(col).agg(pl.len().alias("ingested"))
        if bronze.height
        else pl.DataFrame(schema={col: pl.Date, "ingested": pl.UInt32})
    )
    rejected = (
        quarantine.group_by(col).agg(pl.len().alias("records"), pl.col("rows").sum().alias("rejected_rows"))
        if quarantine.height
        else pl.DataFrame(schema={col: pl.Date, "records": pl.UInt32, "rejected_rows": pl.Int64})
    )
    return (
        frame.join(ingested.rename({col: "day"}), on="day", how="left")
        .join(rejected.rename({col: "day"}), on="day", how="left")
        .fill_null(0)
        .with_columns(
            share=pl.when(pl.col("ingested") + pl.col("rejected_rows") > 0)
            .then(pl.col("rejected_rows") / (pl.col("ingested") + pl.col("rejected_rows")))
            .otherwise(0.0)
        )
    )


def _examples(lake: LakeResource, feed: Feed, days: list[date], n: int = 5) -> str:
    quarantine = lake.read_partitions(tables.QUARANTINE[feed.name], feed.partition_column, days)
    if not quarantine.height:
        return "nothing quarantined"
    rows = quarantine.head(n).select(
        feed.partition_column,
        "source_file",
        "line",
        pl.col("reasons").list.join("; "),
        pl.col("raw").str.slice(0, 160),
    )
    return markdown_table(["day", "file", "line", "reasons", "raw"], rows.rows())


def _nothing_quarantined(asset: str, feed: Feed) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="nothing_quarantined",
        partitions_def=daily_partitions,
        description="Warns when any row or file of the day was quarantined (see examples).",
    )
    def _check(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        days = _days(context)
        per_day = _per_day(lake, feed, days)
        records = int(per_day["records"].sum())
        return dg.AssetCheckResult(
            passed=records == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "quarantine_records": records,
                "quarantined_rows": int(per_day["rejected_rows"].sum()),
                "examples": dg.MetadataValue.md(_examples(lake, feed, days)),
            },
        )

    return _check


def _quarantined_share(asset: str, feed: Feed) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="quarantined_share_within_limit",
        partitions_def=daily_partitions,
        blocking=True,
        description="Blocks downstream use of a day whose quarantined share passes the limit.",
    )
    def _check(
        context: dg.AssetCheckExecutionContext, config: QuarantineLimit, lake: LakeResource
    ) -> dg.AssetCheckResult:
        days = _days(context)
        per_day = _per_day(lake, feed, days)
        over = per_day.filter(pl.col("share") > config.max_quarantined_share)
        worst = per_day.sort("share", descending=True).head(10)
        return dg.AssetCheckResult(
            passed=over.height == 0,
            metadata={
                "limit": config.max_quarantined_share,
                "worst_share": float(per_day["share"].max() or 0.0),
                "days_over_limit": over.height,
                "days": dg.MetadataValue.md(
                    markdown_table(
                        ["day", "ingested", "quarantined rows", "share"],
                        worst.select("day", "ingested", "rejected_rows", "share").rows(),
                    )  # fmt: skip
                ),
                "examples": dg.MetadataValue.md(_examples(lake, feed, over["day"].to_list()))
                if over.height
                else "none",
            },
        )

    return _check


def _not_empty(asset: str, feed: Feed, severity: dg.AssetCheckSeverity) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="partition_not_empty",
        partitions_def=daily_partitions,
        blocking=severity == dg.AssetCheckSeverity.ERROR,
        description=f"Fails ({severity.value}) for a day with no ingested rows (missing or rejected feed).",
    )
    def _check(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        per_day = _per_day(lake, feed, _days(context))
        empty = per_day.filter(pl.col("ingested") == 0)["day"].to_list()
        return dg.AssetCheckResult(
            passed=not empty,
            severity=severity,
            metadata={
                "rows_ingested": int(per_day["ingested"].sum()),
                "empty_days": ", ".join(map(str, empty)) or "none",
            },
        )

    return _check


raw_transactions_nothing_quarantined = _nothing_quarantined("raw_transactions", TRANSACTIONS)
raw_transactions_quarantined_share = _quarantined_share("raw_transactions", TRANSACTIONS)
# A day without transactions means a broken feed: block it. A day without labels can happen.
raw_transactions_not_empty = _not_empty("raw_transactions", TRANSACTIONS, dg.AssetCheckSeverity.ERROR)
raw_labels_nothing_quarantined = _nothing_quarantined("raw_labels", LABELS)
raw_labels_quarantined_share = _quarantined_share("raw_labels", LABELS)
raw_labels_not_empty = _not_empty("raw_labels", LABELS, dg.AssetCheckSeverity.WARN)


# Per day, like every check of a daily asset: Dagster plans a check of a partitioned asset for the
# run's partitions, and an unpartitioned one would record its result for none of them, so the day's
# check would stay "planned" for ever and declarative automation (which waits for each day's
# blocking checks to pass) would never build the features of a day it blocks.
@dg.asset_check(
    asset="raw_transactions",
    partitions_def=daily_partitions,
    blocking=True,
    description="Each transaction_id of the day is in bronze once, across the whole table, as the "
    "contract says (every day is checked as it lands, so the whole table stays unique).",
)
def transaction_id_unique(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    ids = lake.scan(tables.BRONZE["transactions"]).select("transaction_id", "event_date").collect()
    of_days = ids.filter(pl.col("event_date").is_in(_days(context)))["transaction_id"]
    dupes = ids.filter(pl.col("transaction_id").is_duplicated() & pl.col("transaction_id").is_in(of_days))
    return dg.AssetCheckResult(
        passed=dupes.height == 0,
        metadata={
            "rows": ids.height,
            "rows_of_the_days": of_days.len(),
            "duplicated_rows": dupes.height,
            "examples": dg.MetadataValue.md(
                markdown_table(["transaction_id", "event_date"], dupes.sort("transaction_id").head(5).rows())
            ),
        },
    )


@dg.asset_check(
    asset="raw_labels",
    partitions_def=daily_partitions,
    additional_deps=["raw_transactions"],
    description="Warns when labels name transactions that bronze does not hold (yet).",
)
def labels_match_transactions(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    labels = lake.read_partitions(tables.BRONZE["labels"], LABELS.partition_column, _days(context))
    if not labels.height or not lake.exists(tables.BRONZE["transactions"]):
        return dg.AssetCheckResult(
            passed=True, severity=dg.AssetCheckSeverity.WARN, metadata={"labels": labels.height}
        )
    known = lake.scan(tables.BRONZE["transactions"]).select("transaction_id")
    orphans = labels.lazy().join(known, on="transaction_id", how="anti").collect()
    return dg.AssetCheckResult(
        passed=orphans.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "labels": labels.height,
            "labels_without_transaction": orphans.height,
            "share": orphans.height / labels.height,
            "examples": dg.MetadataValue.md(
                markdown_table(
                    ["transaction_id", "label_date"],
                    orphans.select("transaction_id", "label_date").head(5).rows(),
                )
            ),
        },
    )
