"""Monitoring without Dagster: drift of features and scores, and live performance per arm."""

from __future__ import annotations

import numpy as np
import polars as pl

from ml_assets.lib import evaluation
from ml_assets.lib.features import FEATURE_COLUMNS

SCORE = "score"
ARM_PERFORMANCE_SCHEMA = {
    "arm": pl.String(),
    "model_version": pl.String(),
    "rows": pl.Int64(),
    "positives": pl.Int64(),
    "roc_auc": pl.Float64(),
    "pr_auc": pl.Float64(),
    "recall_at_1pct_fpr": pl.Float64(),
}


def drift(reference: pl.DataFrame, current: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """PSI of each column of `current` against `reference`, largest first."""
    rows = [
        {"feature": c, "psi": evaluation.psi(reference[c].to_numpy(), current[c].to_numpy())}
        for c in columns
        if c in reference.columns and c in current.columns and reference.height and current.height
    ]
    return pl.DataFrame(rows, schema={"feature": pl.String, "psi": pl.Float64}).sort("psi", descending=True)


# A single day always has a single weekday: its PSI against several weeks says nothing.
NOT_FOR_DRIFT = {"day_of_week"}
DRIFT_FEATURES = [c for c in FEATURE_COLUMNS if c not in NOT_FOR_DRIFT]


def feature_drift(reference: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    return drift(reference, current, DRIFT_FEATURES)


def arm_performance(scored: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Metrics per (arm, model_version) over the scored transactions whose label is known.

    `scored`: transaction_id, arm, model_version, score. `labels`: transaction_id, is_fraud.
    """
    joined = scored.join(labels, on="transaction_id")
    rows = []
    for (arm, version), part in joined.group_by("arm", "model_version", maintain_order=True):
        y = part["is_fraud"].to_numpy().astype(np.float64)
        m = evaluation.score_metrics(y, part[SCORE].to_numpy())
        rows.append(
            {
                "arm": arm,
                "model_version": version,
                "rows": part.height,
                "positives": int(y.sum()),
                "roc_auc": m["roc_auc"],
                "pr_auc": m["pr_auc"],
                "recall_at_1pct_fpr": m["recall_at_1pct_fpr"],
            }
        )
    return pl.DataFrame(rows, schema=ARM_PERFORMANCE_SCHEMA).sort("arm")


ARM_ALERTS_SCHEMA = {
    "arm": pl.String(),
    "model_version": pl.String(),
    "rows": pl.Int64(),
    "decided": pl.Int64(),  # rows with a decision (a version without a threshold has none)
    "alerts": pl.Int64(),  # decided review
    "alert_rate": pl.Float64(),  # alerts / decided: what the fraud team was sent
    "alert_budget": pl.Float64(),  # the share the version's threshold was sized for
    "decision_threshold": pl.Float64(),
    "labelled_frauds": pl.Int64(),
    "recall": pl.Float64(),  # of the labelled frauds, the share sent to review
}


def arm_alerts(scored: pl.DataFrame, labels: pl.DataFrame, thresholds: dict[str, tuple[float, float]]):
    """Alert rate and recall per (arm, model_version): the share of scored transactions sent to
    review, against the budget its threshold was sized for, and the share of the labelled frauds
    among them.

    `scored`: transaction_id, arm, model_version, score, decision (the decision made, for live
    rows; null for batch scores, which are decided here by the version's threshold, as the service
    decides). `thresholds`: version -> (decision threshold, alert budget), for the versions that
    have one. `labels`: transaction_id, is_fraud. Every scored row counts towards the alert rate,
    labelled or not; the recall counts the labelled ones.
    """
    known = pl.DataFrame(
        [(v, t, b) for v, (t, b) in thresholds.items()],
        schema={
            "model_version": pl.String(),
            "decision_threshold": pl.Float64(),
            "alert_budget": pl.Float64(),
        },
        orient="row",
    )
    decided = scored.join(known, on="model_version", how="left")
    threshold = decided["decision_threshold"].fill_null(np.nan).to_numpy()
    sent = evaluation.sent_to_review(decided[SCORE].to_numpy(), threshold)
    by_threshold = np.where(np.isnan(threshold), None, np.where(sent, evaluation.REVIEW, evaluation.APPROVE))
    decided = decided.with_columns(
        pl.coalesce(pl.col("decision"), pl.Series(by_threshold.tolist(), dtype=pl.String())).alias("decision")
    )
    joined = decided.join(labels, on="transaction_id", how="left")
    review = pl.col("decision") == evaluation.REVIEW
    fraud = pl.col("is_fraud") == 1
    return (
        joined.group_by("arm", "model_version")
        .agg(
            pl.len().alias("rows"),
            pl.col("decision").is_not_null().sum().alias("decided"),
            review.sum().alias("alerts"),
            pl.col("alert_budget").first(),
            pl.col("decision_threshold").first(),
            fraud.sum().alias("labelled_frauds"),
            (review & fraud).sum().alias("_caught"),
        )
        .with_columns(
            (pl.col("alerts") / pl.col("decided")).alias("alert_rate"),
            (pl.col("_caught") / pl.col("labelled_frauds")).alias("recall"),
        )
        .with_columns(pl.col("alert_rate", "recall").fill_nan(None))
        .select(list(ARM_ALERTS_SCHEMA))
        .cast(ARM_ALERTS_SCHEMA)
        .sort("arm", "model_version")
    )
