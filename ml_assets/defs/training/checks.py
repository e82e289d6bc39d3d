"""Gates on the training snapshot: a model trained on a broken split is worse than none."""

import dagster as dg
import polars as pl

from ml_assets.defs.metadata import markdown_table
from ml_assets.defs.resources import LakeResource
from ml_assets.defs.training.assets import run_snapshot
from ml_assets.lib import tables
from ml_assets.lib.features import LABEL
from ml_assets.lib.training import SPLITS, training_features


def _snapshot(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> pl.DataFrame:
    """The snapshot this run's training_set wrote (not the table's latest: see run_snapshot)."""
    version, _ = run_snapshot(context.instance, context.run, context.log)
    return lake.scan(tables.TRAINING_SET, version=version).collect()


@dg.asset_check(asset="training_set", blocking=True, description="Every split has both classes.")
def both_classes_present(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    counts = (
        _snapshot(context, lake)
        .group_by("split")
        .agg(pl.len().alias("rows"), pl.col(LABEL).sum().alias("frauds"))
    )
    by_split = {r["split"]: r for r in counts.iter_rows(named=True)}
    missing = [s for s in SPLITS if s not in by_split or by_split[s]["frauds"] in (0, by_split[s]["rows"])]
    return dg.AssetCheckResult(
        passed=not missing,
        metadata={
            "splits_missing_a_class": ", ".join(missing) or "none",
            "counts": dg.MetadataValue.md(
                markdown_table(["split", "rows", "frauds"], counts.select("split", "rows", "frauds").rows())
            ),
        },
    )


@dg.asset_check(asset="training_set", blocking=True, description="No feature is entirely null in any split.")
def no_feature_entirely_null(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    frame = _snapshot(context, lake)
    columns = training_features(frame)  # what the model will train on
    nulls = frame.group_by("split").agg(pl.col(columns).is_null().mean())
    empty = [f"{row['split']}.{c}" for row in nulls.iter_rows(named=True) for c in columns if row[c] == 1.0]
    worst = nulls.unpivot(index="split").sort("value", descending=True).head(8)
    return dg.AssetCheckResult(
        passed=not empty,
        metadata={
            "entirely_null": ", ".join(empty) or "none",
            "highest_null_shares": dg.MetadataValue.md(
                markdown_table(["split", "feature", "null share"], worst.rows())
            ),
        },
    )


@dg.asset_check(
    asset="training_set", blocking=True, description="Splits follow time: train, validation, holdout."
)
def splits_in_time_order(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    frame = _snapshot(context, lake)
    spans = frame.group_by("split").agg(
        pl.col("event_time").min().alias("first"), pl.col("event_time").max().alias("last")
    )
    span = {r["split"]: r for r in spans.iter_rows(named=True)}
    ordered = (
        len(span) == 3
        and span["train"]["last"] < span["validation"]["first"]
        and span["validation"]["last"] < span["holdout"]["first"]
    )
    return dg.AssetCheckResult(
        passed=ordered,
        metadata={
            "spans": dg.MetadataValue.md(
                markdown_table(["split", "first event", "last event"], spans.sort("first").rows())
            )
        },
    )
