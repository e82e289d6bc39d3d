"""The closed loop: retrain when the world drifts or live performance falls; promote a canary (or
shadow) candidate that holds up on live outcomes, and take one off that does not.

Both read the monitoring tables (Delta) and decide on the newest monitored day. Neither keeps
state in its cursor, which is lost with a reset (`dagster sensor cursor --delete`, a new
DAGSTER_HOME): the retraining cooldown counts from the last request as the registry records it
(the version it produced carries the request's tags) and the instance (its run, before that
version exists); a canary decision's runs carry the decision (defs/decisions.py), so one under way
or done is not asked for twice, and one that failed is asked for again, a bounded number of times.
"""

import json
from datetime import date, timedelta

import dagster as dg
import numpy as np
import polars as pl

from ml_assets.defs.decisions import DECIDED_BY_TAG, first_request, follow_up, last_run
from ml_assets.defs.monitoring.assets import version_reference
from ml_assets.defs.resources import AlertsResource, LakeResource, MlflowResource, MonitoringResource
from ml_assets.defs.serving_state.checks import parity_hold
from ml_assets.lib import registry, rollout, tables
from ml_assets.lib.monitoring import SCORE

CHAMPION_ARM = f"batch:{registry.CHAMPION}"
RETRAINING_SENSOR, CANARY_SENSOR = "retraining_sensor", "canary_sensor"


def _latest(lake: LakeResource, table: str, column: str) -> tuple[date | None, pl.DataFrame]:
    if not lake.exists(table):
        return None, pl.DataFrame()
    frame = lake.scan(table)
    day = frame.select(pl.col(column).max()).collect().item()
    return day, frame.filter(pl.col(column) == day).collect() if day else pl.DataFrame()


def retraining_reasons(lake: LakeResource, mlflow: MlflowResource, monitoring: MonitoringResource):
    """(newest monitored day, reasons to retrain on it)."""
    drift_day, drift = _latest(lake, tables.DRIFT, "event_date")
    perf_day, perf = _latest(lake, tables.LIVE_PERFORMANCE, "as_of_date")
    reasons = []
    if drift.height:
        over = drift.filter(pl.col("psi") > monitoring.psi_threshold).sort("psi", descending=True)
        reasons += [
            f"{r['feature']} PSI {r['psi']:.3f} > {monitoring.psi_threshold} on {drift_day}"
            for r in over.head(3).iter_rows(named=True)
        ]
    client = mlflow.client()
    version = registry.alias_version(client, mlflow.registered_model_name, registry.CHAMPION)
    champion = (
        perf.filter((pl.col("arm") == CHAMPION_ARM) & (pl.col("model_version") == version))
        if perf.height
        else perf
    )
    if champion.height and champion["positives"][0] >= monitoring.min_live_positives:
        live = champion.row(0, named=True)
        run_id = client.get_model_version(mlflow.registered_model_name, version).run_id
        expected = client.get_run(run_id).data.metrics.get("holdout_pr_auc")
        if live["roc_auc"] is not None and live["roc_auc"] < monitoring.live_roc_auc_floor:
            reasons.append(
                f"champion v{version} live ROC-AUC {live['roc_auc']:.3f} < {monitoring.live_roc_auc_floor}"
            )
        floor = expected * (1 - monitoring.max_live_pr_auc_relative_drop) if expected else None
        if floor and live["pr_auc"] is not None and live["pr_auc"] < floor:
            reasons.append(
                f"champion v{version} live PR-AUC {live['pr_auc']:.3f} < {floor:.3f} "
                f"({1 - monitoring.max_live_pr_auc_relative_drop:.0%} of its holdout {expected:.3f})"
            )
    days = [d for d in (drift_day, perf_day) if d]
    return (max(days) if days else None), reasons


def last_retraining_request(instance: dg.DagsterInstance, client, name: str) -> tuple[date, str] | None:
    """(the newest monitored day of the last retraining request, where that is recorded), or None.

    The registry first: every version the sensor's runs registered carries the request's day, and
    the registry outlives the Dagster instance. Then the instance: the last run requested, which
    has not registered a version yet (queued, training), or failed before it could.
    """
    found = []
    for mv in client.search_model_versions(
        f"name = '{name}' AND tags.{registry.TAG_RETRAIN_AS_OF} LIKE '%'",
        max_results=10,
        order_by=["version_number DESC"],
    ):
        found.append(
            (date.fromisoformat(mv.tags[registry.TAG_RETRAIN_AS_OF]), f"v{mv.version} in the registry")
        )
    run = last_run(instance, {DECIDED_BY_TAG: RETRAINING_SENSOR})
    if run is not None and registry.TAG_RETRAIN_AS_OF in run.tags:
        found.append((date.fromisoformat(run.tags[registry.TAG_RETRAIN_AS_OF]), f"run {run.run_id[:8]}"))
    # The newest day; on a tie the registry's record, which is the one that lasts.
    return max(found, key=lambda f: f[0]) if found else None


@dg.sensor(
    name=RETRAINING_SENSOR,
    job_name="retraining_job",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests retraining when features or scores drift, or the champion's live "
    "performance falls; at most once per cooldown, never while a candidate is being judged.",
)
def retraining_sensor(
    context: dg.SensorEvaluationContext,
    lake: LakeResource,
    mlflow: MlflowResource,
    monitoring: MonitoringResource,
) -> dg.SensorResult:
    day, reasons = retraining_reasons(lake, mlflow, monitoring)
    if day is None or not reasons:
        return dg.SensorResult(skip_reason=f"no reason to retrain as of {day}")
    client = mlflow.client()
    candidate = [
        a
        for a in (registry.CANARY, registry.SHADOW)
        if registry.alias_version(client, mlflow.registered_model_name, a)
    ]
    if candidate:
        return dg.SensorResult(skip_reason=f"a {candidate[0]} candidate is still being judged")
    last = last_retraining_request(context.instance, client, mlflow.registered_model_name)
    if last and day < last[0] + timedelta(days=monitoring.retraining_cooldown_days):
        return dg.SensorResult(
            skip_reason=f"cooling down since {last[0]} (asked for then: {last[1]}) ({'; '.join(reasons)})"
        )
    context.log.info(f"retraining as of {day}: {'; '.join(reasons)}")
    tags = {
        registry.TAG_RETRAIN_REASON: "; ".join(reasons)[:1000],
        registry.TAG_RETRAIN_AS_OF: day.isoformat(),
        DECIDED_BY_TAG: RETRAINING_SENSOR,
    }
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"retrain-as-of-{day}", tags=tags)])


def candidate_verdict(
    perf: pl.DataFrame, alias: str, version: str, champion_version: str, monitoring: MonitoringResource
) -> tuple[str, str] | None:
    """("promote_candidate" | "abort_candidate", why), or None while outcomes are too few.

    Only the deployed versions' own rows count: the window may still hold an earlier candidate's.
    """
    mine = perf.filter((pl.col("arm") == f"batch:{alias}") & (pl.col("model_version") == version))
    champion = perf.filter((pl.col("arm") == CHAMPION_ARM) & (pl.col("model_version") == champion_version))
    if not mine.height or not champion.height or mine["positives"][0] < monitoring.canary_min_positives:
        return None
    c, m = champion.row(0, named=True), mine.row(0, named=True)
    gap = c["pr_auc"] - m["pr_auc"]
    summary = (
        f"{alias} v{m['model_version']} live PR-AUC {m['pr_auc']:.3f} vs champion v{c['model_version']} "
        f"{c['pr_auc']:.3f} over {m['positives']} labelled frauds"
    )
    if gap > monitoring.canary_max_pr_auc_drop:
        return "abort_candidate", f"{summary}: trails by {gap:.3f} > {monitoring.canary_max_pr_auc_drop}"
    return "promote_candidate", f"{summary}: holds up"


def offline_scores(
    lake: LakeResource, mlflow: MlflowResource, version: str
) -> tuple[np.ndarray, float | None]:
    """(the scores `version` gave its own training snapshot's validation and holdout rows, empty
    when it records no snapshot; its decision threshold, None when it has none): what its rollout
    steps hold its live scores to, and where an alert begins for it."""
    tags = mlflow.client().get_model_version(mlflow.registered_model_name, version).tags
    threshold = registry.decision_threshold(tags)
    if registry.TAG_TRAINING_SET_VERSION not in tags:
        return np.array([]), threshold
    return version_reference(lake, mlflow, version)[SCORE].to_numpy(), threshold


def candidate_decision(
    lake: LakeResource,
    monitoring: MonitoringResource,
    alias: str,
    version: str,
    champion: str,
    state: rollout.RolloutState | None,
    verdict: tuple[str, str] | None,
    offline: np.ndarray,
    threshold: float | None = None,
) -> tuple[str | None, str, dict]:
    """(action or None to wait, why, evidence) for a deployed candidate.

    `verdict` is the labelled outcomes' (`candidate_verdict`), `offline` the version's own offline
    scores and `threshold` its decision threshold (`offline_scores`; None: the guards' default). A
    canary with a rollout is held at each step until the step's proxies pass on the step's own
    traffic (ml_assets.lib.rollout), then ramped to the next; a failing guard at any step, proxy
    or labelled, aborts it; the last step promotes it once labelled outcomes hold up too. A shadow
    (or a canary without a rollout) is judged on labelled outcomes alone.
    """
    labelled = verdict[1] if verdict else "not enough labelled outcomes yet"
    if state is None:
        if verdict is None:
            return None, f"{alias} v{version}: {labelled}", {"labelled": labelled}
        return verdict[0], verdict[1], {"labelled": labelled}
    traffic = rollout.step_traffic(lake, state, version, champion)
    source = traffic.source
    judged = rollout.judge(traffic, offline, monitoring.rollout_guards(threshold))
    evidence = {"step": state.step, "share": state.share, "steps": list(state.steps), "source": source}
    evidence |= judged | {"labelled": labelled}
    where = f"{alias} v{version} at {state.describe()}"
    proxies = "; ".join(judged["why"])
    if verdict and verdict[0] == "abort_candidate":
        return "abort_candidate", f"{where}: labelled outcomes: {verdict[1]}", evidence
    found = rollout.status(judged)
    if found == rollout.FAILED:
        return "abort_candidate", f"{where}: a guard failed on {source}: {proxies}", evidence
    if found == rollout.WAITING:
        return None, f"{where}: holding: {proxies} (from {source})", evidence
    if not state.last:
        nxt = state.steps[state.step]
        return "ramp_candidate", f"{where}: guards passed ({proxies}); ramping to {nxt:.0%}", evidence
    if verdict is None:
        return None, f"{where}: guards passed ({proxies}); waiting for labelled outcomes", evidence
    return "promote_candidate", f"{where}: guards passed ({proxies}); {verdict[1]}", evidence


@dg.sensor(
    name=CANARY_SENSOR,
    job_name="promotion_job",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Ramps a canary through its rollout's steps while each step's guards pass (its live "
    "score distribution and alert rate against its own offline ones, its errors and p99 latency "
    "against the champion's), and promotes it (or a shadow) "
    "once it has enough labelled outcomes and holds up; rolls it back automatically when a guard "
    "fails. Asks again when that run fails (at most 3 runs, then alerts). Holds while the serving "
    "parity check fails.",
)
def canary_sensor(
    context: dg.SensorEvaluationContext,
    lake: LakeResource,
    mlflow: MlflowResource,
    monitoring: MonitoringResource,
    alerts: AlertsResource,
) -> dg.SensorResult:
    # Neither promotes nor aborts on live results while served features differ from dbt's.
    if held := parity_hold(context.instance):
        return dg.SensorResult(skip_reason=held)
    client = mlflow.client()
    name = mlflow.registered_model_name
    deployed = {a: registry.alias_version(client, name, a) for a in (registry.CANARY, registry.SHADOW)}
    deployed = {a: v for a, v in deployed.items() if v}
    if not deployed:
        return dg.SensorResult(skip_reason="no canary or shadow candidate deployed")
    alias, version = next(iter(deployed.items()))
    day, perf = _latest(lake, tables.LIVE_PERFORMANCE, "as_of_date")
    champion = registry.alias_version(client, name, registry.CHAMPION)
    verdict = candidate_verdict(perf, alias, version, champion, monitoring) if perf.height else None
    # Where the rollout is: the registry's tags (the service reads the share beside them).
    state = (
        rollout.state_from_tags(client.get_registered_model(name).tags or {})
        if alias == registry.CANARY
        else None
    )
    offline, threshold = offline_scores(lake, mlflow, version) if state is not None else (np.array([]), None)
    action, reason, evidence = candidate_decision(
        lake, monitoring, alias, version, champion, state, verdict, offline, threshold
    )
    if action is None:
        return dg.SensorResult(skip_reason=f"{reason} (labels as of {day})")
    step = state.step + 1 if action == "ramp_candidate" else None
    decision = f"{action}-{name}-v{version}" + (f"-step-{step}" if step else "")
    followed = follow_up(context.instance, decision, alerts, context.log)
    if followed is not None:  # asked for on an earlier tick
        context.log.info(followed.note)
        if followed.request is None:
            return dg.SensorResult(skip_reason=followed.note)
        return dg.SensorResult(run_requests=[followed.request])
    context.log.info(f"{action}: {reason}")
    config = {"action": action, "reason": reason, "actor": CANARY_SENSOR, "evidence": json.dumps(evidence)}
    if step:
        config["step"] = step
    request = first_request(
        decision, CANARY_SENSOR, {"ops": {"deployed_model": {"config": config}}}, {"model_version": version}
    )
    return dg.SensorResult(run_requests=[request])
