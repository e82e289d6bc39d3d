"""Monitoring checks: warnings that show in the UI and that the retraining sensor acts on."""

from datetime import date

import dagster as dg
import polars as pl

from ml_assets.defs.metadata import frame_markdown
from ml_assets.defs.policies import daily_partitions
from ml_assets.defs.resources import LakeResource, MonitoringResource
from ml_assets.lib import registry, tables
from ml_assets.lib.monitoring import SCORE


def _rows(lake: LakeResource, table: str, column: str, context) -> pl.DataFrame:
    return lake.read_partitions(table, column, [date.fromisoformat(k) for k in context.partition_keys])


def _drift_check(name: str, score: bool, description: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset="drift_report", name=name, partitions_def=daily_partitions, description=description)
    def _check(
        context: dg.AssetCheckExecutionContext, lake: LakeResource, monitoring: MonitoringResource
    ) -> dg.AssetCheckResult:
        rows = _rows(lake, tables.DRIFT, "event_date", context)
        rows = rows.filter((pl.col("feature") == SCORE) if score else (pl.col("feature") != SCORE))
        drifted = rows.filter(pl.col("psi") > monitoring.psi_threshold).sort("psi", descending=True)
        return dg.AssetCheckResult(
            passed=drifted.height == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "threshold": monitoring.psi_threshold,
                "max_psi": float(rows["psi"].max() or 0.0),
                "drifted": dg.MetadataValue.md(frame_markdown(drifted) if drifted.height else "none"),
            },
        )

    return _check


features_within_drift_limit = _drift_check(
    "features_within_drift_limit", False, "Warns when any feature's PSI passes the threshold."
)
score_within_drift_limit = _drift_check(
    "score_within_drift_limit",
    True,
    "Warns when the champion's score distribution drifts past the threshold.",
)


@dg.asset_check(
    asset="live_performance",
    partitions_def=daily_partitions,
    description="Warns when the champion's live ROC-AUC (on matured labels) falls below the floor.",
)
def champion_live_roc_auc_above_floor(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, monitoring: MonitoringResource
) -> dg.AssetCheckResult:
    rows = _rows(lake, tables.LIVE_PERFORMANCE, "as_of_date", context)
    champion = rows.filter(
        (pl.col("arm") == f"batch:{registry.CHAMPION}")
        & (pl.col("positives") >= monitoring.min_live_positives)
    )
    low = champion.filter(pl.col("roc_auc") < monitoring.live_roc_auc_floor)
    return dg.AssetCheckResult(
        passed=low.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "floor": monitoring.live_roc_auc_floor,
            "days_judged": champion.height,
            "days_without_enough_labels": rows.filter(pl.col("arm") == f"batch:{registry.CHAMPION}").height
            - champion.height,
            "below_floor": dg.MetadataValue.md(frame_markdown(low) if low.height else "none"),
        },
    )
