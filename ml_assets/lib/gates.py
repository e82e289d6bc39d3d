"""Quality gates a challenger must pass before it may serve. No Dagster: the report asset emits
one blocking asset check per gate from these verdicts, and writes them as tags on the version."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GATES = {
    "not_worse_than_champion": "Challenger not worse than the champion beyond the tolerance (bootstrap CI).",
    "recall_at_alert_budget_not_worse": "Recall at the alert budget (each model at its own threshold, "
    "fitted on the same holdout) not worse than the champion's beyond the tolerance (bootstrap CI).",
    "above_absolute_floors": "ROC-AUC and PR-AUC above their absolute floors.",
    "no_slice_regression": "No slice's ROC-AUC regresses by more than the bound.",
    "calibrated": "Expected calibration error within the bound.",
    "report_complete": "Every metric, plot and slice the report promises is there and finite.",
    # Judged from the version as serving loads it (ml_assets.lib.servable), not from the report.
    "servable": "Loaded as the service and as the plain MLflow pyfunc (a process of its own), it scores "
    "recent transactions as the report did; its features are all computed online; its contract and the "
    "serving configuration are sound.",
}
SERVABLE = "servable"


@dataclass(frozen=True)
class Thresholds:
    max_roc_auc_drop: float = 0.005
    max_pr_auc_drop: float = 0.02
    min_roc_auc: float = 0.85
    min_pr_auc: float = 0.25
    max_slice_roc_auc_drop: float = 0.05
    max_ece: float = 0.02
    # The share of transactions the fraud team can review: each version's decision threshold sends
    # this share of its holdout to review.
    alert_budget: float = 0.005
    max_recall_at_budget_drop: float = 0.05


@dataclass
class Verdict:
    gate: str
    passed: bool
    reason: str
    metadata: dict = field(default_factory=dict)


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def evaluate(report: dict, t: Thresholds) -> list[Verdict]:
    """Judge a report (as `build_report` returns it) against the thresholds, gate by gate (all but
    SERVABLE, which the report asset judges from the loaded version)."""
    ch = report["challenger"]
    out = []

    diffs = report.get("differences")  # None for the first model: no champion to compare
    if diffs is None:
        out.append(Verdict("not_worse_than_champion", True, "no champion yet: nothing to compare against"))
    else:
        worse = [
            f"{m} worse by at least {-d['high']:.4f} (95% CI {d['low']:+.4f}..{d['high']:+.4f}), "
            f"tolerance {tol}"
            for m, tol in (("roc_auc", t.max_roc_auc_drop), ("pr_auc", t.max_pr_auc_drop))
            if (d := diffs[m])["high"] < -tol
        ]
        out.append(
            Verdict(
                "not_worse_than_champion",
                not worse,
                "; ".join(worse)
                or "the champion is not better beyond the tolerance: "
                + ", ".join(f"{m} {diffs[m]['estimate']:+.4f}" for m in ("roc_auc", "pr_auc")),
                {f"{m}_{k}": diffs[m][k] for m in ("roc_auc", "pr_auc") for k in ("estimate", "low", "high")},
            )
        )

    out.append(_recall_at_budget_gate(report, t))

    low = [
        f"{m} {ch[m]:.4f} < floor {floor}"
        for m, floor in (("roc_auc", t.min_roc_auc), ("pr_auc", t.min_pr_auc))
        if not (_finite(ch[m]) and ch[m] >= floor)
    ]
    out.append(
        Verdict(
            "above_absolute_floors",
            not low,
            "; ".join(low)
            or f"roc_auc {ch['roc_auc']:.4f} >= {t.min_roc_auc}, pr_auc {ch['pr_auc']:.4f} >= {t.min_pr_auc}",
            {
                "roc_auc": ch["roc_auc"],
                "pr_auc": ch["pr_auc"],
                "min_roc_auc": t.min_roc_auc,
                "min_pr_auc": t.min_pr_auc,
            },
        )
    )

    slices = [s for s in report["slices"] if s.get("roc_auc_diff") is not None]
    regressed = [s for s in slices if s["roc_auc_diff"] < -t.max_slice_roc_auc_drop]
    worst = min(slices, key=lambda s: s["roc_auc_diff"]) if slices else None
    out.append(
        Verdict(
            "no_slice_regression",
            not regressed,
            (
                "; ".join(f"{s['slice']}={s['value']}: {s['roc_auc_diff']:+.4f}" for s in regressed[:5])
                if regressed
                else (
                    f"worst slice {worst['slice']}={worst['value']} at {worst['roc_auc_diff']:+.4f}, "
                    f"bound -{t.max_slice_roc_auc_drop}"
                    if worst
                    else "no champion (or no slice large enough) to compare"
                )
            ),
            {
                "slices_compared": len(slices),
                "slices_regressed": len(regressed),
                "bound": t.max_slice_roc_auc_drop,
            },
        )
    )

    ece = ch["ece"]
    out.append(
        Verdict(
            "calibrated",
            _finite(ece) and ece <= t.max_ece,
            f"ECE {ece:.4f} {'<=' if _finite(ece) and ece <= t.max_ece else '>'} {t.max_ece}",
            {"ece": ece, "max_ece": t.max_ece},
        )
    )

    missing = [k for k in report["expected"] if not report["present"].get(k)]
    nonfinite = [k for k, v in ch.items() if isinstance(v, float) and not math.isfinite(v)]
    out.append(
        Verdict(
            "report_complete",
            not missing and not nonfinite,
            "; ".join(
                [f"missing: {', '.join(missing)}"] * bool(missing)
                + [f"not finite: {', '.join(nonfinite)}"] * bool(nonfinite)
            )
            or f"all {len(report['expected'])} parts present, every metric finite",
            {"parts": len(report["expected"]), "missing": len(missing)},
        )
    )
    return out


def _recall_at_budget_gate(report: dict, t: Thresholds) -> Verdict:
    """As not_worse_than_champion does for ROC-AUC and PR-AUC: failed only when the challenger is
    worse beyond the tolerance even at the top of the interval, so a small holdout's noise alone
    does not block a model."""
    gate, metric = "recall_at_alert_budget_not_worse", "recall_at_alert_budget"
    diffs = report.get("differences")
    if diffs is None:
        return Verdict(gate, True, "no champion yet: nothing to compare against")
    d, tol, ch, cp = diffs[metric], t.max_recall_at_budget_drop, report["challenger"], report["champion"]
    at = f"at an alert budget of {t.alert_budget:.2%}"
    interval = f"95% CI {d['low']:+.4f}..{d['high']:+.4f}"
    # An interval that can't be computed (no fraud drawn) is no evidence that it is not worse.
    worse = not (_finite(d["high"]) and d["high"] >= -tol)
    reason = (
        f"recall {at} has no interval (no fraud in the holdout?): {interval}"
        if not _finite(d["high"])
        else f"recall {at} worse by at least {-d['high']:.4f} ({interval}), tolerance {tol}"
        if worse
        else f"recall {at}: challenger {ch[metric]:.4f} (threshold {ch['alert_threshold']:.4g}) vs "
        f"champion {cp[metric]:.4f} (threshold {cp['alert_threshold']:.4g}), difference "
        f"{d['estimate']:+.4f} ({interval}), tolerance {tol}"
    )
    return Verdict(
        gate,
        not worse,
        reason,
        {f"recall_at_alert_budget_{k}": d[k] for k in ("estimate", "low", "high")}
        | {"alert_budget": t.alert_budget, "tolerance": tol},
    )


def summary(verdicts: list[Verdict]) -> tuple[str, str]:
    """(verdict tag value, reasons) for the model version."""
    failed = [v for v in verdicts if not v.passed]
    verdict = "failed" if failed else "passed"
    reasons = "; ".join(f"{v.gate}: {v.reason}" for v in (failed or verdicts))
    return verdict, reasons[:4900]  # MLflow tag values are capped at 5000 characters
