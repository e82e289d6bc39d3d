"""Monitoring: score every day, watch drift against the champion's training data, and measure live
performance per arm as labels mature. The retraining and canary sensors act on these tables."""

import time
from datetime import date, timedelta

import dagster as dg
import polars as pl

from ml_assets.defs.metadata import frame_markdown, png_markdown
from ml_assets.defs.policies import daily_partitions, one_run_per_range, storage_retry
from ml_assets.defs.resources import LakeResource, MlflowResource, MonitoringResource, WarehouseResource
from ml_assets.lib import registry, tables
from ml_assets.lib.monitoring import (
    ARM_PERFORMANCE_SCHEMA,
    SCORE,
    arm_alerts,
    arm_performance,
    drift,
    feature_drift,
)
from ml_assets.lib.training import labels_as_of, matrix, warehouse_features

PREDICTION_SCHEMA = {
    "transaction_id": pl.String(),
    "event_date": pl.Date(),
    "alias": pl.String(),
    "model_version": pl.String(),
    SCORE: pl.Float64(),
}
SCORED_ALIASES = (registry.CHAMPION, registry.CANARY, registry.SHADOW)


def _days(context: dg.AssetExecutionContext) -> list[date]:
    return [date.fromisoformat(k) for k in context.partition_keys]


def _deployed(mlflow: MlflowResource) -> dict[str, str]:
    """Alias -> version for the aliases that score traffic (champion, and canary / shadow if set)."""
    client = mlflow.client()
    found = {a: registry.alias_version(client, mlflow.registered_model_name, a) for a in SCORED_ALIASES}
    if not found[registry.CHAMPION]:
        raise dg.Failure("no champion yet: nothing serves, so nothing to score", allow_retries=False)
    return {a: v for a, v in found.items() if v}


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=one_run_per_range,
    deps=["transaction_features", "deployed_model"],
    kinds={"lightgbm", "delta"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
)
def batch_predictions(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Every transaction of the day scored by the champion, and by the candidate too while one is
    deployed as canary or shadow, into `predictions/batch_predictions` (one row per transaction
    and alias, with the model version). Each model scores its own feature list."""
    days = _days(context)
    deployed = _deployed(mlflow)
    # Each phase timed on its own: scoring itself runs at the booster's raw rate; reading the
    # features, loading the models and writing Delta are what the step adds around it.
    seconds, started = {}, time.perf_counter()
    models = {v: mlflow.load_model(v) for v in set(deployed.values())}
    seconds["load"], started = time.perf_counter() - started, time.perf_counter()
    needed = list(dict.fromkeys(c for _, columns in models.values() for c in columns))
    features = warehouse.query(
        f"select transaction_id, event_date, {', '.join(needed)} from transaction_features "
        f"where event_date between date '{days[0]}' and date '{days[-1]}' order by event_time, transaction_id"
    )
    x = {v: matrix(features, columns) for v, (_, columns) in models.items()}
    seconds["read"] = time.perf_counter() - started
    scored, rates = [], {}
    for alias, version in deployed.items():
        started = time.perf_counter()
        scores = models[version][0].predict(x[version])
        rates[alias] = round(features.height / max(time.perf_counter() - started, 1e-9))
        scored.append(
            features.select("transaction_id", "event_date").with_columns(
                pl.lit(alias).alias("alias"), pl.lit(version).alias("model_version"), pl.Series(SCORE, scores)
            )
        )
    out = pl.concat(scored)
    started = time.perf_counter()
    version = lake.write_partitions(
        tables.BATCH_PREDICTIONS,
        out,
        partition_column="event_date",
        partitions=days,
        schema=PREDICTION_SCHEMA,
    )
    seconds["write"] = time.perf_counter() - started
    summary = out.group_by("event_date", "alias", "model_version").agg(
        pl.len().alias("rows"),
        pl.col(SCORE).mean().alias("mean_score"),
        (pl.col(SCORE) > 0.5).mean().alias("flagged"),
    )
    for day in days:
        part = summary.filter(pl.col("event_date") == day).drop("event_date").sort("alias")
        context.add_asset_metadata(
            {
                "dagster/row_count": int(part["rows"].sum()) if part.height else 0,
                "by_model": dg.MetadataValue.md(frame_markdown(part)),
            },  # fmt: skip
            partition_key=day.isoformat(),
        )
    return dg.MaterializeResult(
        metadata={
            "delta_version": version,
            "deployed": dg.MetadataValue.json(deployed),
            "rows_per_second": dg.MetadataValue.json(rates),
            "rows_scored": features.height,
            "feature_columns": dg.MetadataValue.json({v: len(columns) for v, (_, columns) in models.items()}),
            "seconds_by_phase": dg.MetadataValue.json({k: round(v, 3) for k, v in seconds.items()}),
        }
    )


def version_reference(lake: LakeResource, mlflow: MlflowResource, version: str) -> pl.DataFrame:
    """What a version's live traffic is measured against: the most recent days of its training
    snapshot (its validation and holdout windows), the version's own features and its scores. Drift
    is the champion's; a canary's rollout steps use the canary's (ml_assets.lib.rollout). Not the
    train window: its first days precede a full lookback, so their history features are still
    warming up."""
    tags = mlflow.client().get_model_version(mlflow.registered_model_name, version).tags
    snapshot = int(tags[registry.TAG_TRAINING_SET_VERSION])
    recent = (
        lake.scan(tables.TRAINING_SET, version=snapshot)
        .filter(pl.col("split").is_in(["validation", "holdout"]))
        .collect()
    )
    booster, columns = mlflow.load_model(version)
    scores = booster.predict(matrix(recent, columns))
    return recent.select(columns).with_columns(pl.Series(SCORE, scores))


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=one_run_per_range,
    deps=["batch_predictions"],
    kinds={"delta", "matplotlib"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
)
def drift_report(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    monitoring: MonitoringResource,
) -> dg.MaterializeResult:
    """Population stability (PSI) of every feature and of the champion's score for the day,
    against the champion's own training rows, into `monitoring/drift`. Large PSI means the world
    the model learned no longer looks like the one it scores. Only the features both sides have
    are compared: the champion's own, as the warehouse computes them now (`features_compared`)."""
    from ml_assets.lib.plots import drift_days_png, drift_png

    days = _days(context)
    champion = registry.alias_version(mlflow.client(), mlflow.registered_model_name, registry.CHAMPION)
    if champion is None:
        raise dg.Failure("no champion yet: nothing to measure drift against", allow_retries=False)
    reference = version_reference(lake, mlflow, champion)
    with warehouse.connect() as con:
        computed = set(warehouse_features(con))
    shared = [c for c in reference.columns if c in computed]
    features = warehouse.query(
        f"select event_date, {', '.join(shared)} from transaction_features "
        f"where event_date between date '{days[0]}' and date '{days[-1]}'"
    )
    scores = (
        lake.scan(tables.BATCH_PREDICTIONS)
        .filter(pl.col("event_date").is_in(days) & (pl.col("alias") == registry.CHAMPION))
        .select("event_date", SCORE)
        .collect()
    )
    rows = []
    for day in days:
        table = pl.concat(
            [
                feature_drift(reference, features.filter(pl.col("event_date") == day)),
                drift(reference, scores.filter(pl.col("event_date") == day), [SCORE]),
            ]
        ).sort("psi", descending=True)
        rows.append(
            table.with_columns(pl.lit(day).alias("event_date"), pl.lit(champion).alias("champion_version"))
        )
        feature_psi = table.filter(pl.col("feature") != SCORE)
        score_psi = table.filter(pl.col("feature") == SCORE)["psi"]
        context.add_asset_metadata(
            {
                "max_feature_psi": float(feature_psi["psi"].max() or 0.0),
                "worst_feature": feature_psi["feature"][0] if feature_psi.height else "none",
                "score_psi": float(score_psi[0]) if score_psi.len() else float("nan"),
                "psi": dg.MetadataValue.md(frame_markdown(table, 25)),
            }
            | ({"plot": _plot(drift_png(dict(table.rows()), monitoring.psi_threshold), "PSI by feature")}
               if len(days) == 1 else {}),
            partition_key=day.isoformat(),
        )  # fmt: skip
    out = pl.concat(rows)
    range_plot = {}
    if len(days) > 1:  # a range (a backfill): one heatmap of its days, shown on each, not one chart a day
        by_feature: dict[str, dict] = {}
        for feature, psi, day in out.select("feature", "psi", "event_date").iter_rows():
            by_feature.setdefault(feature, {})[day] = psi
        png = drift_days_png(by_feature, monitoring.psi_threshold)
        range_plot = {"plot": _plot(png, "PSI by feature and day")}
    schema = {
        "feature": pl.String(),
        "psi": pl.Float64(),
        "event_date": pl.Date(),
        "champion_version": pl.String(),
    }
    version = lake.write_partitions(
        tables.DRIFT, out.select(schema.keys()), partition_column="event_date", partitions=days, schema=schema
    )
    return dg.MaterializeResult(
        metadata={
            "delta_version": version,
            "champion_version": champion,
            "features_compared": dg.MetadataValue.json(shared),
            "champion_features_not_computed": ", ".join(
                c for c in reference.columns if c not in computed and c != SCORE
            )
            or "none",
        }
        | range_plot
    )


def _plot(png: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(png_markdown(png, title))


def _scored(lake: LakeResource, days: list[date]) -> pl.DataFrame:
    """Scores of `days`: batch predictions (arm "batch:<alias>") and, when the service has
    logged traffic, what it served (arm "live:<arm>"), with the decision it made (null in batch
    rows, and in log rows from before decisions were logged), and the `day` each belongs to (the
    transaction's event day in batch rows, the day it was scored in log rows)."""
    batch = (
        lake.scan(tables.BATCH_PREDICTIONS)
        .filter(pl.col("event_date").is_in(days))
        .select(
            "transaction_id",
            (pl.lit("batch:") + pl.col("alias")).alias("arm"),
            "model_version",
            SCORE,
            pl.lit(None, dtype=pl.String()).alias("decision"),
            pl.col("event_date").alias("day"),
        )  # fmt: skip
        .collect()
    )
    if not lake.exists(tables.INFERENCE_LOG):
        return batch
    log = lake.scan(tables.INFERENCE_LOG)
    logged = "decision" in log.collect_schema().names()
    served = (
        # A failed arm's row has no score (the champion's row of the transaction was returned).
        log.filter(pl.col("scored_date").is_in(days), pl.col(SCORE).is_not_null())
        .select(
            "transaction_id",
            (pl.lit("live:") + pl.col("arm")).alias("arm"),
            pl.col("model_version").cast(pl.String),
            SCORE,
            pl.col("decision") if logged else pl.lit(None, dtype=pl.String()).alias("decision"),
            pl.col("scored_date").alias("day"),
        )  # fmt: skip
        .collect()
    )
    return pl.concat([batch, served])


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=one_run_per_range,
    # inference_log: what the service served (live arms), drained from the online store.
    deps=["batch_predictions", "raw_labels", "inference_log"],
    kinds={"delta", "matplotlib"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
)
def live_performance(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    mlflow: MlflowResource,
    monitoring: MonitoringResource,
) -> dg.MaterializeResult:
    """How the deployed models actually did: ROC-AUC, PR-AUC and recall at 1% FPR per arm, over
    the last `window_days` of scored transactions whose labels had matured by the day, into
    `monitoring/live_performance`. Labels arrive days late, so the newest days count later.
    Beside them, per arm, in each day's metadata: the alert rate (the share of the window's scored
    transactions sent to review, by each version's own decision threshold, or as the service
    decided) against the alert budget that threshold was sized for, and the recall there."""
    from ml_assets.lib.plots import alert_rates_days_png, alert_rates_png

    days = _days(context)
    labels = (
        lake.scan(tables.BRONZE["labels"])
        .select("transaction_id", "labeled_at", "label_date", "is_fraud")
        .collect()
    )
    # Every window's scores in one read, and every version's threshold in one registry visit: per
    # day, each is a filter in memory (45 days read one by one took seconds of scans and lookups).
    windows = {day: [day - timedelta(days=i) for i in range(monitoring.window_days)] for day in days}
    every = _scored(lake, sorted({d for window in windows.values() for d in window}))
    versions = sorted(set(every["model_version"].drop_nulls()))
    thresholds = registry.thresholds(mlflow.client(), mlflow.registered_model_name, versions)
    rows, by_arm, every_budget = [], {}, {}
    for day in days:
        scored = every.filter(pl.col("day").is_in(windows[day])).drop("day")
        known = labels_as_of(labels, day).select("transaction_id", "is_fraud")
        perf = arm_performance(scored, known)
        rows.append(perf.with_columns(pl.lit(day).alias("as_of_date")))
        champion = perf.filter(pl.col("arm") == f"batch:{registry.CHAMPION}")
        alerts = arm_alerts(scored, known, thresholds)
        decided = alerts.filter(pl.col("decided") > 0)
        names = [f"{r['arm']} v{r['model_version']}" for r in decided.iter_rows(named=True)]
        rates = dict(zip(names, decided["alert_rate"], strict=True))
        budgets = dict(zip(names, decided["alert_budget"], strict=True))
        context.add_asset_metadata(
            {
                "champion_roc_auc": float(champion["roc_auc"][0]) if champion.height else float("nan"),
                "champion_labelled_positives": int(champion["positives"][0]) if champion.height else 0,
                "by_arm": dg.MetadataValue.md(frame_markdown(perf)),
                "alerts_by_arm": dg.MetadataValue.md(frame_markdown(alerts)),
                # The same, to read back: "<arm> v<version>" -> alert_rate, alert_budget, recall, ...
                "alert_rates": dg.MetadataValue.json(
                    {n: r for n, r in zip(names, decided.to_dicts(), strict=True)}
                ),
            }
            | ({"alert_rate_plot": _plot(alert_rates_png(rates, budgets), "live alert rate by arm")}
               if len(days) == 1 else {}),
            partition_key=day.isoformat(),
        )  # fmt: skip
        for name, rate in rates.items():
            by_arm.setdefault(name, {})[day] = rate
        every_budget |= budgets
    out = pl.concat(rows).with_columns(pl.col("roc_auc", "pr_auc", "recall_at_1pct_fpr").fill_nan(None))
    schema = dict(ARM_PERFORMANCE_SCHEMA) | {"as_of_date": pl.Date()}
    version = lake.write_partitions(
        tables.LIVE_PERFORMANCE, out.select(schema.keys()), partition_column="as_of_date", partitions=days,
        schema=schema,
    )  # fmt: skip
    range_plot = {}
    if len(days) > 1:  # a range (a backfill): one plot of its days, shown on each, not one chart a day
        png = alert_rates_days_png(by_arm, every_budget)
        range_plot = {"alert_rate_plot": _plot(png, "live alert rate by arm and day")}
    return dg.MaterializeResult(
        metadata={"delta_version": version, "window_days": monitoring.window_days} | range_plot
    )
