import dagster as dg

# The promotion sensor launches this with the version that passed every gate.
promotion_job = dg.define_asset_job(
    "promotion_job",
    selection=dg.AssetSelection.assets("deployed_model"),
    description="Make a validated model version the champion (previous champion kept for rollback).",
)

rollback_job = dg.define_asset_job(
    "rollback_job",
    selection=dg.AssetSelection.assets("deployed_model"),
    description="Put previous_champion back as champion. Say who and why in the launchpad.",
    config={
        "ops": {
            "deployed_model": {
                "config": {"action": "rollback", "reason": "manual rollback from the UI", "actor": "ui"}
            }
        }
    },
)

# The run queue runs one retraining at a time (tag_concurrency_limits in dagster.local.yaml and
# deploy/dagster.yaml name this tag): the weekly schedule and the retraining sensor would otherwise
# train side by side and share the machine. Each run is correct on its own either way.
SERIAL_TAG = {"ml_assets/serial": "retraining"}

# Retraining: a new snapshot, a tuned model, and its report; the promotion sensor then gates it.
retraining_job = dg.define_asset_job(
    "retraining_job",
    selection=dg.AssetSelection.assets("training_set", "fraud_model", "model_validation_report"),
    description="Snapshot -> model -> validation report. Promotion follows only if every gate passes.",
    tags=SERIAL_TAG,
)

weekly_retraining_schedule = dg.ScheduleDefinition(
    job=retraining_job,
    cron_schedule="0 3 * * 1",  # Mondays 03:00 UTC, after the night's ingestion and features
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,  # the README says automation is on
)
