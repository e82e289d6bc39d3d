"""Automation you can leave running: the retraining chain and the sensors when runs overlap, fail,
or outlive the state they were decided on. On real Dagster instances, MLflow stores and Delta
tables in temp dirs. The tests share one small world and build on each other in file order:

1. two retraining runs at once, in two processes, interleaved at the worst points: each model
   trains on its own run's snapshot, each report judges its own run's version (v1, v2);
2. the promotion sensor decides on a report whose gates were followed by more than 50 other
   evaluations of the same gate;
3. that promotion's run fails (the registry unreachable while it runs): Dagster's own sensor daemon
   asks for it again on later ticks, three runs in all, then alerts a real webhook, once;
4. the retraining sensor's cooldown holds with its cursor lost, and on a new Dagster instance.
"""

from __future__ import annotations

import socket

import dagster as dg
import pytest

from ml_assets.defs.monitoring.sensors import retraining_sensor
from ml_assets.defs.promotion.sensors import model_promotion_sensor
from ml_assets.defs.resources import AlertsResource, LakeResource, MlflowResource, MonitoringResource
from ml_assets.lib import paths, registry, tables
from ml_assets_tests.conftest import root_environ, run_job, scoped_environ
from ml_assets_tests.daemon_support import SensorDaemon, execute_queued_run
from ml_assets_tests.test_alerts import Webhook
from ml_assets_tests.test_faults import _finish, _go, _held, _spawn

# This module is about which version a step judges or a sensor decides on, not how good it is:
# small fits, and gates that any of them passes (first models are judged on the floors alone).
FAST = {"n_trials": 1, "num_boost_round": 80}
LENIENT = {
    "resources": {"quality_gates": {"config": {"min_roc_auc": 0.5, "min_pr_auc": 0.01, "max_ece": 1.0}}}
}
LAST_DAY = "2026-01-24"  # the small world's


def _retraining(seed: int, label_cutoff: str | None = None) -> dict:
    snapshot = {"label_cutoff": label_cutoff} if label_cutoff else {}
    ops = {"training_set": {"config": snapshot}, "fraud_model": {"config": FAST | {"seed": seed}}}
    return {"ops": ops} | LENIENT


def _mlflow() -> MlflowResource:
    return MlflowResource(
        tracking_uri=paths.mlflow_tracking_uri(), artifact_location=paths.mlflow_artifact_root()
    )


def _materialized(instance, run_id: str, asset: str) -> dict:
    """The metadata values of `asset`'s materialization in run `run_id`."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    (meta,) = [
        r.asset_materialization.metadata
        for r in records
        if r.asset_materialization.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in meta.items()}


@pytest.fixture(scope="module")
def state():
    return {}


def test_two_retraining_runs_at_once_each_train_and_judge_their_own(small_world, state):
    """A writes its snapshot and waits; B (another process, other seed and label cutoff) writes a
    newer snapshot, registers its model and waits before its report; A trains, registers (moving
    @challenger past B's version) and judges; then B judges. Each model trained on the snapshot
    its own run wrote, and each report judged the version its own run registered."""
    import json

    root, _, instance = small_world
    hold_a, hold_b = root / "hold-a", root / "hold-b"
    runs = {
        "a": (_retraining(seed=7), f"after {tables.TRAINING_SET} {hold_a}", hold_a),
        "b": (_retraining(seed=11, label_cutoff="2026-01-22"), f"step fraud_model {hold_b}", hold_b),
    }
    # Both load side by side (most of their time), then each goes in its turn.
    drivers = {
        k: _spawn(root, "retraining_job", config=c, hold=h, go=_go(p)) for k, (c, h, p) in runs.items()
    }
    _go(hold_a).touch()
    _held(drivers["a"], hold_a)  # A's snapshot is committed
    _go(hold_b).touch()
    _held(drivers["b"], hold_b)  # B's newer snapshot is committed and its model registered
    hold_a.touch()
    a = _finish(drivers["a"])
    hold_b.touch()
    b = _finish(drivers["b"])
    assert a["success"] and b["success"], (a, b)

    mlflow = _mlflow()
    client, name = mlflow.client(), mlflow.registered_model_name
    seen = {}
    for key, run in (("a", a), ("b", b)):
        snapshot = _materialized(instance, run["run_id"], "training_set")
        model = _materialized(instance, run["run_id"], "fraud_model")
        report = _materialized(instance, run["run_id"], "model_validation_report")
        version = client.get_model_version(name, str(model["model_version"]))
        # The model: trained on this run's snapshot (its rows' windows too), by this run.
        assert model["training_set_delta_version"] == snapshot["delta_version"], key
        assert int(version.tags[registry.TAG_TRAINING_SET_VERSION]) == snapshot["delta_version"], key
        assert version.tags[registry.TAG_DAGSTER_RUN] == run["run_id"]
        windows = json.loads(version.tags[registry.TAG_WINDOWS])
        assert windows["holdout_end"] == snapshot["windows"]["holdout_end"], key
        params = client.get_run(version.run_id).data.params
        assert params["seed"] == str(runs[key][0]["ops"]["fraud_model"]["config"]["seed"])
        # The report: judged this run's version, and said so on it.
        assert str(report["challenger_version"]) == str(version.version), key
        assert version.tags["validation_report_run"] == run["run_id"]
        assert version.tags[registry.TAG_VERDICT] == report["verdict"] == "passed"
        seen[key] = (snapshot["delta_version"], int(version.version), snapshot["windows"])
    # The interleaving was the one that mixes runs up under "latest": B's snapshot is the newer
    # one (A trained after it was written), A's version the newer one (B judged after it moved
    # @challenger), and the runs' inputs differ.
    assert seen["a"][0] < seen["b"][0] and seen["b"][1] < seen["a"][1], seen
    assert seen["a"][2]["label_cutoff"] != seen["b"][2]["label_cutoff"]
    assert registry.alias_version(client, name, registry.CHALLENGER) == str(seen["a"][1])
    state.update(v_a=str(seen["a"][1]), v_b=str(seen["b"][1]))


def _promotion_tick(instance, cursor=None):
    resources = {"mlflow": _mlflow(), "alerts": AlertsResource()}
    return model_promotion_sensor(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    )


def test_a_report_followed_by_many_other_gate_evaluations_is_still_decided(small_world, state):
    """Both reports above passed. Then 51 runs evaluate one of their gates again (as later reports
    would): the sensor still reads each report's gates, from the report's own run, and asks to
    promote the newest report's version."""
    _, _, instance = small_world
    gate = "not_worse_than_champion"

    @dg.asset_check(asset="model_validation_report", name=gate)
    def a_later_evaluation() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "another report's"})

    job = dg.Definitions(asset_checks=[a_later_evaluation]).resolve_implicit_global_asset_job_def()
    for _ in range(51):  # a failed check that is not blocking: each run itself succeeds
        assert job.execute_in_process(instance=instance).success
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("model_validation_report"), gate), limit=60
    )
    assert len(history) == 53  # the two reports', then the 51 others

    tick = _promotion_tick(instance)
    assert tick.run_requests, tick.skip_reason  # not "gates still running", for ever
    (request,) = tick.run_requests
    config = request.run_config["ops"]["deployed_model"]["config"]
    assert config["version"] == state["v_b"]  # B's report is the newer: it supersedes A's
    assert request.run_key == f"promote-fraud_detector-v{state['v_b']}"


def test_a_failed_promotion_run_is_asked_for_again_then_given_up_with_an_alert(small_world, state):
    """Dagster's own daemon ticks the promotion sensor, and each run it asks for is executed as a
    launched run is, with the registry unreachable: three runs (run keys `...-attempt-2`, `-3`),
    then nothing more, one alert on a real webhook, and a skip reason that says so."""
    from dagster._core.scheduler.instigation import TickStatus

    root, definitions, instance = small_world
    name = model_promotion_sensor.name
    with socket.socket() as s:  # a port nothing listens on (bound, then closed)
        s.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{s.getsockname()[1]}"
    decision = f"promote-fraud_detector-v{state['v_b']}"
    with Webhook() as hook, scoped_environ(**root_environ(root), ML_ASSETS_ALERT_WEBHOOK=hook.url):
        run_keys = []
        for attempt in (1, 2, 3):
            with SensorDaemon(instance) as daemon:
                tick = daemon.tick(name)
            assert tick.status == TickStatus.SUCCESS, tick
            (run_id,) = tick.run_ids
            run = instance.get_run_by_id(run_id)
            run_keys.append(run.tags["dagster/run_key"])
            assert (
                run.tags["ml_assets/attempt"] == str(attempt) and run.tags["ml_assets/decision"] == decision
            )
            assert run.run_config["ops"]["deployed_model"]["config"]["version"] == state["v_b"]
            # MLflow's own HTTP retries would take minutes: one attempt per call is the outage.
            with scoped_environ(
                **root_environ(root), MLFLOW_TRACKING_URI=unreachable, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"
            ):
                done = execute_queued_run(instance, run_id)
            assert done.status == dg.DagsterRunStatus.FAILURE
            assert hook.posts == []  # no alert while attempts are left
        assert run_keys == [decision, f"{decision}-attempt-2", f"{decision}-attempt-3"]

        for _ in range(2):  # given up: no run, and the alert is sent once
            with SensorDaemon(instance) as daemon:
                tick = daemon.tick(name)
                cursor = daemon.cursor(name)
            assert tick.status == TickStatus.SKIPPED and not tick.run_ids, tick
            assert f"gave up on {decision} after 3 failed runs" in tick.skip_reason
    (post,) = hook.posts
    assert post["body"]["title"] == f"Automation gave up: {decision}"
    assert run_id in post["body"]["text"] and "deployed_model" in post["body"]["text"]

    # Deployed by hand since: the sensor says so, and asks for nothing.
    config = {**run.run_config, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    assert run_job(definitions, "promotion_job", instance=instance, run_config=config).success
    tick = _promotion_tick(instance, cursor=cursor)
    assert (
        not tick.run_requests and "was deployed since its promotion failed" in tick.skip_reason.skip_message
    )
    assert registry.alias_version(_mlflow().client(), "fraud_detector", registry.CHAMPION) == state["v_b"]


def test_the_retraining_cooldown_outlives_the_sensors_cursor_and_the_dagster_instance(small_world, state):
    """A retraining request, and its run (which records it on the version it registers); then
    ticks within the cooldown with the cursor reset, and on a new, empty Dagster instance: each
    asks for nothing and says it is cooling down."""
    _, definitions, instance = small_world
    assert run_job(definitions, "monitoring_job", instance=instance, days=("2026-01-23", LAST_DAY)).success
    # Every bit of drift counts: a reason to retrain on demand (this world has no drift of its own).
    resources = {
        "lake": LakeResource.from_env(),
        "mlflow": _mlflow(),
        "monitoring": MonitoringResource(psi_threshold=0.0),
    }

    def tick(on):
        return retraining_sensor(dg.build_sensor_context(instance=on, cursor=None, resources=resources))

    (request,) = tick(instance).run_requests
    assert request.tags[registry.TAG_RETRAIN_AS_OF] == LAST_DAY and "PSI" in request.tags["retrain_reason"]
    config = {"ops": {"fraud_model": {"config": FAST}}}
    result = run_job(definitions, "retraining_job", instance=instance, run_config=config, tags=request.tags)
    version = str(result.asset_materializations_for_node("fraud_model")[0].metadata["model_version"].value)
    tags = _mlflow().client().get_model_version("fraud_detector", version).tags
    assert tags[registry.TAG_RETRAIN_AS_OF] == LAST_DAY

    again = tick(instance)
    assert not again.run_requests and f"cooling down since {LAST_DAY}" in again.skip_reason.skip_message
    with dg.DagsterInstance.ephemeral() as empty:  # a new DAGSTER_HOME: no runs, no cursors
        fresh = tick(empty)
    assert not fresh.run_requests, fresh.run_requests
    assert (
        f"cooling down since {LAST_DAY} (asked for then: v{version} in the registry)"
        in fresh.skip_reason.skip_message
    )
