"""model_validation_report: the challenger against the champion on the same holdout, and the gates.

Each gate is a blocking asset check on the report, computed from the report's own numbers, so
nothing downstream (the promotion sensor, `deployed_model`) sees a challenger that failed one.
"""

import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl

from ml_assets.defs.metadata import frame_markdown, markdown_table, png_markdown
from ml_assets.defs.policies import storage_retry
from ml_assets.defs.resources import LakeResource, MlflowResource, QualityGatesResource
from ml_assets.defs.run_events import run_materialization
from ml_assets.lib import gates, registry, tables
from ml_assets.lib.features import LABEL
from ml_assets.lib.servable import Check as ServableCheck
from ml_assets.lib.training import matrix

REPORT_KEY = "model_validation_report"
METRICS = ["roc_auc", "pr_auc", "recall_at_1pct_fpr", "log_loss", "brier", "ece"]
# Each model at the alert budget, at its own threshold fitted on the holdout (evaluation.budget_metrics).
BUDGET_METRICS = ["alert_threshold", "alert_rate", "recall_at_alert_budget"]


def _metrics_table(report: dict) -> str:
    rows = []
    for m in METRICS + BUDGET_METRICS:
        ch = report["challenger"][m]
        cp = report["champion"][m] if report["champion"] else None
        rows.append((m, ch, cp if cp is not None else "-", ch - cp if cp is not None else "-"))
    return markdown_table(["metric", "challenger", "champion", "difference"], rows)


def _differences_table(report: dict) -> str:
    if not report["differences"]:
        return "No champion yet: the first model is judged on absolute floors only."
    rows = [(m, d["estimate"], d["low"], d["high"], d["n_boot"]) for m, d in report["differences"].items()]
    return markdown_table(["challenger - champion", "estimate", "95% low", "95% high", "bootstrap"], rows)


def _set_thresholds(client, name: str, report: dict, challenger: str, champion: str | None) -> dict:
    """The decision threshold each version serves with (registry.TAG_DECISION_THRESHOLD), beside the
    budget it was sized for. The challenger's is always the one fitted now; the champion keeps the
    threshold it has been serving with, and gets the one fitted on this holdout only if it has none
    (a version from before thresholds). Returns version -> (threshold, whether set now)."""
    budget = repr(float(report["alert_budget"]))
    out = {}
    for version, role in ((challenger, "challenger"), (champion, "champion")):
        if version is None:
            continue
        fitted = repr(float(report[role]["alert_threshold"]))
        tags = client.get_model_version(name, version).tags
        if role == "champion" and registry.TAG_DECISION_THRESHOLD in tags:
            out[version] = (tags[registry.TAG_DECISION_THRESHOLD], False)
            continue
        client.set_model_version_tag(name, version, registry.TAG_DECISION_THRESHOLD, fitted)
        client.set_model_version_tag(name, version, registry.TAG_ALERT_BUDGET, budget)
        out[version] = (fitted, True)
    return out


def _challenger(context: dg.AssetExecutionContext, client, name: str) -> str:
    """The version this run's fraud_model registered: @challenger is whichever run registered
    last, and another retraining run may have moved it since. A report run on its own (without
    fraud_model in its run) judges @challenger, and logs that it does."""
    meta = run_materialization(context.instance, context.run, "fraud_model")
    if meta is not None:
        return str(meta["model_version"].value)
    challenger = registry.alias_version(client, name, registry.CHALLENGER)
    if challenger is None:
        raise dg.Failure(
            f"{name} has no '{registry.CHALLENGER}' alias: materialize fraud_model first", allow_retries=False
        )
    context.log.warning(
        f"fraud_model is not materialized in this run: judging @{registry.CHALLENGER}, v{challenger}"
    )
    return challenger


def _features_section(client, name: str, challenger: str, champion: str | None, models: dict) -> dict:
    """The two versions' feature lists and dbt feature-model hashes, side by side: a reviewer sees
    when the features changed meaning between them (a different hash), and which were added or
    removed."""
    hashes = {
        role: client.get_model_version(name, v).tags.get(registry.TAG_FEATURES_DBT_HASH, "not recorded")
        for role, v in (("challenger", challenger), ("champion", champion))
        if v is not None
    }
    ours = models[challenger][1]
    if champion is None:
        return {"hashes": hashes, "text": f"{len(ours)} features, dbt feature model {hashes['challenger']}"}
    theirs = models[champion][1]
    added = [c for c in ours if c not in theirs]
    removed = [c for c in theirs if c not in ours]
    same = "the same" if hashes["challenger"] == hashes["champion"] else "CHANGED"
    text = (
        f"dbt feature model: challenger {hashes['challenger']}, champion {hashes['champion']} ({same}); "
        f"{len(ours)} features vs {len(theirs)}; added: {', '.join(added) or 'none'}; "
        f"removed: {', '.join(removed) or 'none'}"
    )
    return {"hashes": hashes, "text": text}


@dg.asset(
    deps=["fraud_model"],
    kinds={"mlflow", "matplotlib"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
    check_specs=[
        dg.AssetCheckSpec(gate, asset=REPORT_KEY, blocking=True, description=text)
        for gate, text in gates.GATES.items()
    ],
)
def model_validation_report(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    mlflow: MlflowResource,
    quality_gates: QualityGatesResource,
) -> dg.MaterializeResult:
    """Evaluates the version this run's fraud_model registered (the challenger) and
    `fraud_detector@champion` on the challenger's holdout rows:
    ROC-AUC, PR-AUC, recall at 1% FPR, log loss, Brier, calibration error, each model's decision
    threshold for the alert budget and its recall there, a bootstrap interval for the differences,
    metrics by slice (worst regression first) and plots. Each quality gate is a blocking check; the
    verdict and its reasons are written as tags on the challenger version, with its decision
    threshold (the champion's too when it has none), and the whole report as one HTML page on its
    MLflow run. The `servable` gate loads the version as the service and as the plain pyfunc in a
    process of its own and checks they score a sample of the holdout as the report did. Each model
    scores its own features; the report shows both versions' dbt feature-model hashes side by side.
    """
    from ml_assets.lib.report import build_report
    from ml_assets.lib.report_html import render_report

    started = time.perf_counter()
    client = mlflow.client()
    name = mlflow.registered_model_name
    challenger = _challenger(context, client, name)
    champion = registry.alias_version(client, name, registry.CHAMPION)
    version = client.get_model_version(name, challenger)
    snapshot = int(version.tags[registry.TAG_TRAINING_SET_VERSION])
    holdout = lake.scan(tables.TRAINING_SET, version=snapshot).filter(pl.col("split") == "holdout").collect()
    y = holdout[LABEL].to_numpy()
    # The servable gate begins first: its pyfunc process starts while the report is built.
    bronze = lake.scan(tables.BRONZE["transactions"])
    with ServableCheck(mlflow.tracking_uri, name, challenger, lake.root, bronze, holdout) as gate:
        # Each model scores its own columns of the same rows: a champion trained before a feature
        # was added never sees it.
        models = {v: mlflow.load_model(v) for v in {challenger, champion} if v is not None}
        lacking = [c for c in models[champion][1] if c not in holdout.columns] if champion else []
        if lacking:
            raise dg.Failure(
                f"champion v{champion} needs {lacking}, which the challenger's snapshot v{snapshot} lacks: "
                "a feature the champion needs was removed (the features build should have refused it)",
                allow_retries=False,
            )
        p = {v: booster.predict(matrix(holdout, columns)) for v, (booster, columns) in models.items()}
        p_challenger, p_champion = p[challenger], p.get(champion)
        booster, columns = models[challenger]
        gains = booster.feature_importance(importance_type="gain").tolist()
        report = build_report(
            holdout, y, p_challenger, p_champion, columns, gains, quality_gates.alert_budget
        )
        servable = gate.judge(p_challenger)
    features = _features_section(client, name, challenger, champion, models)
    verdicts = gates.evaluate(report, quality_gates)
    verdicts.append(gates.Verdict(gates.SERVABLE, servable.passed, servable.reason, servable.metadata))
    verdict, reasons = gates.summary(verdicts)
    # Whatever the verdict: the threshold is what this holdout says of the version, and the report
    # shows it either way (a failed version is never promoted, so never serves with it).
    thresholds = _set_thresholds(client, name, report, challenger, champion)
    client.set_model_version_tag(name, challenger, registry.TAG_VERDICT, verdict)
    client.set_model_version_tag(name, challenger, registry.TAG_VERDICT_REASONS, reasons)
    client.set_model_version_tag(name, challenger, "validation_report_run", context.run.run_id)

    images, slices = report["images"], report["slice_table"]
    sections = [
        ("Verdict", f"{verdict.upper()}: {reasons}"),
        ("Models", f"challenger v{challenger} vs champion {('v' + champion) if champion else 'none'}, "
                   f"{y.size:,} holdout rows ({int(y.sum())} frauds), training snapshot v{snapshot}"),
        ("Decision thresholds", f"alert budget {quality_gates.alert_budget:.2%} of transactions; "
                                + ", ".join(f"v{v} serves with {t}" for v, (t, _) in thresholds.items())),
        ("Features", features["text"]),
    ]  # fmt: skip
    html = render_report(
        f"{name} v{challenger}: validation report",
        sections,
        images,
        {
            "metrics": pl.DataFrame(
                [
                    {
                        "metric": m,
                        "challenger": report["challenger"][m],
                        "champion": report["champion"][m] if report["champion"] else None,
                    }  # fmt: skip
                    for m in METRICS + BUDGET_METRICS
                ]
            ),
            "slices (worst regression first)": slices,
            "gates": pl.DataFrame(
                [{"gate": v.gate, "passed": v.passed, "reason": v.reason} for v in verdicts]
            ),
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "validation_report.html"
        path.write_text(html)
        client.log_artifact(version.run_id, str(path))
        (Path(tmp) / "validation_report.json").write_text(
            json.dumps(
                {k: report[k] for k in ("challenger", "champion", "differences", "slices")}, default=str
            )
        )
        client.log_artifact(version.run_id, str(Path(tmp) / "validation_report.json"))

    plots_md = "\n\n".join(f"**{k}**\n\n{png_markdown(v, k)}" for k, v in images.items())
    context.log.info(f"v{challenger} vs {champion or 'no champion'}: {verdict} ({reasons[:300]})")
    return dg.MaterializeResult(
        metadata={
            "challenger_version": challenger,
            "champion_version": champion or "none",
            "verdict": verdict,
            "holdout_rows": int(y.size),
            "holdout_frauds": int(y.sum()),
            "challenger_roc_auc": float(report["challenger"]["roc_auc"]),
            "challenger_pr_auc": float(report["challenger"]["pr_auc"]),
            "alert_budget": quality_gates.alert_budget,
            # The figure a fraud team plans with: what each model sends to review and catches there.
            "at_alert_budget": dg.MetadataValue.json(
                {
                    f"v{v}": {
                        "role": role,
                        "holdout_threshold": report[role]["alert_threshold"],
                        "holdout_alert_rate": report[role]["alert_rate"],
                        "holdout_recall": report[role]["recall_at_alert_budget"],
                        "serving_threshold": thresholds[v][0],
                        "threshold_tag_set_now": thresholds[v][1],
                    }
                    for v, role in ((challenger, "challenger"), (champion, "champion"))
                    if v is not None
                }
            ),
            "metrics": dg.MetadataValue.md(_metrics_table(report)),
            "difference_ci": dg.MetadataValue.md(_differences_table(report)),
            "worst_slices": dg.MetadataValue.md(frame_markdown(slices, 15)),
            "plots": dg.MetadataValue.md(plots_md),
            "html_report": dg.MetadataValue.url(mlflow.run_url(version.run_id)),
            "features_dbt_hash": dg.MetadataValue.json(features["hashes"]),
            "features": dg.MetadataValue.md(features["text"]),
            "seconds": round(time.perf_counter() - started, 2),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=v.gate,
                passed=v.passed,
                metadata={"reason": v.reason, **{k: float(x) for k, x in v.metadata.items()}},
            )
            for v in verdicts
        ],
    )
