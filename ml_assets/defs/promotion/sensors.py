"""model_promotion_sensor: promote a challenger once its validation report passed every gate.

The cursor is the storage id of the last report materialization the sensor has decided on. A
report whose gates are still running, or a registry that can't be reached, stops the tick before
the cursor moves past it, so the decision is retried on the next tick, never lost. A promotion's
runs carry the version (defs/decisions.py): one that failed is asked for again, a few times, then
alerted on; one that succeeded or is under way is never asked for twice.
"""

import dagster as dg

from ml_assets.defs.decisions import DECIDED_BY_TAG, DECISION_TAG, first_request, follow_up, last_run
from ml_assets.defs.resources import AlertsResource, MlflowResource
from ml_assets.defs.serving_state.checks import parity_hold
from ml_assets.lib import registry
from ml_assets.lib.gates import GATES

REPORT = dg.AssetKey("model_validation_report")
SENSOR = "model_promotion_sensor"
CHECK_EVENTS = {
    dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION,
}


def _gate_results(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Gate name -> SUCCEEDED / FAILED / PLANNED / MISSING for the report materialized in `run_id`.

    Read from that run's own events: the latest N evaluations of a gate (the check's history) lose
    an older report's once N others follow it, and the sensor would wait for them forever.
    """
    out = dict.fromkeys(GATES, "MISSING")
    for record in instance.get_records_for_run(run_id, of_type=CHECK_EVENTS).records:  # in order
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data
        if data.asset_key != REPORT or data.check_name not in out:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            out[data.check_name] = "SUCCEEDED" if data.passed else "FAILED"
        elif out[data.check_name] == "MISSING":
            out[data.check_name] = "PLANNED"
    return out


def _promotion(version: str, reason: str) -> dict:
    config = {"action": "promote", "version": version, "reason": reason, "actor": SENSOR}
    return {"ops": {"deployed_model": {"config": config}}}


@dg.sensor(
    job_name="promotion_job",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Promotes the challenger to champion when its validation report passed every gate; "
    "asks again when the promotion's run fails (at most 3 runs, then alerts). Holds while the "
    "serving parity check fails.",
)
def model_promotion_sensor(
    context: dg.SensorEvaluationContext, mlflow: MlflowResource, alerts: AlertsResource
) -> dg.SensorResult:
    # While served features differ from dbt's, a promoted model would score inputs unlike those it
    # was validated on: no move until parity holds again. The cursor stays, so the reports that
    # arrive meanwhile are decided then.
    if held := parity_hold(context.instance):
        return dg.SensorResult(skip_reason=held, cursor=context.cursor)
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=REPORT, after_storage_id=after), limit=20, ascending=True
    ).records
    notes, cursor, candidate = [], after, None
    for record in records:
        meta = record.asset_materialization.metadata
        version = str(meta["challenger_version"].value)
        gates = _gate_results(context.instance, record.run_id)
        pending = [g for g, status in gates.items() if status in ("PLANNED", "MISSING")]
        run = context.instance.get_run_by_id(record.run_id)
        if pending and run is not None and not run.is_finished:
            notes.append(f"v{version}: gates still running ({gates}); will look again")
            break  # keep the cursor before this report
        # A finished run's gate that never reported was not passed: decided, not waited for.
        failed = [g for g, status in gates.items() if status != "SUCCEEDED"]
        if failed:
            notes.append(f"v{version} not promoted: failed {', '.join(failed)}")
        else:
            if candidate:
                notes.append(f"v{candidate[0]} superseded by v{version}, a newer challenger that passed")
            candidate = (version, record.run_id)
        cursor = record.storage_id
    requests = []
    name = mlflow.registered_model_name
    if candidate:
        version, report_run = candidate
        # The registry is asked, so an outage raises here and the cursor stays put.
        champion = registry.alias_version(mlflow.client(), name, registry.CHAMPION)
        decision = f"promote-{name}-v{version}"
        followed = None if champion == version else follow_up(context.instance, decision, alerts, context.log)
        if champion == version:
            notes.append(f"v{version} is already the champion")
        elif followed is None:
            reason = (
                f"v{version} passed every gate (report run {report_run[:8]}); replaces v{champion or 'none'}"
            )
            requests.append(
                first_request(decision, SENSOR, _promotion(version, reason), {"model_version": version})
            )
            notes.append(reason)
        else:
            notes.append(followed.note)
            requests += [followed.request] if followed.request else []
    else:
        # No new report to decide on: the last promotion asked for may have failed since.
        last = last_run(context.instance, {DECIDED_BY_TAG: SENSOR})
        if last is not None and last.status == dg.DagsterRunStatus.FAILURE:
            client = mlflow.client()
            deployed = {
                registry.alias_version(client, name, a)
                for a in (registry.CHAMPION, registry.CANARY, registry.SHADOW)
            }
            if last.tags.get("model_version") in deployed:
                notes.append(f"v{last.tags['model_version']} was deployed since its promotion failed")
            else:
                followed = follow_up(context.instance, last.tags[DECISION_TAG], alerts, context.log)
                notes.append(followed.note)
                requests += [followed.request] if followed.request else []
    for note in notes:
        context.log.info(note)
    new_cursor = str(cursor) if cursor is not None else context.cursor
    if not requests:
        return dg.SensorResult(skip_reason="; ".join(notes) or "no new validation report", cursor=new_cursor)
    return dg.SensorResult(run_requests=requests, cursor=new_cursor)
