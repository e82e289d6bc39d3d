"""The training snapshot and the model: features + matured labels -> Delta -> LightGBM in MLflow."""

from datetime import date

import dagster as dg
import polars as pl
from pydantic import Field

from ml_assets.defs.metadata import markdown_table, table_schema
from ml_assets.defs.policies import storage_retry
from ml_assets.defs.resources import LakeResource, WarehouseResource
from ml_assets.defs.run_events import latest_materialization, run_materialization
from ml_assets.lib import tables
from ml_assets.lib.features import LABEL
from ml_assets.lib.training import default_cutoff, training_set_batches


class TrainingSetConfig(dg.Config):
    label_cutoff: str | None = Field(
        default=None,
        description="Use labels made up to this day (YYYY-MM-DD). Default: the latest label day.",
    )
    holdout_days: int = Field(default=7, description="Most recent labelled event days kept for the report.")
    validation_days: int = Field(default=5, description="Event days before the holdout, for early stopping.")
    max_train_days: int = Field(default=60, description="At most this many event days before validation.")


@dg.asset(
    deps=["transaction_features", "raw_labels"],
    kinds={"delta", "polars"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
)
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    lake: LakeResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """A pinned snapshot to train on: every transaction's features with the label known at the
    cutoff, split by time into train, validation (early stopping) and holdout (the report).

    Written as a new version of the Delta table `training/training_set`; the model records that
    version, so the exact rows behind any model version can be read back by time travel.
    """
    labels_table = tables.BRONZE["labels"]
    labels = (
        lake.scan(labels_table).select("transaction_id", "labeled_at", "label_date", "is_fraud").collect()
    )
    if labels.is_empty():
        raise dg.Failure(
            "no labels in bronze yet: ingest labels before building a training set", allow_retries=False
        )
    cutoff = date.fromisoformat(config.label_cutoff) if config.label_cutoff else default_cutoff(labels)
    with warehouse.connect() as con:
        batches, windows = training_set_batches(
            con, labels, cutoff, config.holdout_days, config.validation_days, config.max_train_days
        )
        version = lake.replace_table(tables.TRAINING_SET, batches)
    inputs = {
        "bronze_transactions": lake.version(tables.BRONZE["transactions"]),
        "bronze_labels": lake.version(labels_table),
    }
    written = lake.scan(tables.TRAINING_SET, version=version)
    balance = (
        written.group_by("split")
        .agg(
            pl.len().alias("rows"),
            pl.col(LABEL).sum().alias("frauds"),
            pl.col(LABEL).mean().alias("fraud_rate"),
        )
        .sort(pl.col("split").replace({"train": "0", "validation": "1", "holdout": "2"}))
        .collect()
    )
    rows, frauds = int(balance["rows"].sum()), int(balance["frauds"].sum())
    context.log.info(f"training set v{version}: {rows:,} rows, windows {windows.as_dict()}")
    return dg.MaterializeResult(
        metadata={
            "delta_version": version,
            "input_delta_versions": dg.MetadataValue.json(inputs),
            "windows": dg.MetadataValue.json(windows.as_dict()),
            "dagster/row_count": rows,
            "dagster/uri": lake.uri(tables.TRAINING_SET),
            "dagster/column_schema": table_schema(written.collect_schema()),
            "class_balance": dg.MetadataValue.md(markdown_table(balance.columns, balance.rows())),
            "fraud_rate": frauds / rows,
        }
    )


def run_snapshot(instance: dg.DagsterInstance, run: dg.DagsterRun, log) -> tuple[int, dict]:
    """(the training_set Delta version this run wrote, the bronze versions it was built from).

    From this run's own materialization of training_set, never the table's latest version: another
    retraining run may have written a newer snapshot since. A step run without training_set in its
    run (fraud_model alone, say) takes the snapshot last materialized, and logs that it did.
    """
    meta = run_materialization(instance, run, "training_set")
    if meta is None:
        meta = latest_materialization(instance, "training_set")
        if meta is None:
            raise dg.Failure("no training_set materialization to train on: materialize it first")
        log.warning(
            f"training_set is not in this run: using its last materialization, v{meta['delta_version'].value}"
        )
    inputs = meta["input_delta_versions"].value if "input_delta_versions" in meta else {}
    return int(meta["delta_version"].value), inputs
