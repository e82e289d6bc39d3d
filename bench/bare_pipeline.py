"""The baseline for `make run`: the same compute in one plain Python process, without Dagster.

It calls the same library functions the assets call (ingestion, the online store's feed, dbt,
training set, Optuna + LightGBM, MLflow logging and registration, the validation report,
promotion, scoring, drift and live performance) on the same data, in order, with no
orchestration, no events and no checks. Run by bench/make_run.py in a fresh process against a fresh data root.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path


def main() -> tuple[dict, dict]:
    import mlflow
    import polars as pl

    from ml_assets.defs.ingestion.assets import DELIVERED_SCHEMA
    from ml_assets.defs.resources import build_resources
    from ml_assets.lib import deployment, gates, paths, registry, tables, tracking
    from ml_assets.lib.cli import cpu_seconds
    from ml_assets.lib.contract import FEEDS
    from ml_assets.lib.dbt_project import DBT_PROJECT_DIR
    from ml_assets.lib.features import LABEL, feature_columns
    from ml_assets.lib.ingest import QUARANTINE_SCHEMA, ingest_partition
    from ml_assets.lib.landing import fingerprint
    from ml_assets.lib.monitoring import arm_alerts, arm_performance, drift, feature_drift
    from ml_assets.lib.plots import alert_rates_days_png, drift_days_png, feature_importance_png
    from ml_assets.lib.report import build_report
    from ml_assets.lib.report_html import render_report
    from ml_assets.lib.training import (
        base_params,
        dataset,
        labels_as_of,
        matrix,
        train_booster,
        training_set_batches,
        tune,
    )

    FEATURE_COLUMNS = feature_columns()  # the spec's, as the warehouse computes them
    stages: dict[str, float] = {}
    cpu: dict[str, float] = {}  # as make run reports each job's: user + system, dbt's included
    clock, cpu_clock = time.perf_counter(), cpu_seconds()

    def lap(name: str) -> None:
        nonlocal clock, cpu_clock
        stages[name] = round(time.perf_counter() - clock, 2)
        cpu[name] = round(cpu_seconds() - cpu_clock, 2)
        clock, cpu_clock = time.perf_counter(), cpu_seconds()

    r = build_resources()
    lake, landing, warehouse, tracking_store = r["lake"], r["landing"], r["warehouse"], r["mlflow"]
    days = sorted(set(landing.partition_days("transactions")) | set(landing.partition_days("labels")))
    for name, feed in FEEDS.items():
        # As the ingestion assets: each day's landing fingerprint, and for transactions the keys of
        # the days before, so that a transaction delivered again on a later day is caught.
        key_columns = [*feed.key, feed.partition_column]
        schema = feed.bronze_schema()
        known = pl.DataFrame(schema={c: schema[c] for c in key_columns}) if name == "transactions" else None
        results, delivery = [], []
        for d in days:
            folder = landing.partition_dir(name, d)
            delivery.append(fingerprint(folder))
            results.append(ingest_partition(feed, folder, date.fromisoformat(d), known))
            if known is not None:
                known = pl.concat([known, results[-1].bronze.select(key_columns)])
        part = [date.fromisoformat(d) for d in days]
        lake.write_partitions(
            tables.BRONZE[name],
            pl.concat([x.bronze for x in results]),
            partition_column=feed.partition_column,
            partitions=part,
            schema=feed.bronze_schema(),
        )
        q_schema = {**QUARANTINE_SCHEMA, feed.partition_column: pl.Date()}
        lake.write_partitions(
            tables.QUARANTINE[name],
            pl.concat([x.quarantine for x in results]),
            partition_column=feed.partition_column,
            partitions=part,
            schema=q_schema,
        )
        now = datetime.now(UTC)
        rows = [
            (x.partition, fp, len(x.files_read), now, "bare") for x, fp in zip(results, delivery, strict=True)
        ]
        taken_in = pl.DataFrame(
            rows,
            schema=DELIVERED_SCHEMA,
            orient="row",
        )
        lake.write_partitions(
            tables.DELIVERED[name], taken_in, partition_column="day", partitions=part, schema=DELIVERED_SCHEMA
        )
    lap("ingestion")

    # What online_store_feed does: each day's transactions into the store's card histories, and
    # the merchant risk the next day needs.
    from ml_assets.serving.features import FeatureParams, merchant_risk, transactions_of

    params = FeatureParams.from_dbt_project()
    transactions, labels = lake.scan(tables.BRONZE["transactions"]), lake.scan(tables.BRONZE["labels"])
    with r["online_store"].open() as store:
        for d in days:
            day = date.fromisoformat(d)
            store.upsert_history(transactions_of(transactions.filter(pl.col("event_date") == day).collect()))
            next_day = day + timedelta(days=1)
            store.put_merchant_risk(next_day, merchant_risk(labels, transactions, next_day, params))
    lap("online_store_feed")

    dbt = str(Path(sys.executable).parent / "dbt")
    subprocess.run(
        [
            dbt,
            "build",
            "--profiles-dir",
            ".",
            "--quiet",
            "--vars",
            json.dumps({"min_date": days[0], "max_date": days[-1]} | paths.dbt_vars()),
        ],
        cwd=DBT_PROJECT_DIR,
        check=True,
        capture_output=True,
    )
    lap("features")

    labels = lake.scan(tables.BRONZE["labels"]).collect()
    cutoff = labels["label_date"].max()
    with warehouse.connect() as con:
        snapshot = lake.replace_table(
            tables.TRAINING_SET, training_set_batches(con, labels, cutoff, 7, 5, 60)[0]
        )
    lap("training_set")

    frame = lake.scan(tables.TRAINING_SET, version=snapshot).collect()  # as fraud_model reads it

    split = {s: frame.filter(pl.col("split") == s) for s in ("train", "validation", "holdout")}
    train = dataset(
        matrix(split["train"], FEATURE_COLUMNS), split["train"][LABEL].to_numpy(), FEATURE_COLUMNS
    )
    valid = dataset(
        matrix(split["validation"], FEATURE_COLUMNS),
        split["validation"][LABEL].to_numpy(),
        FEATURE_COLUMNS,
        reference=train,
    )
    mlflow.set_tracking_uri(tracking_store.tracking_uri)
    client = tracking_store.client()
    mlflow.set_experiment(experiment_id=tracking_store.experiment_id())
    name = tracking_store.registered_model_name
    with mlflow.start_run() as run:

        def log_trial(number, params, result):
            with mlflow.start_run(run_name=f"trial-{number}", nested=True):
                mlflow.log_params({k: v for k, v in params.items() if k != "metric"})

        fit = partial(train_booster, train=train, valid=valid, num_boost_round=600, early_stopping_rounds=40)
        best, _ = tune(base_params(2, 7), fit, 6, 7, log_trial)
        tracking.log_iteration_metrics(client, run.info.run_id, best.history)
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "feature_importance.png"
            png.write_bytes(
                feature_importance_png(FEATURE_COLUMNS, best.booster.feature_importance("gain").tolist())
            )
            mlflow.log_artifact(str(png))
        uri = tracking.log_model(best.booster, lake.root, FEATURE_COLUMNS)
        tags = tracking.model_tags("bare", snapshot, {}, {}, best.params, best.best_iteration)
        version = tracking.register(client, name, uri, run.info.run_id, tags)
        client.set_registered_model_alias(name, registry.CHALLENGER, version)
    lap("fraud_model")

    holdout = split["holdout"]
    x, y = matrix(holdout, FEATURE_COLUMNS), holdout[LABEL].to_numpy()
    booster = tracking_store.load_booster(version)
    p = booster.predict(x)
    report = build_report(
        holdout, y, p, None, FEATURE_COLUMNS, booster.feature_importance("gain").tolist(),
        gates.Thresholds.alert_budget,
    )  # fmt: skip
    verdict, reasons = gates.summary(gates.evaluate(report, gates.Thresholds()))
    client.set_model_version_tag(name, version, registry.TAG_VERDICT, verdict)
    # The threshold it will decide by, and the budget it was sized for, as the report asset tags them.
    threshold = repr(float(report["challenger"]["alert_threshold"]))
    client.set_model_version_tag(name, version, registry.TAG_DECISION_THRESHOLD, threshold)
    client.set_model_version_tag(
        name, version, registry.TAG_ALERT_BUDGET, repr(float(report["alert_budget"]))
    )
    html = render_report(name, [("Verdict", reasons)], report["images"], {"slices": report["slice_table"]})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "validation_report.html").write_text(html)
        client.log_artifact(run.info.run_id, str(Path(tmp) / "validation_report.html"))
    lap("model_validation_report")

    deployment.promote(client, name, version)
    lap("promotion")

    all_days = [date.fromisoformat(d) for d in days]
    scored = warehouse.query(
        "select transaction_id, event_date, " + ", ".join(FEATURE_COLUMNS) + " from transaction_features"
    )
    scores = scored.select("transaction_id", "event_date").with_columns(
        pl.lit("champion").alias("alias"),
        pl.lit(version).alias("model_version"),
        pl.Series("score", booster.predict(matrix(scored, FEATURE_COLUMNS))),
    )
    lake.write_partitions(
        tables.BATCH_PREDICTIONS,
        scores,
        partition_column="event_date",
        partitions=all_days,
        schema=dict(scores.schema),
    )
    recent = frame.filter(pl.col("split").is_in(["validation", "holdout"]))
    reference = recent.select(FEATURE_COLUMNS).with_columns(
        pl.Series("score", booster.predict(matrix(recent, FEATURE_COLUMNS)))
    )
    # What live_performance decides by, and the plots of the range drift_report and it draw.
    thresholds = registry.thresholds(client, name, [version])
    psi_threshold = r["monitoring"].psi_threshold
    arms = scores.with_columns(
        (pl.lit("batch:") + pl.col("alias")).alias("arm"), pl.lit(None, dtype=pl.String()).alias("decision")
    ).drop("alias")
    drifts, perfs, by_feature, by_arm, budgets = [], [], {}, {}, {}
    for d in all_days:
        today = scored.filter(pl.col("event_date") == d)
        table = pl.concat(
            [
                feature_drift(reference, today),
                drift(reference, scores.filter(pl.col("event_date") == d), ["score"]),
            ]
        )
        drifts.append(
            table.with_columns(pl.lit(d).alias("event_date"), pl.lit(version).alias("champion_version"))
        )
        for feature, value in table.iter_rows():
            by_feature.setdefault(feature, {})[d] = value
        window = arms.filter(pl.col("event_date").is_between(d - timedelta(days=6), d))
        known = labels_as_of(labels, d).select("transaction_id", "is_fraud")
        perf = arm_performance(window, known)
        perfs.append(perf.with_columns(pl.lit(d).alias("as_of_date")))
        alerts = arm_alerts(window, known, thresholds).filter(pl.col("decided") > 0)
        for row in alerts.iter_rows(named=True):
            arm = f"{row['arm']} v{row['model_version']}"
            by_arm.setdefault(arm, {})[d] = row["alert_rate"]
            budgets[arm] = row["alert_budget"]
    drift_days_png(by_feature, psi_threshold)
    alert_rates_days_png(by_arm, budgets)
    out = pl.concat(drifts)
    lake.write_partitions(
        tables.DRIFT, out, partition_column="event_date", partitions=all_days, schema=dict(out.schema)
    )
    out = pl.concat(perfs)
    lake.write_partitions(
        tables.LIVE_PERFORMANCE,
        out,
        partition_column="as_of_date",
        partitions=all_days,
        schema=dict(out.schema),
    )
    lap("monitoring")
    return stages, cpu


if __name__ == "__main__":
    stages, cpu = main()
    print(json.dumps({"stages": stages, "cpu_s": cpu, "total_s": round(sum(stages.values()), 2)}))
