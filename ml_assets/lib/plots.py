"""Plots for the model validation and monitoring reports, each returned as PNG bytes.

Figures are small (5 x 3.5 inches at 90 dpi, 450 x 315 px) so they embed well in Markdown metadata
and in the HTML report. matplotlib costs about a second to import, so it is imported inside the
functions, and figures are drawn with the Agg renderer through `matplotlib.figure.Figure` directly:
no pyplot, no global backend switch, no figure left open between calls.

Plots never raise on degenerate data (one class only, empty input): a curve that is undefined is
left out and its legend says "n/a", because a missing line is better than a failed report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np

from ml_assets.lib.evaluation import (
    budget_metrics,
    calibration_bins,
    pr_curve,
    review_curve,
    roc_curve,
    score_metrics,
)

WIDTH, HEIGHT, DPI = 5.0, 3.5, 90
FONT_SIZE = 8


def _png(draw: Callable, height: float = HEIGHT) -> bytes:
    """Draw on one new axes with `draw(ax)` and return the figure as PNG bytes."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1}):
        # A constrained layout fits labels inside the canvas, so the PNG keeps its exact pixel size.
        fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
        draw(fig.add_subplot())
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _bar_height(n: int) -> float:
    """Tall enough for n readable horizontal bars, never smaller than the standard figure."""
    return max(HEIGHT, 0.9 + 0.17 * n)


def roc_curve_png(y: np.ndarray, curves: dict[str, np.ndarray]) -> bytes:
    """ROC curves, one line per model name (scores in `curves`), with each ROC AUC in the legend."""

    def draw(ax):
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
        for name, p in curves.items():
            fpr, tpr = roc_curve(y, p)
            ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {_fmt(score_metrics(y, p)['roc_auc'])})")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="recall", title="ROC")
        if curves:
            ax.legend(loc="lower right")

    return _png(draw)


def pr_curve_png(y: np.ndarray, curves: dict[str, np.ndarray]) -> bytes:
    """Precision-recall curves, one step line per model, with average precision in the legend.

    The dotted line is the fraud rate: the precision of a model that flags at random.
    """

    def draw(ax):
        y_arr = np.asarray(y)
        if len(y_arr):
            ax.axhline(float(np.mean(y_arr)), linestyle=":", color="grey", linewidth=1)
        for name, p in curves.items():
            recall, precision = pr_curve(y, p)
            label = f"{name} (AP {_fmt(score_metrics(y, p)['pr_auc'])})"
            ax.step(recall, precision, where="pre", linewidth=1.5, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="Precision-recall")
        if curves:
            ax.legend(loc="upper right")

    return _png(draw)


def calibration_png(y: np.ndarray, curves: dict[str, np.ndarray]) -> bytes:
    """Reliability diagram: observed fraud rate against mean score in 10 equal-frequency bins.

    The same bins as the `ece` metric (evaluation.calibration_bins); the diagonal is perfect
    calibration. Fraud scores crowd near zero, so the square axes zoom to the largest bin value; they
    stay linear because a log axis would hide the bins with no fraud at all.
    """

    def draw(ax):
        top = 0.0
        for name, p in curves.items():
            mean_p, mean_y, _ = calibration_bins(y, p)
            top = max([top, *mean_p, *mean_y])
            ece = _fmt(score_metrics(y, p)["ece"])
            ax.plot(mean_p, mean_y, marker="o", markersize=3, linewidth=1.2, label=f"{name} (ECE {ece})")
        top = min(1.0, top * 1.05) or 1.0
        ax.plot([0, top], [0, top], linestyle=":", color="grey", linewidth=1)
        ax.set(xlim=(0, top), ylim=(0, top))
        ax.set(xlabel="mean score in bin", ylabel="observed fraud rate", title="Calibration")
        if curves:
            ax.legend(loc="upper left")

    return _png(draw)


def score_distribution_png(y: np.ndarray, p: np.ndarray, title: str) -> bytes:
    """Histograms of the scores of legitimate and fraudulent rows on shared bins, log-scaled counts."""
    y_arr, p_arr = np.asarray(y), np.asarray(p, dtype=np.float64)

    def draw(ax):
        if len(p_arr):
            bins = np.linspace(min(0.0, p_arr.min()), max(1.0, p_arr.max()), 41)
            for cls, name in ((0, "legitimate"), (1, "fraud")):
                scores = p_arr[y_arr == cls]
                ax.hist(
                    scores, bins=bins, histtype="stepfilled", alpha=0.5, label=f"{name} ({len(scores):,})"
                )
            ax.set_yscale("log")
            ax.legend(loc="upper right")
        ax.set(xlabel="score", ylabel="rows", title=title)

    return _png(draw)


def feature_importance_png(names: list[str], gains: list[float], top: int = 20) -> bytes:
    """Horizontal bars of the `top` features by gain, largest on top."""
    ranked = sorted(zip(names, gains, strict=True), key=lambda item: item[1], reverse=True)[:top]

    def draw(ax):
        # barh draws bottom-up: reverse so the largest gain ends up on top.
        ax.barh([n for n, _ in reversed(ranked)], [g for _, g in reversed(ranked)], color="tab:blue")
        ax.set(xlabel="total gain", title=f"Feature importance (top {len(ranked)})")

    return _png(draw, height=_bar_height(len(ranked)))


def drift_png(psi_by_feature: dict[str, float], threshold: float) -> bytes:
    """PSI per feature as horizontal bars, largest on top; bars past `threshold` are red."""
    # NaN (no data on one side) sorts last and draws as an empty bar.
    ranked = sorted(
        psi_by_feature.items(), key=lambda item: -item[1] if not math.isnan(item[1]) else math.inf
    )

    def draw(ax):
        values = [v for _, v in reversed(ranked)]
        colors = ["tab:red" if v > threshold else "tab:grey" for v in values]
        ax.barh([n for n, _ in reversed(ranked)], values, color=colors)
        ax.axvline(threshold, linestyle="--", color="black", linewidth=1, label=f"threshold {threshold:g}")
        ax.set(xlabel="population stability index", title="Feature drift")
        ax.legend(loc="lower right")

    return _png(draw, height=_bar_height(len(ranked)))


def drift_days_png(psi: dict[str, dict], threshold: float) -> bytes:
    """PSI per feature (rows, worst first) and day (columns) over a range of days, as a heatmap;
    cells past `threshold` carry a red cross. What a backfill draws once instead of a bar chart
    per day (`drift_png`), each of which costs ~0.1 s. `psi`: feature -> day -> PSI."""
    days = sorted({d for by_day in psi.values() for d in by_day})
    ranked = sorted(psi, key=lambda f: -max((v for v in psi[f].values() if not math.isnan(v)), default=0))
    values = np.array([[psi[f].get(d, np.nan) for d in days] for f in ranked], dtype=float).reshape(
        len(ranked), len(days)
    )

    def draw(ax):
        if not values.size:
            ax.set(title="Feature drift by day (no days)")
            return
        image = ax.imshow(
            values, aspect="auto", cmap="Greys", vmin=0, vmax=2 * threshold, interpolation="nearest"
        )
        rows, columns = np.nonzero(np.nan_to_num(values) > threshold)
        ax.scatter(columns, rows, marker="x", s=12, color="tab:red", label=f"PSI > {threshold:g}")
        ax.set_yticks(range(len(ranked)), ranked)
        step = max(1, len(days) // 8)
        ax.set_xticks(range(0, len(days), step), [str(d) for d in days[::step]], rotation=30, ha="right")
        ax.set(title="Feature drift by day (PSI)")
        ax.figure.colorbar(image, ax=ax, shrink=0.8)
        if rows.size:
            ax.legend(loc="upper right")

    return _png(draw, height=_bar_height(len(ranked)))


def alert_rates_days_png(rates: dict[str, dict], budgets: dict[str, float]) -> bytes:
    """Live alert rate per arm over a range of days (one line each), each with the budget its
    threshold was sized for (dashed, same colour): a backfill's one plot instead of a bar chart per
    day (`alert_rates_png`). `rates`: arm -> day -> rate."""

    def draw(ax):
        for k, (name, by_day) in enumerate(rates.items()):
            color = f"C{k % 10}"
            days = sorted(by_day)
            ax.plot(days, [by_day[d] for d in days], color=color, linewidth=1.5, label=name)
            if not math.isnan(budgets.get(name, math.nan)):
                ax.axhline(budgets[name], color=color, linestyle="--", linewidth=1)
        ax.set(
            ylabel="share of transactions sent to review",
            title="Live alert rate by arm and day (budgets dashed)",
        )
        ax.tick_params(axis="x", labelrotation=30)
        if rates:
            ax.legend(loc="upper left")

    return _png(draw)


def alert_budget_png(y: np.ndarray, curves: dict[str, np.ndarray], budget: float) -> bytes:
    """Recall against the share of transactions sent to review, one line per model, the alert budget
    dashed; each model's recall at the budget (its own threshold) in the legend. The x axis shows up
    to 10 budgets: what a larger review team would buy."""

    def draw(ax):
        for name, p in curves.items():
            rate, recall = review_curve(y, p)
            at = budget_metrics(y, p, budget)["recall_at_alert_budget"] if len(rate) else math.nan
            ax.plot(rate, recall, linewidth=1.5, label=f"{name} (recall {_fmt(at)} at the budget)")
        ax.axvline(budget, linestyle="--", color="black", linewidth=1, label=f"alert budget {budget:.2%}")
        ax.set(xlim=(0, 10 * budget), ylim=(0, 1.01), xlabel="share of transactions sent to review",
               ylabel="recall", title="Recall by alert budget")  # fmt: skip
        ax.legend(loc="lower right")

    return _png(draw)


def alert_rates_png(rates: dict[str, float], budgets: dict[str, float]) -> bytes:
    """Live alert rate per arm (horizontal bars), each with the budget its threshold was sized for
    (a black tick). NaN (no decisions) draws no bar."""
    names = list(rates)

    def draw(ax):
        ax.barh(names, [rates[n] for n in names], color="tab:blue")
        ax.scatter([budgets[n] for n in names], names, marker="|", s=300, color="black", label="alert budget")
        ax.set(xlabel="share of transactions sent to review", title="Live alert rate by arm")
        if names:
            ax.legend(loc="lower right")

    return _png(draw, height=_bar_height(len(names)))
