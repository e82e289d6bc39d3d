"""The whole code location loads, and its shape is what we expect (a snapshot of every key)."""

from __future__ import annotations

from ml_assets_tests.conftest import load_defs

EXPECTED_ASSETS = {
    "raw_labels": "ingestion",
    "raw_transactions": "ingestion",
    "stg_labels": "features",
    "stg_transactions": "features",
    "transaction_features": "features",
    "training_set": "training",
    "fraud_model": "training",
    "model_validation_report": "validation",
    "deployed_model": "promotion",
    "batch_predictions": "monitoring",
    "drift_report": "monitoring",
    "live_performance": "monitoring",
    "online_store_feed": "serving_state",
    "inference_log": "serving_state",
}
EXPECTED_CHECKS = {
    "raw_labels:labels_match_transactions",
    "raw_labels:nothing_quarantined",
    "raw_labels:partition_not_empty",
    "raw_labels:quarantined_share_within_limit",
    "raw_transactions:nothing_quarantined",
    "raw_transactions:partition_not_empty",
    "raw_transactions:quarantined_share_within_limit",
    "raw_transactions:transaction_id_unique",
    "stg_labels:accepted_values_stg_labels_is_fraud__0__1",
    "stg_labels:not_null_stg_labels_transaction_id",
    "stg_transactions:accepted_values_stg_transactions_channel__pos__ecom__atm",
    "stg_transactions:not_null_stg_transactions_event_ts",
    "stg_transactions:not_null_stg_transactions_transaction_id",
    "transaction_features:accepted_values_transaction_features_channel_code__0__1__2",
    "transaction_features:accepted_values_transaction_features_is_new_card_country__0__1",
    "transaction_features:accepted_values_transaction_features_is_new_card_device__0__1",
    "transaction_features:not_null_transaction_features_card_tx_count_24h",
    "transaction_features:not_null_transaction_features_channel_code",
    "transaction_features:not_null_transaction_features_event_date",
    "transaction_features:not_null_transaction_features_event_time",
    "transaction_features:not_null_transaction_features_hour_of_day",
    "transaction_features:not_null_transaction_features_is_new_card_country",
    "transaction_features:not_null_transaction_features_merchant_fraud_rate",
    "transaction_features:not_null_transaction_features_transaction_id",
    "transaction_features:transaction_features_use_only_the_past",
    "transaction_features:unique_transaction_features_transaction_id",
    "transaction_features:online_features_match_dbt",
    "training_set:both_classes_present",
    "training_set:no_feature_entirely_null",
    "training_set:splits_in_time_order",
    "model_validation_report:not_worse_than_champion",
    "model_validation_report:recall_at_alert_budget_not_worse",
    "model_validation_report:above_absolute_floors",
    "model_validation_report:no_slice_regression",
    "model_validation_report:calibrated",
    "model_validation_report:report_complete",
    "drift_report:features_within_drift_limit",
    "drift_report:score_within_drift_limit",
    "live_performance:champion_live_roc_auc_above_floor",
}
EXPECTED_JOBS = {
    "ingestion_job",
    "features_job",
    "retraining_job",
    "promotion_job",
    "rollback_job",
    "monitoring_job",
    "daily_job",
    "serving_state_job",
}
EXPECTED_SCHEDULES = {"daily_job_schedule", "retraining_job_schedule"}
EXPECTED_SENSORS = {
    "landing_sensor",
    "model_promotion_sensor",
    "run_failure_alert",
    "retraining_sensor",
    "canary_sensor",
    "default_automation_condition_sensor",
    "inference_log_sensor",
}


def test_snapshot_of_the_code_location(data_dir):
    repo = load_defs().get_repository_def()
    graph = repo.asset_graph
    assets = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert assets == EXPECTED_ASSETS
    checks = {f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys}
    assert checks == EXPECTED_CHECKS
    jobs = {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert jobs == EXPECTED_JOBS
    assert {s.name for s in repo.schedule_defs} == EXPECTED_SCHEDULES
    assert {s.name for s in repo.sensor_defs} == EXPECTED_SENSORS


def test_every_asset_says_what_it_is_for(data_dir):
    graph = load_defs().get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 40, key
        assert node.kinds, key


def _readme_automation() -> set[str]:
    """The sensors and schedules the README's "Automation (on in `make dev`)" paragraph names."""
    import re

    from ml_assets.lib import paths

    readme = (paths.REPO_ROOT / "README.md").read_text()
    paragraph = readme.split("Automation (on in `make dev`):")[1].split("\n\n")[0]
    return set(re.findall(r"`(\w+_(?:sensor|schedule|alert))`", paragraph))


def test_what_the_readme_says_is_on_is_on(data_dir):
    """Every sensor and schedule runs as soon as `make dev` starts (no toggle in the UI), and the
    README names exactly those."""
    import dagster as dg

    repo = load_defs().get_repository_def()
    running = {s.name: s.default_status for s in repo.sensor_defs} | {
        s.name: s.default_status for s in repo.schedule_defs
    }
    assert _readme_automation() == set(running) == EXPECTED_SENSORS | EXPECTED_SCHEDULES
    stopped = {n for n, status in running.items() if status.value != dg.DefaultSensorStatus.RUNNING.value}
    assert not stopped, stopped
