"""Metrics for the model validation report: pure numpy and polars, no Dagster, no scikit-learn.

The report scores the challenger and the champion on the same holdout rows; the blocking quality gates
read these numbers, so every metric matches scikit-learn's definition (the tests hold it to that).
Degenerate input (one class only, no rows) gives NaN for what is undefined, never an exception, so a
tiny slice or a quiet day cannot crash the report. Malformed input (labels other than 0/1, NaN scores,
lengths that differ) is a caller bug and raises ValueError.

Ranking metrics come from one sort of the scores: the cumulative true and false positives at distinct
thresholds (never splitting tied scores) give ROC AUC (trapezoids), average precision (sklearn's step
sum), recall at a fixed FPR and recall at an alert budget. A bootstrap replicate counts its drawn rows
into the same threshold segments, so it costs a gather and a bincount, not a sort.

Decision thresholds: a fraud team reviews what it can, a share of transactions (the alert budget).
`alert_threshold` is the score above which that share falls; `decisions` applies a threshold. A
threshold is only ever set between distinct scores, so tied transactions get the same decision.
"""

from __future__ import annotations

import functools

import numpy as np
import polars as pl

NAN = float("nan")
MAX_FPR = 0.01  # recall_at_1pct_fpr: the false-positive rate the fraud team can afford to review
LOG_LOSS_EPS = 1e-15
CALIBRATION_BINS = 10
AMOUNT_BAND_EDGES = [10, 50, 200, 1000]  # amount bands: [0, 10), [10, 50), ... [1000, inf)
AMOUNT_BAND_LABELS = ["<10", "10-50", "50-200", "200-1000", ">=1000"]  # in ascending order

SLICE_SCHEMA = {
    "slice": pl.String(),  # the slice column
    "value": pl.String(),  # its value, as text so that all slice columns stack in one table
    "rows": pl.Int64(),
    "positives": pl.Int64(),
    "challenger_roc_auc": pl.Float64(),
    "champion_roc_auc": pl.Float64(),
    "roc_auc_diff": pl.Float64(),  # challenger - champion: negative is a regression
    "challenger_pr_auc": pl.Float64(),
    "champion_pr_auc": pl.Float64(),
    "pr_auc_diff": pl.Float64(),
}


def _check(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d arrays of one length, got {y.shape} and {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (filter out unlabeled rows first)")
    if not np.isfinite(p).all():
        raise ValueError("scores must be finite: a model that outputs NaN or inf is broken")
    return y.astype(np.float64), p


def _segments(y: np.ndarray, p: np.ndarray, every_threshold: bool = False) -> tuple[np.ndarray, int]:
    """Code each row by the score segment it falls in, so that one bincount gives the curve's counts.

    Rows in descending score order are cut into segments, never between tied scores: at every distinct
    score (every_threshold: the whole curve, for plots), or else only around the runs of tied scores
    that hold a positive. Between those the curve only moves along the FPR axis, so ROC AUC, average
    precision and recall at a fixed FPR come out exactly the same from a few thousand points.
    A row's code is 2 * segment + label. Needs at least one row.
    """
    order = np.argsort(-p, kind="stable")
    s, y_sorted = p[order], y[order].astype(np.int64)
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]) + 1, len(s))
    if not every_threshold:
        starts = np.append(0, ends[:-1])
        has_positive = np.add.reduceat(y_sorted, starts) > 0
        ends = np.unique(np.concatenate([starts[has_positive], ends[has_positive], [len(s)]]))
        ends = ends[ends > 0]
    codes = np.empty(len(s), dtype=np.intp)  # bincount wants intp; anything else is cast per call
    codes[order] = 2 * np.repeat(np.arange(len(ends)), np.diff(ends, prepend=0)) + y_sorted
    return codes, len(ends)


def _counts(codes: np.ndarray, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives when flagging segment after segment, from 0 to the totals.

    `codes` may hold a row several times (a bootstrap draw): counts are then multinomial weights.
    """
    cum = np.cumsum(np.bincount(codes, minlength=2 * n_segments).reshape(n_segments, 2), axis=0)
    return np.append(0.0, cum[:, 1]), np.append(0.0, cum[:, 0])


def _roc_auc(tp: np.ndarray, fp: np.ndarray) -> float:
    pos, neg = tp[-1], fp[-1]
    if pos <= 0 or neg <= 0:
        return NAN
    return float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1])) / (2.0 * pos * neg))


def _average_precision(tp: np.ndarray, fp: np.ndarray) -> float:
    pos = tp[-1]
    if pos <= 0:
        return NAN
    flagged = tp[1:] + fp[1:]  # can be 0 under bootstrap weights, where no positive is gained either
    precision = np.divide(tp[1:], flagged, out=np.zeros_like(flagged), where=flagged > 0)
    return float(np.sum(np.diff(tp) * precision) / pos)


def _recall_at_fpr(tp: np.ndarray, fp: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    pos, neg = tp[-1], fp[-1]
    if pos <= 0 or neg <= 0:
        return NAN
    # tp and fp only grow with the threshold index, so the best recall is at the last allowed one.
    last = np.searchsorted(fp / neg, max_fpr, side="right") - 1
    return float(tp[last] / pos)


def _closest_to_budget(flagged: np.ndarray, budget: float) -> int:
    """The index into `flagged` (rows sent to review at each candidate threshold, growing from 0 to
    all rows) whose share of all rows is closest to `budget`; the lower one when two are as close."""
    share = flagged / flagged[-1]
    below = np.searchsorted(share, budget, side="right") - 1  # the last share <= budget
    above = below + 1
    if above < len(share) and share[above] - budget < budget - share[below]:
        return int(above)
    return int(below)


def _recall_at_budget(tp: np.ndarray, fp: np.ndarray, budget: float) -> float:
    """Recall when the rows scoring at or above the budget's threshold (fitted on these same rows, as
    `alert_threshold` does) are sent to review. Between the segments `_segments` keeps only
    negatives are flagged: the recall is constant there, so it is the full curve's, wherever in
    such a stretch the closest share lies."""
    pos = tp[-1]
    if pos <= 0:
        return NAN
    return float(tp[_closest_to_budget(tp + fp, budget)] / pos)


_RANKING_METRICS = {"roc_auc": _roc_auc, "pr_auc": _average_precision, "recall_at_1pct_fpr": _recall_at_fpr}
RECALL_AT_BUDGET = "recall_at_alert_budget"  # a bootstrap_difference metric; needs alert_budget
REVIEW, APPROVE = "review", "approve"


def alert_threshold(p, budget: float) -> float:
    """The score threshold whose share of rows sent to review (score >= threshold) is closest to
    `budget`, the lower share when two are as close. Thresholds sit on distinct scores, so a run of
    tied scores is sent whole or not at all: without ties the share is round(budget * n) / n; a
    model with coarse scores (few trees) may land a tie run's size away. Closest rather than "at
    most": a tie run just past the budget would otherwise leave a small fraction of it used. When
    sending nothing is closest, the threshold is just above the top score. NaN on zero rows.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or not np.isfinite(p).all():
        raise ValueError("scores must be a 1-d array of finite values")
    if len(p) == 0:
        return NAN
    s = np.sort(p)[::-1]
    # Rows flagged with no threshold reached (0), then at each distinct score taken as the
    # threshold: through the end of its tied run.
    flagged = np.concatenate([[0], np.flatnonzero(s[1:] != s[:-1]) + 1, [len(s)]])
    k = _closest_to_budget(flagged, budget)
    return float(s[flagged[k] - 1]) if k else float(np.nextafter(s[0], np.inf))


def sent_to_review(p, threshold: float) -> np.ndarray:
    """The rule every decision follows: a score at or above the threshold goes to review."""
    return np.asarray(p, dtype=np.float64) >= threshold


def decisions(p, threshold: float | None) -> list[str | None]:
    """review or approve per score (`sent_to_review`); None for every score without a threshold
    (a version whose report has not fitted one): no decision is better than an invented one."""
    if threshold is None:
        return [None] * len(p)
    return [REVIEW if sent else APPROVE for sent in sent_to_review(p, threshold).tolist()]


def budget_metrics(y, p, budget: float) -> dict[str, float]:
    """The model at an alert budget on these rows: the threshold fitted on them (`alert_threshold`),
    the share of rows it sends to review (`alert_rate`, the budget up to ties) and the recall there."""
    y, p = _check(y, p)
    threshold = alert_threshold(p, budget)
    recall = _recall_at_budget(*_counts(*_segments(y, p)), budget) if len(y) else NAN
    return {
        "alert_threshold": threshold,
        "alert_rate": float(np.mean(sent_to_review(p, threshold))) if len(p) else NAN,
        RECALL_AT_BUDGET: recall,
    }


def calibration_bins(y, p, n_bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-frequency bins by score: (mean score, observed positive rate, rows) per bin.

    Rows are cut by rank into n_bins near-equal groups; a cut that falls inside a run of tied scores
    moves to the start of the run, so tied rows share a bin and the result does not depend on row
    order (such bins are larger, and fewer when ties are massive).
    """
    y, p = _check(y, p)
    if len(p) == 0:
        return np.array([]), np.array([]), np.array([], dtype=np.int64)
    order = np.argsort(p, kind="stable")
    s, ys = p[order], y[order]
    k = min(n_bins, len(s))
    cuts = (np.arange(k) * len(s)) // k
    starts = np.unique(np.searchsorted(s, s[cuts], side="left"))
    rows = np.diff(np.append(starts, len(s)))
    return np.add.reduceat(s, starts) / rows, np.add.reduceat(ys, starts) / rows, rows


def score_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Holdout metrics of one model's scores `p` against 0/1 labels `y`.

    roc_auc, pr_auc (average precision, as sklearn defines it), recall_at_1pct_fpr (the highest recall
    whose false-positive rate is <= 1%, thresholds only between distinct scores), log_loss (p clipped
    to [1e-15, 1 - 1e-15]), brier, ece (10 equal-frequency bins, see calibration_bins), rows and
    positives. Metrics undefined for the input are NaN: roc_auc and recall need both classes, pr_auc
    needs a positive, and nothing is defined on zero rows.
    """
    y, p = _check(y, p)
    out: dict[str, float] = {"rows": len(y), "positives": int(y.sum())}
    if len(y) == 0:
        return out | dict.fromkeys(
            ["roc_auc", "pr_auc", "recall_at_1pct_fpr", "log_loss", "brier", "ece"], NAN
        )
    counts = _counts(*_segments(y, p))
    out |= {name: fn(*counts) for name, fn in _RANKING_METRICS.items()}
    clipped = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    out["log_loss"] = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log1p(-clipped)))
    out["brier"] = float(np.mean((p - y) ** 2))
    mean_p, mean_y, rows = calibration_bins(y, p)
    out["ece"] = float(np.sum(np.abs(mean_p - mean_y) * rows) / len(y))
    return out


def roc_curve(y, p) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1); empty when it is undefined."""
    y, p = _check(y, p)
    if len(y) == 0:
        return np.array([]), np.array([])
    tp, fp = _counts(*_segments(y, p, every_threshold=True))
    if tp[-1] == 0 or fp[-1] == 0:
        return np.array([]), np.array([])
    return fp / fp[-1], tp / tp[-1]


def pr_curve(y, p) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, starting at (0, 1) as sklearn does.

    Draw it as a step function with steps *before* each point (matplotlib `where="pre"`): the area
    under that step function is the average precision. Empty when there is no positive.
    """
    y, p = _check(y, p)
    if len(y) == 0 or y.sum() == 0:
        return np.array([]), np.array([])
    tp, fp = _counts(*_segments(y, p, every_threshold=True))
    return np.append(0.0, tp[1:] / tp[-1]), np.append(1.0, tp[1:] / (tp[1:] + fp[1:]))


def review_curve(y, p) -> tuple[np.ndarray, np.ndarray]:
    """(share of rows sent to review, recall) at every distinct threshold, from (0, 0) to (1, 1):
    what each alert budget buys. Empty when there is no positive."""
    y, p = _check(y, p)
    if len(y) == 0 or y.sum() == 0:
        return np.array([]), np.array([])
    tp, fp = _counts(*_segments(y, p, every_threshold=True))
    return (tp + fp) / len(y), tp / tp[-1]


def bootstrap_difference(
    y: np.ndarray,
    p_challenger: np.ndarray,
    p_champion: np.ndarray,
    metric: str,
    n_boot: int = 200,
    seed: int = 0,
    alert_budget: float | None = None,
) -> dict:
    """metric(challenger) - metric(champion), with a 95% paired-bootstrap percentile interval.

    Both models are scored on the same resampled rows in each replicate (paired), which cancels the
    holdout's own difficulty out of the difference and gives a much tighter interval than two separate
    bootstraps. Scores are sorted once; a replicate only counts the drawn rows per score segment.
    metric is one of roc_auc, pr_auc, recall_at_1pct_fpr, or recall_at_alert_budget with
    `alert_budget`: each model at its own threshold for the budget, refitted on every replicate's
    rows, so the interval holds the thresholds' sampling error too. A replicate where the metric is
    undefined (it drew no positive) is skipped; n_valid says how many counted. Returns estimate,
    low, high, n_boot, n_valid and metric.
    """
    if metric == RECALL_AT_BUDGET and alert_budget is not None:
        fn = functools.partial(_recall_at_budget, budget=alert_budget)
    elif metric in _RANKING_METRICS:
        fn = _RANKING_METRICS[metric]
    else:
        supported = [*sorted(_RANKING_METRICS), f"{RECALL_AT_BUDGET} (with alert_budget)"]
        raise ValueError(f"bootstrap_difference supports {supported}, not {metric!r}")
    y, p_a = _check(y, p_challenger)
    _, p_b = _check(y, p_champion)
    result = {"metric": metric, "estimate": NAN, "low": NAN, "high": NAN, "n_boot": n_boot, "n_valid": 0}
    if len(y) == 0:
        return result
    (codes_a, k_a), (codes_b, k_b) = _segments(y, p_a), _segments(y, p_b)

    def difference(rows: np.ndarray) -> float:
        return fn(*_counts(codes_a[rows], k_a)) - fn(*_counts(codes_b[rows], k_b))

    # A replicate draws n row indices with replacement, and the same draw scores both models (paired).
    # It gathers the drawn rows' segment codes and counts them: no sort, no per-row weight arrays.
    n = len(y)
    rng = np.random.default_rng(seed)
    diffs = np.array([difference(rng.integers(0, n, n)) for _ in range(n_boot)])
    diffs = diffs[~np.isnan(diffs)]
    result |= {"estimate": difference(np.arange(n)), "n_valid": len(diffs)}
    if len(diffs):
        result["low"], result["high"] = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
    return result


def slice_metrics(
    frame: pl.DataFrame,
    y_col: str,
    challenger_col: str,
    champion_col: str | None,
    slices: list[str],
    min_rows: int = 200,
    min_positives: int = 5,
) -> pl.DataFrame:
    """ROC AUC and average precision of both models per value of each slice column (SLICE_SCHEMA).

    Values with fewer than min_rows rows or min_positives positives are left out: their AUCs are noise.
    Sorted worst regression first (roc_auc_diff ascending), then by the challenger's roc_auc, so the
    first row is the slice a reviewer should look at. With champion_col None (the first model has no
    champion) the champion and difference columns are null. Null slice values form their own group.
    """
    records = []
    for col in slices:
        for (value,), part in frame.group_by(col):
            y = part[y_col].to_numpy()
            if part.height < min_rows or y.sum() < min_positives:
                continue
            a = score_metrics(y, part[challenger_col].to_numpy())
            # Without a champion its metrics are NaN, which the final fill_nan turns into null.
            b = (
                score_metrics(y, part[champion_col].to_numpy())
                if champion_col
                else dict.fromkeys(["roc_auc", "pr_auc"], NAN)
            )
            records.append(
                {
                    "slice": col,
                    "value": None if value is None else str(value),
                    "rows": part.height,
                    "positives": int(y.sum()),
                    "challenger_roc_auc": a["roc_auc"],
                    "champion_roc_auc": b["roc_auc"],
                    "roc_auc_diff": a["roc_auc"] - b["roc_auc"],
                    "challenger_pr_auc": a["pr_auc"],
                    "champion_pr_auc": b["pr_auc"],
                    "pr_auc_diff": a["pr_auc"] - b["pr_auc"],
                }
            )
    table = pl.DataFrame(records, schema=SLICE_SCHEMA)
    # NaN (no champion, or a slice without negatives) would sort as the largest value; null sorts last.
    return table.with_columns(pl.col(pl.Float64).fill_nan(None)).sort(
        "roc_auc_diff", "challenger_roc_auc", "slice", "value", nulls_last=True
    )


def amount_band(amount: pl.Expr) -> pl.Expr:
    """The amount's band label (AMOUNT_BAND_LABELS, bands closed below: 10 is in "10-50"); null stays null."""
    expr = pl.when(amount.is_null()).then(pl.lit(None, dtype=pl.String()))
    for edge, label in zip(AMOUNT_BAND_EDGES, AMOUNT_BAND_LABELS[:-1], strict=True):
        expr = expr.when(amount < edge).then(pl.lit(label))
    return expr.otherwise(pl.lit(AMOUNT_BAND_LABELS[-1])).alias("amount_band")


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of `actual` against `expected`: sum of (a - e) * ln(a / e) over bins.

    Bins are quantiles of `expected` (duplicate edges merged, so a 0/1 feature gets two bins), closed
    on the right; non-finite values (missing features) count as one extra bin, so a jump in missing
    values is drift too. Empty bins get share `eps` to keep the logarithm finite. Rule of thumb:
    < 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift. NaN when either side is empty.
    """
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if len(expected) == 0 or len(actual) == 0:
        return NAN
    known = expected[np.isfinite(expected)]
    inner = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.unique(np.quantile(known, inner)) if len(known) else np.array([])

    def shares(x: np.ndarray) -> np.ndarray:
        finite = np.isfinite(x)
        counts = np.bincount(np.searchsorted(edges, x[finite], side="left"), minlength=len(edges) + 1)
        return np.maximum(np.append(counts, (~finite).sum()) / len(x), eps)

    e, a = shares(expected), shares(actual)
    return float(np.sum((a - e) * np.log(a / e)))
