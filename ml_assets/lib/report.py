"""The validation report's content: challenger vs champion on the same holdout rows. No Dagster.

`build_report` returns plain numbers (for the gates and the UI), tables and PNG plots; the asset
turns them into Markdown metadata, tags, and one self-contained HTML page in MLflow.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ml_assets.lib import evaluation, plots

SLICES = ["channel", "country", "merchant_category", "amount_band"]
PLOTS = ["roc", "pr", "calibration", "alert_budget", "scores_challenger", "feature_importance"]


def build_report(
    holdout: pl.DataFrame,
    y: np.ndarray,
    p_challenger: np.ndarray,
    p_champion: np.ndarray | None,
    feature_names: list[str],
    feature_gains: list[float],
    alert_budget: float,
    n_boot: int = 200,
    seed: int = 0,
) -> dict:
    """The report of both models on the holdout. Each model's metrics include its decision
    threshold for `alert_budget` fitted on these rows, the share it sends to review and its recall
    there (evaluation.budget_metrics): the tag the version carries, and what the recall gate reads."""

    def metrics(p: np.ndarray) -> dict[str, float]:
        return evaluation.score_metrics(y, p) | evaluation.budget_metrics(y, p, alert_budget)

    challenger = metrics(p_challenger)
    champion = metrics(p_champion) if p_champion is not None else None
    differences = (
        {
            m: evaluation.bootstrap_difference(
                y, p_challenger, p_champion, m, n_boot, seed, alert_budget=alert_budget
            )
            for m in ("roc_auc", "pr_auc", evaluation.RECALL_AT_BUDGET)
        }
        if p_champion is not None
        else None
    )
    frame = holdout.with_columns(
        evaluation.amount_band(pl.col("amount")).alias("amount_band"),
        pl.Series("_y", y),
        pl.Series("_challenger", p_challenger),
        pl.Series("_champion", p_champion if p_champion is not None else np.full(y.size, np.nan)),
    )
    slices = evaluation.slice_metrics(
        frame, "_y", "_challenger", "_champion" if p_champion is not None else None, SLICES
    )
    curves = {"challenger": p_challenger} | ({"champion": p_champion} if p_champion is not None else {})
    images = {
        "roc": plots.roc_curve_png(y, curves),
        "pr": plots.pr_curve_png(y, curves),
        "calibration": plots.calibration_png(y, curves),
        "alert_budget": plots.alert_budget_png(y, curves, alert_budget),
        "scores_challenger": plots.score_distribution_png(y, p_challenger, "challenger scores by class"),
        "feature_importance": plots.feature_importance_png(feature_names, feature_gains),
    }
    parts = {f"plot:{k}": bool(v) for k, v in images.items()} | {
        "metrics:challenger": bool(challenger),
        "slices": slices.height > 0,
    }
    if p_champion is not None:
        parts |= {"metrics:champion": bool(champion), "bootstrap": bool(differences)}
    return {
        "alert_budget": alert_budget,
        "challenger": challenger,
        "champion": champion,
        "differences": differences,
        "slices": slices.to_dicts(),
        "slice_table": slices,
        "images": images,
        "expected": list(parts),
        "present": parts,
    }
