"""Parity on live traffic: the online features the scoring service (or the registered model on
the store) logged for each transaction, against dbt's `transaction_features` of the same
transaction once it has landed in bronze. The skew test proves this on a replayed day; this check
watches it on every day of real traffic, and the deciding sensors wait while it fails.
"""

from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
import polars as pl
from pydantic import Field

from ml_assets.defs.metadata import frame_markdown
from ml_assets.defs.policies import daily_partitions, storage_retry
from ml_assets.defs.resources import LakeResource, WarehouseResource
from ml_assets.lib import tables
from ml_assets.lib.features import FEATURE_COLUMNS

PARITY_CHECK = dg.AssetCheckKey(dg.AssetKey("transaction_features"), "online_features_match_dbt")
EXAMPLES = 10


class ParityLimit(dg.Config):
    max_mismatch_share: float = Field(
        default=0.0,
        description="Largest share of the compared transactions whose logged online features may "
        "differ from dbt's before the check fails (0: any difference fails it).",
    )


def _logged(lake: LakeResource, days: list[date]) -> pl.DataFrame:
    """The log's rows returned to a caller for transactions whose event day is one of `days` (a
    shadow row carries the same features as its transaction's returned row)."""
    if not lake.exists(tables.INFERENCE_LOG):
        return pl.DataFrame()
    scan = lake.scan(tables.INFERENCE_LOG)
    columns = [c for c in FEATURE_COLUMNS if c in scan.collect_schema()]
    # Bounds on event_time itself (not its date) so the scan can skip files by their statistics.
    window = pl.lit(False)
    for day in days:
        start = datetime.combine(day, time(), UTC)
        window |= pl.col("event_time").is_between(start, start + timedelta(days=1), closed="left")
    return (
        scan.filter(pl.col("returned") & window)
        .select("transaction_id", "arm", "model_version", "stale_risk", *columns)
        .collect()
    )


@dg.asset_check(
    asset="transaction_features",
    partitions_def=daily_partitions,
    additional_deps=["inference_log"],
    # As the monitoring assets that read the warehouse: a dbt build writing it (another run's) holds
    # the DuckDB file's lock for a while.
    retry_policy=storage_retry,
    description="Serving parity: for every transaction of the day the inference log holds and "
    "bronze has since received (not scored with stale merchant risk), the logged online features "
    "equal dbt's row for it (rtol 1e-9, atol 1e-6). Fails (ERROR) above a mismatch share; the "
    "promotion and canary sensors hold while its latest evaluation fails.",
)
def online_features_match_dbt(
    context: dg.AssetCheckExecutionContext,
    config: ParityLimit,
    lake: LakeResource,
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    from ml_assets.lib.parity import ATOL, RTOL, compare

    days = sorted(date.fromisoformat(k) for k in context.partition_keys)
    span = days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"
    logged = _logged(lake, days)
    counts = {"logged": logged.height, "stale_risk_skipped": 0, "not_in_bronze": 0, "not_in_dbt": 0}
    compared = mismatched = 0
    differ = pl.DataFrame()
    if logged.height:
        counts["stale_risk_skipped"] = int(logged["stale_risk"].sum())
        fresh = logged.filter(~pl.col("stale_risk"))
        landed = lake.read_partitions(tables.BRONZE["transactions"], "event_date", days)
        seen = (
            fresh.join(landed.select("transaction_id"), on="transaction_id", how="semi")
            if landed.height
            else fresh.clear()
        )
        counts["not_in_bronze"] = fresh.height - seen.height  # yet to land, or quarantined
        if seen.height:
            columns = [c for c in FEATURE_COLUMNS if c in seen.columns]
            listed = ", ".join(f"date '{d}'" for d in days)
            dbt = warehouse.query(
                f"select transaction_id, {', '.join(columns)} from transaction_features "  # noqa: S608
                f"where event_date in ({listed})"  # dates of the run's own partitions
            )
            both, differ = compare(seen, dbt, columns)
            counts["not_in_dbt"] = seen.height - both.height  # features not built for the day yet
            compared = both.height
            mismatched = differ["transaction_id"].n_unique()
    share = mismatched / compared if compared else 0.0
    passed = share <= config.max_mismatch_share
    if not compared:
        description = (
            f"nothing to compare on {span}: {counts['logged']} logged transactions, none both in "
            f"bronze and scored with the day's merchant risk ({counts['stale_risk_skipped']} stale, "
            f"{counts['not_in_bronze']} not in bronze, {counts['not_in_dbt']} without dbt features)"
        )
    elif mismatched:
        description = (
            f"{mismatched} of {compared} transactions on {span} were served features that differ "
            f"from dbt's ({share:.2%}, limit {config.max_mismatch_share:.2%})"
        )
    else:
        description = f"all {compared} compared transactions on {span} were served dbt's features"
    by_feature = (
        dict(differ.group_by("feature").len().sort("len", descending=True).iter_rows())
        if differ.height
        else {}
    )
    examples = (
        differ.join(logged.select("transaction_id", "arm", "model_version"), on="transaction_id", how="left")
        .sort("transaction_id", "feature")
        .head(EXAMPLES)
        if differ.height
        else differ
    )
    context.log.info(description)
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "days": span,
            **counts,
            "compared": compared,
            "mismatched": mismatched,
            "mismatch_share": share,
            "max_mismatch_share": config.max_mismatch_share,
            "tolerance": f"rtol {RTOL}, atol {ATOL}",
            "mismatches_by_feature": dg.MetadataValue.json(by_feature),
            "examples": dg.MetadataValue.md(frame_markdown(examples) if examples.height else "none"),
        },
    )


def parity_hold(instance: dg.DagsterInstance) -> str | None:
    """Why the promotion and canary sensors must not act now: the latest evaluation of the parity
    check (whatever day it judged) failed. None when it passed or never ran. Read from the
    instance's check history, which outlives any cursor; an evaluation still running does not count."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    [latest] = instance.event_log_storage.get_asset_check_execution_history(
        PARITY_CHECK, limit=1, status={Status.SUCCEEDED, Status.FAILED}
    ) or [None]
    if latest is None or latest.status == Status.SUCCEEDED:
        return None
    evaluation = latest.event.dagster_event.event_specific_data
    return (
        f"held: serving parity ({PARITY_CHECK.name}) failed in run {latest.run_id[:8]}: "
        f"{evaluation.description}"
    )
