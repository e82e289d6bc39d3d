"""model_promotion_sensor: promote a challenger once its validation report passed every gate.

The cursor is the storage id of the last report materialization the sensor has decided on. A
report whose gates are still running, or a registry that can't be reached, stops the tick before
the cursor moves past it, so the decision is retried on the next tick, never lost. Run keys carry
the version, so a version is never promoted twice.
"""

import dagster as dg

from ml_assets.defs.resources import MlflowResource
from ml_assets.lib import registry
from ml_assets.lib.gates import GATES

REPORT = dg.AssetKey("model_validation_report")


def _gate_results(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Gate name -> SUCCEEDED / FAILED / PLANNED for the report materialized in `run_id`."""
    out = {}
    for gate in GATES:
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(REPORT, gate), limit=50
        )
        out[gate] = next((r.status.value for r in history if r.run_id == run_id), "MISSING")
    return out


@dg.sensor(
    job_name="promotion_job",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Promotes the challenger to champion when its validation report passed every gate.",
)
def model_promotion_sensor(context: dg.SensorEvaluationContext, mlflow: MlflowResource) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=REPORT, after_storage_id=after), limit=20, ascending=True
    ).records
    notes, cursor, candidate = [], after, None
    for record in records:
        meta = record.asset_materialization.metadata
        version = str(meta["challenger_version"].value)
        gates = _gate_results(context.instance, record.run_id)
        if any(status in ("PLANNED", "MISSING") for status in gates.values()):
            notes.append(f"v{version}: gates still running ({gates}); will look again")
            break  # keep the cursor before this report
        failed = [g for g, status in gates.items() if status != "SUCCEEDED"]
        if failed:
            notes.append(f"v{version} not promoted: failed {', '.join(failed)}")
        else:
            if candidate:
                notes.append(f"v{candidate[0]} superseded by v{version}, a newer challenger that passed")
            candidate = (version, record.run_id)
        cursor = record.storage_id
    requests = []
    if candidate:
        version, report_run = candidate
        # The registry is asked, so an outage raises here and the cursor stays put.
        champion = registry.alias_version(mlflow.client(), mlflow.registered_model_name, registry.CHAMPION)
        if champion == version:
            notes.append(f"v{version} is already the champion")
        else:
            reason = (
                f"v{version} passed every gate (report run {report_run[:8]}); replaces v{champion or 'none'}"
            )
            requests.append(
                dg.RunRequest(
                    run_key=f"promote-{mlflow.registered_model_name}-v{version}",
                    run_config={
                        "ops": {
                            "deployed_model": {
                                "config": {
                                    "action": "promote",
                                    "version": version,
                                    "reason": reason,
                                    "actor": "model_promotion_sensor",
                                }
                            }
                        }
                    },
                    tags={"model_version": version},
                )
            )
            notes.append(reason)
    for note in notes:
        context.log.info(note)
    new_cursor = str(cursor) if cursor is not None else context.cursor
    if not requests:
        return dg.SensorResult(skip_reason="; ".join(notes) or "no new validation report", cursor=new_cursor)
    return dg.SensorResult(run_requests=requests, cursor=new_cursor)
