"""The validation report's metrics against scikit-learn, on random and on tricky input."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from ml_assets.lib.evaluation import (
    _RANKING_METRICS,
    RECALL_AT_BUDGET,
    _counts,
    _recall_at_budget,
    _segments,
    alert_threshold,
    amount_band,
    bootstrap_difference,
    budget_metrics,
    calibration_bins,
    decisions,
    psi,
    score_metrics,
    slice_metrics,
)


def _scores(n: int, seed: int = 0, fraud_rate: float = 0.05, shift: float = 1.5, decimals: int | None = None):
    """Labels and probability-like scores where fraud scores higher; rounding makes ties."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fraud_rate).astype(int)
    p = 1 / (1 + np.exp(-rng.normal(-3 + shift * y, 1.0)))
    return y, (np.round(p, decimals) if decimals is not None else p)


def _sk_recall_at_fpr(y, p, max_fpr=0.01) -> float:
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr].max())


def _sk_ece(y, p) -> float:
    """ECE from equal-frequency bins written out plainly (no ties in the inputs it is used on)."""
    order = np.argsort(p)
    return sum(abs(p[b].mean() - y[b].mean()) * len(b) / len(y) for b in np.array_split(order, 10))


def _assert_matches_sklearn(y, p):
    m = score_metrics(y, p)
    assert m["rows"] == len(y) and m["positives"] == int(np.sum(y))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["recall_at_1pct_fpr"] == pytest.approx(_sk_recall_at_fpr(y, p), abs=1e-12)
    clipped = np.clip(p, 1e-15, 1 - 1e-15)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, clipped, labels=[0, 1]), rel=1e-9)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1]), rel=1e-9)


@pytest.mark.parametrize(
    "n, seed, decimals",
    [(5_000, 0, None), (5_000, 1, 2), (3_000, 2, 1), (50, 3, None), (400, 4, 0)],
    ids=["continuous", "ties-2dp", "ties-1dp", "tiny", "scores-0-or-1"],
)
def test_metrics_match_sklearn(n, seed, decimals):
    y, p = _scores(n, seed, decimals=decimals)
    assert 0 < y.sum() < n
    _assert_matches_sklearn(y, p)


@pytest.mark.parametrize(
    "p, roc_auc, pr_auc",
    [
        ([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], 1.0, 1.0),  # perfect separation
        ([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], 0.0, None),  # perfectly wrong
        ([0.5] * 6, 0.5, 0.5),  # one big tie: AUC 0.5, AP the fraud rate
    ],
    ids=["perfect", "inverted", "all-tied"],
)
def test_extreme_rankings(p, roc_auc, pr_auc):
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array(p)
    _assert_matches_sklearn(y, p)
    m = score_metrics(y, p)
    assert m["roc_auc"] == roc_auc
    if pr_auc is not None:
        assert m["pr_auc"] == pr_auc


def test_recall_at_fpr_never_splits_tied_scores():
    # 200 negatives, so 1% FPR allows 2 false positives. Three negatives tie with two positives at
    # 0.8: flagging that score costs 3 false positives, so only the positive at 0.9 is reachable.
    # Splitting the tie (as a per-row cumsum would) would wrongly claim recall 1.
    y = np.array([1, 1, 1] + [0] * 200)
    p = np.array([0.9, 0.8, 0.8, 0.8, 0.8, 0.8] + [0.1] * 197)
    m = score_metrics(y, p)
    assert m["recall_at_1pct_fpr"] == pytest.approx(1 / 3)
    assert m["recall_at_1pct_fpr"] == pytest.approx(_sk_recall_at_fpr(y, p))
    # Nothing flagged is allowed too: recall 0 when even the top score costs too many false positives.
    assert score_metrics(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.5, 0.1]))["recall_at_1pct_fpr"] == 0.0


def test_ece_is_equal_frequency_calibration_error():
    y, p = _scores(1_000, seed=5)
    m = score_metrics(y, p)
    assert m["ece"] == pytest.approx(_sk_ece(y, p), rel=1e-12)
    # sklearn's quantile reliability curve has the same 10 bins of 100 rows here.
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    assert m["ece"] == pytest.approx(np.mean(np.abs(prob_true - prob_pred)), rel=1e-9)
    # A perfectly calibrated constant (the fraud rate itself) has ECE 0; a doubled score does not.
    rate = y.mean()
    assert score_metrics(y, np.full(len(y), rate))["ece"] == pytest.approx(0.0, abs=1e-15)
    assert score_metrics(y, np.full(len(y), 2 * rate))["ece"] == pytest.approx(rate)


def test_calibration_bins_keep_ties_together_whatever_the_row_order():
    y, p = _scores(2_000, seed=6, decimals=2)
    mean_p, _, rows = calibration_bins(y, p)
    assert rows.sum() == len(y) and len(rows) <= 10
    assert np.all(np.diff(mean_p) > 0)  # bins are disjoint score ranges
    shuffled = np.random.default_rng(0).permutation(len(y))
    assert score_metrics(y[shuffled], p[shuffled])["ece"] == pytest.approx(score_metrics(y, p)["ece"])


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_for_what_is_undefined(label):
    p = np.array([0.1, 0.4, 0.4, 0.9])
    y = np.full(4, label)
    m = score_metrics(y, p)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["recall_at_1pct_fpr"])
    if label == 1:  # all positives: every threshold has precision 1, as sklearn says
        assert m["pr_auc"] == skm.average_precision_score(y, p) == 1.0
    else:  # no positive: sklearn returns 0 with a warning; the honest answer is "undefined"
        assert math.isnan(m["pr_auc"])
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1]))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1]))
    assert m["ece"] == pytest.approx(abs(p.mean() - label))  # 4 rows: bins of one row each
    assert m["rows"] == 4 and m["positives"] == 4 * label


def test_empty_and_malformed_input():
    m = score_metrics(np.array([], dtype=int), np.array([]))
    assert m["rows"] == 0 and all(math.isnan(v) for k, v in m.items() if k not in ("rows", "positives"))
    with pytest.raises(ValueError, match="0/1"):
        score_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="finite"):
        score_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="one length"):
        score_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    # Extreme probabilities are clipped, not infinite.
    assert math.isfinite(score_metrics(np.array([0, 1]), np.array([1.0, 0.0]))["log_loss"])


@pytest.mark.parametrize("metric", sorted(_RANKING_METRICS))
def test_a_resampled_replicate_matches_sklearn_on_the_drawn_rows(metric):
    # The bootstrap counts drawn rows into score segments cut only around positives; that must be the
    # same as scoring the drawn rows themselves, duplicates and ties included.
    y, p = _scores(3_000, seed=7, decimals=2)
    codes, n_segments = _segments(y, p)
    reference = {
        "roc_auc": skm.roc_auc_score,
        "pr_auc": skm.average_precision_score,
        "recall_at_1pct_fpr": _sk_recall_at_fpr,
    }[metric]
    rng = np.random.default_rng(1)
    for _ in range(3):
        rows = rng.integers(0, len(y), len(y))
        value = _RANKING_METRICS[metric](*_counts(codes[rows], n_segments))
        assert value == pytest.approx(reference(y[rows], p[rows]), abs=1e-12)


def _recall_at(y, p, threshold) -> float:
    """Recall when every score >= threshold is sent to review, written out plainly."""
    return float((np.asarray(p) >= threshold)[np.asarray(y) == 1].mean())


@pytest.mark.parametrize("decimals", [None, 2], ids=["continuous", "ties-2dp"])
def test_a_resampled_replicate_gives_the_recall_at_the_replicates_own_threshold(decimals):
    # Recall at the budget from the compressed segments, on drawn rows (duplicates, ties), is the
    # recall at the threshold alert_threshold fits on those very rows.
    y, p = _scores(3_000, seed=7, decimals=decimals)
    codes, n_segments = _segments(y, p)
    rng = np.random.default_rng(2)
    for budget in (0.005, 0.02, 0.1):
        for _ in range(3):
            rows = rng.integers(0, len(y), len(y))
            value = _recall_at_budget(*_counts(codes[rows], n_segments), budget)
            assert value == _recall_at(y[rows], p[rows], alert_threshold(p[rows], budget))


def test_the_alert_threshold_gives_the_budget_within_its_sampling_error():
    """Fitted on n scores drawn from a known distribution (logistic of N(-3, 1)): on those rows it
    sends exactly round(budget * n) of them to review (no ties), and on the distribution itself its
    true alert rate is the budget within 3 binomial standard errors, sqrt(b (1 - b) / n): the count
    of draws above the true budget quantile is Binomial(n, b), so this fails by chance ~0.3% of
    the time for a random seed (never for this fixed one)."""
    n, budget = 200_000, 0.005
    z = np.random.default_rng(21).normal(-3.0, 1.0, n)
    p = 1 / (1 + np.exp(-z))
    t = alert_threshold(p, budget)
    assert np.sum(p >= t) == int(budget * n)
    true_rate = 0.5 * math.erfc((math.log(t / (1 - t)) + 3.0) / math.sqrt(2))  # P(score >= t)
    standard_error = math.sqrt(budget * (1 - budget) / n)
    assert abs(true_rate - budget) < 3 * standard_error, (true_rate, budget, standard_error)


def test_the_alert_threshold_never_splits_ties_and_comes_closest_to_the_budget():
    y, p = _scores(5_000, seed=22, decimals=2)
    for budget in (0.005, 0.01, 0.05, 0.3):
        t = alert_threshold(p, budget)
        assert t in p
        rate = np.mean(p >= t)
        # Every other threshold between distinct scores lands at least as far from the budget.
        others = [np.mean(p >= v) for v in np.unique(p)] + [0.0]
        assert all(abs(rate - budget) <= abs(r - budget) for r in others), (budget, rate)
        m = budget_metrics(y, p, budget)
        assert (m["alert_threshold"], m["alert_rate"]) == (t, rate)
        assert m[RECALL_AT_BUDGET] == _recall_at(y, p, t)
    # A tie run across the budget: 1 row alone, then 7 tied rows, of 1,000 (coarse scores, as a
    # model of few trees gives): at 0.5%, 8 rows (0.8%) are closer than 1 (0.1%); at 0.3%, not.
    coarse = np.concatenate([[0.9], np.full(7, 0.8), np.linspace(0.1, 0.5, 992)])
    assert alert_threshold(coarse, 0.005) == 0.8
    assert alert_threshold(coarse, 0.003) == 0.9
    # Sending nothing is closest (the top is one big tie): the threshold is above the top score.
    t = alert_threshold(np.array([0.2, 0.9, 0.9, 0.9, 0.1]), 0.2)
    assert t > 0.9 and decisions([0.2, 0.9], t) == ["approve", "approve"]
    assert math.isnan(alert_threshold(np.array([]), 0.01))
    with pytest.raises(ValueError, match="finite"):
        alert_threshold(np.array([0.1, np.nan]), 0.01)
    assert decisions([0.3, 0.5, 0.7], 0.5) == ["approve", "review", "review"]  # score >= threshold
    assert decisions([0.3, 0.5], None) == [None, None]  # no threshold, no invented decision


def _gate_report(y, challenger, champion, budget):
    """What gates.evaluate reads, from real metrics of constructed scores (no plots or slices)."""
    metrics = {name: score_metrics(y, p) | budget_metrics(y, p, budget) for name, p in
               (("challenger", challenger), ("champion", champion))}  # fmt: skip
    diffs = {
        m: bootstrap_difference(y, challenger, champion, m, n_boot=200, alert_budget=budget)
        for m in ("roc_auc", "pr_auc", RECALL_AT_BUDGET)
    }
    return metrics | {"differences": diffs, "slices": [], "expected": [], "present": {}}


def test_the_recall_gate_passes_and_fails_where_it_should():
    """Champion and challengers on one holdout of 20,000 rows at 1% fraud, a budget of 2% (about
    200 frauds, 400 alerts): a challenger that ranks frauds as well passes, a better one passes,
    one that ranks them clearly worse fails, naming the interval; the tolerance moves the line."""
    from ml_assets.lib.gates import Thresholds, evaluate

    budget = 0.02
    y, champion = _scores(20_000, seed=23, fraud_rate=0.01, shift=3.0)
    rng = np.random.default_rng(24)
    noisy = champion + rng.normal(0, 0.002, len(y))  # the same ranking, up to noise
    better = 1 / (1 + np.exp(-rng.normal(-3 + 4.0 * y, 1.0)))
    worse = 1 / (1 + np.exp(-rng.normal(-3 + 1.5 * y, 1.0)))

    def verdict(challenger, **thresholds):
        t = Thresholds(alert_budget=budget, **thresholds)
        report = _gate_report(y, challenger, champion, budget)
        (v,) = [v for v in evaluate(report, t) if v.gate == "recall_at_alert_budget_not_worse"]
        return v, report["differences"][RECALL_AT_BUDGET]

    for challenger in (noisy, better):
        v, d = verdict(challenger)
        assert v.passed and d["high"] >= -Thresholds.max_recall_at_budget_drop, (v.reason, d)
    v, d = verdict(worse)
    assert d["estimate"] < -0.2 and d["high"] < -Thresholds.max_recall_at_budget_drop, d
    assert not v.passed and "worse by at least" in v.reason and "95% CI" in v.reason, v.reason
    assert v.metadata["recall_at_alert_budget_high"] == d["high"]
    # A tolerance wider than the worst the interval allows lets it through.
    assert verdict(worse, max_recall_at_budget_drop=-d["low"] + 0.01)[0].passed
    # Without a champion there is nothing to compare; without any fraud there is no interval.
    first = evaluate(_gate_report(y, better, champion, budget) | {"differences": None}, Thresholds())
    assert next(v for v in first if v.gate == "recall_at_alert_budget_not_worse").passed
    no_fraud = np.zeros_like(y)
    report = _gate_report(no_fraud, better, champion, budget)
    (v,) = [v for v in evaluate(report, Thresholds()) if v.gate == "recall_at_alert_budget_not_worse"]
    assert not v.passed and "no interval" in v.reason


def test_bootstrap_difference_interval():
    y, better = _scores(4_000, seed=8, shift=2.0)
    worse = better + np.random.default_rng(9).normal(0, 0.05, len(y))  # the same model, noisier
    r = bootstrap_difference(y, better, worse, "roc_auc", n_boot=200, seed=0)
    expected = score_metrics(y, better)["roc_auc"] - score_metrics(y, worse)["roc_auc"]
    assert r["estimate"] == pytest.approx(expected, abs=1e-12)
    assert r["low"] <= r["estimate"] <= r["high"] and r["low"] < r["high"]
    assert r["low"] > 0  # paired: the shared holdout difficulty cancels, so the gain is clear
    assert r["n_boot"] == r["n_valid"] == 200 and r["metric"] == "roc_auc"
    # Deterministic by seed, different with another seed.
    assert bootstrap_difference(y, better, worse, "roc_auc", seed=0) == r
    assert bootstrap_difference(y, better, worse, "roc_auc", seed=1)["low"] != r["low"]
    # The same model against itself: no difference in any replicate.
    same = bootstrap_difference(y, better, better, "pr_auc", n_boot=50)
    assert same["estimate"] == same["low"] == same["high"] == 0.0


def test_bootstrap_interval_narrows_with_more_data():
    def width(n: int) -> float:
        y, a = _scores(n, seed=10)
        b = a + np.random.default_rng(11).normal(0, 0.05, n)
        r = bootstrap_difference(y, a, b, "pr_auc", n_boot=100)
        return r["high"] - r["low"]

    assert width(20_000) < 0.6 * width(2_000)  # about 1/sqrt(10) in theory


def test_bootstrap_runs_on_a_full_holdout():
    # 200 replicates on 100,000 rows: well under a second here; only that it completes is asserted.
    y, a = _scores(100_000, seed=12, fraud_rate=0.01)
    b = np.round(a, 2)
    r = bootstrap_difference(y, a, b, "pr_auc", n_boot=200)
    assert r["n_valid"] == 200 and r["low"] <= r["estimate"] <= r["high"]


def test_bootstrap_degenerate_and_unsupported():
    y = np.array([0, 0, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.9])
    r = bootstrap_difference(y, p, p[::-1], "roc_auc", n_boot=100)
    assert r["estimate"] == 1.0 - 0.0
    assert 0 < r["n_valid"] < 100  # replicates that drew no fraud are skipped, and counted
    empty = bootstrap_difference(np.array([], dtype=int), np.array([]), np.array([]), "roc_auc")
    assert math.isnan(empty["estimate"]) and empty["n_valid"] == 0
    with pytest.raises(ValueError, match="supports"):
        bootstrap_difference(y, p, p, "ece")
    with pytest.raises(ValueError, match="with alert_budget"):
        bootstrap_difference(y, p, p, RECALL_AT_BUDGET)  # a budget is needed


def _slice_frame() -> pl.DataFrame:
    """Challenger better than the champion on web, worse on pos; 'atm' too small, 'moto' too few frauds."""
    rng = np.random.default_rng(13)
    parts = []
    for channel, n, rate, challenger_noise, champion_noise in [
        ("web", 2_000, 0.05, 0.3, 1.5),
        ("pos", 2_000, 0.05, 1.5, 0.3),
        ("app", 2_000, 0.05, 0.8, 0.8),
        ("atm", 150, 0.10, 0.5, 0.5),
        ("moto", 1_000, 0.003, 0.5, 0.5),
    ]:
        y = (rng.random(n) < rate).astype(int)
        y[:1] = 1  # at least one fraud everywhere, so 'moto' is excluded by min_positives, not by luck
        parts.append(
            pl.DataFrame(
                {
                    "channel": channel,
                    "is_fraud": y,
                    "challenger": y + rng.normal(0, challenger_noise, n),
                    "champion": y + rng.normal(0, champion_noise, n),
                    "amount": rng.choice([5.0, 30.0, 120.0], n),
                }
            )
        )
    return pl.concat(parts)


def test_slice_metrics_worst_regression_first():
    frame = _slice_frame()
    out = slice_metrics(frame, "is_fraud", "challenger", "champion", ["channel"])
    assert out.schema == pl.Schema(
        {**dict.fromkeys(["slice", "value"], pl.String()), **dict.fromkeys(["rows", "positives"], pl.Int64())}
        | dict.fromkeys(out.columns[4:], pl.Float64())
    )
    assert out["value"].to_list() == ["pos", "app", "web"]  # atm: < 200 rows; moto: < 5 frauds
    assert out["roc_auc_diff"].is_sorted()
    pos = frame.filter(pl.col("channel") == "pos")
    row = out.row(0, named=True)
    a = score_metrics(pos["is_fraud"].to_numpy(), pos["challenger"].to_numpy())
    b = score_metrics(pos["is_fraud"].to_numpy(), pos["champion"].to_numpy())
    assert row["rows"] == pos.height and row["positives"] == pos["is_fraud"].sum()
    assert row["roc_auc_diff"] == pytest.approx(a["roc_auc"] - b["roc_auc"]) and row["roc_auc_diff"] < -0.05
    assert row["pr_auc_diff"] == pytest.approx(a["pr_auc"] - b["pr_auc"])


def test_slice_metrics_stack_slice_columns_and_work_without_champion():
    frame = _slice_frame().with_columns(amount_band(pl.col("amount")))
    out = slice_metrics(frame, "is_fraud", "challenger", None, ["channel", "amount_band"], min_positives=5)
    assert set(out["slice"]) == {"channel", "amount_band"}
    assert set(out.filter(pl.col("slice") == "amount_band")["value"]) == {"<10", "10-50", "50-200"}
    for col in ["champion_roc_auc", "roc_auc_diff", "champion_pr_auc", "pr_auc_diff"]:
        assert out[col].null_count() == out.height
    assert out["challenger_roc_auc"].is_sorted()  # without a champion: the weakest slice first
    assert slice_metrics(frame, "is_fraud", "challenger", None, ["channel"], min_rows=10**6).is_empty()


def test_amount_band():
    amounts = [None, 0.0, 9.99, 10.0, 49.99, 50.0, 199.0, 200.0, 999.99, 1000.0, 25_000.0]
    out = pl.DataFrame({"amount": amounts}, schema={"amount": pl.Float64}).select(
        amount_band(pl.col("amount"))
    )
    assert out.columns == ["amount_band"]
    assert out["amount_band"].to_list() == [
        None, "<10", "<10", "10-50", "10-50", "50-200", "50-200", "200-1000", "200-1000", ">=1000", ">=1000",
    ]  # fmt: skip


def test_psi():
    rng = np.random.default_rng(14)
    base = rng.normal(0, 1, 20_000)
    assert psi(base, base) == 0.0
    assert psi(base, rng.normal(0, 1, 20_000)) < 0.01  # another sample of the same distribution
    assert psi(base, rng.normal(1, 1, 20_000)) > 0.25  # shifted by one standard deviation
    # A 0/1 feature gets two bins, not one: a jump in its rate is drift.
    flags = (rng.random(10_000) < 0.1).astype(float)
    assert psi(flags, (rng.random(10_000) < 0.5).astype(float)) > 0.25
    # Missing values are a bin of their own: half the values going missing is drift.
    half_missing = np.where(rng.random(20_000) < 0.5, np.nan, rng.normal(0, 1, 20_000))
    assert psi(base, half_missing) > 0.25
    assert math.isnan(psi(base, np.array([])))


def test_live_alert_rates_per_arm_decide_batch_rows_by_the_versions_threshold():
    """monitoring.arm_alerts: batch scores are decided by their version's threshold (score >= it),
    live rows keep the decision the service made; a version without a threshold decides nothing."""
    from ml_assets.lib.monitoring import arm_alerts

    scored = pl.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d", "a", "b", "e"],
            "arm": ["batch:champion"] * 3 + ["batch:canary"] + ["live:champion"] * 2 + ["batch:canary"],
            "model_version": ["1", "1", "1", "2", "1", "1", "2"],
            "score": [0.9, 0.5, 0.1, 0.7, 0.9, 0.5, 0.2],
            "decision": [None, None, None, None, "approve", "review", None],
        }
    )
    labels = pl.DataFrame({"transaction_id": ["a", "b", "c"], "is_fraud": [1, 1, 0]})
    out = arm_alerts(scored, labels, {"1": (0.5, 0.005)})
    rows = {(r["arm"], r["model_version"]): r for r in out.iter_rows(named=True)}
    champion = rows["batch:champion", "1"]
    assert (champion["decided"], champion["alerts"], champion["alert_rate"]) == (3, 2, 2 / 3)  # 0.5 >= 0.5
    assert (champion["alert_budget"], champion["decision_threshold"], champion["recall"]) == (0.005, 0.5, 1.0)
    live = rows["live:champion", "1"]
    assert (live["alerts"], live["recall"]) == (1, 0.5)  # as the service decided, not re-decided
    canary = rows["batch:canary", "2"]
    assert (canary["rows"], canary["decided"], canary["alert_rate"], canary["recall"]) == (2, 0, None, None)
