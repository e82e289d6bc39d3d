"""The whole code location loads, and its shape is what we expect (a snapshot of every key)."""

from __future__ import annotations

from ml_assets_tests.conftest import load_defs

EXPECTED_ASSETS = {
    "raw_labels": "ingestion",
    "raw_transactions": "ingestion",
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
}
EXPECTED_JOBS = {"ingestion_job"}
EXPECTED_SCHEDULES = {"ingestion_job_schedule"}
EXPECTED_SENSORS = {"landing_sensor"}


def test_snapshot_of_the_code_location(data_dir):
    repo = load_defs().get_repository_def()
    graph = repo.asset_graph
    assets = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert assets == EXPECTED_ASSETS
    checks = {f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys}
    assert checks == EXPECTED_CHECKS
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == EXPECTED_JOBS
    assert {s.name for s in repo.schedule_defs} == EXPECTED_SCHEDULES
    assert {s.name for s in repo.sensor_defs} == EXPECTED_SENSORS


def test_every_asset_says_what_it_is_for(data_dir):
    graph = load_defs().get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 40, key
        assert node.kinds, key
