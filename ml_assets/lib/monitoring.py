"""Monitoring without Dagster: drift of features and scores, and live performance per arm."""

from __future__ import annotations

import numpy as np
import polars as pl

from ml_assets.lib import evaluation

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
NOT_FOR_DRIFT = {"day_of_week", SCORE}


def feature_drift(reference: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """PSI of every feature both frames have (the reference's are a model's own list): a feature
    added since the model was trained, or one the current rows lack, is not compared."""
    return drift(reference, current, [c for c in reference.columns if c not in NOT_FOR_DRIFT])


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
