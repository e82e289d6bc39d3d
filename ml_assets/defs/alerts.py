"""Alerts on failed runs: always in the Dagster log, and to a webhook when one is configured."""

import dagster as dg

from ml_assets.defs.resources import AlertsResource


@dg.run_failure_sensor(
    name="run_failure_alert",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Logs every failed run (including blocked quality gates) and posts it to "
    "ML_ASSETS_ALERT_WEBHOOK when set.",
)
def run_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    reason = context.failure_event.message if context.failure_event else "unknown"
    alerts.send(context.log, f"Dagster run failed: {run.job_name}", f"run {run.run_id}: {reason}")
