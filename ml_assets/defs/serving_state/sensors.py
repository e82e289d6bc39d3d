"""Keep the inference log current: drain the online store's decision queue whenever it holds any."""

import dagster as dg

from ml_assets.defs.resources import OnlineStoreResource

DRAIN_TAG = "ml_assets/drain"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(
    target=dg.AssetSelection.assets("inference_log"),
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Drains the online store's queue of decisions into the inference log (Delta) "
    "when it holds any, one drain at a time.",
)
def inference_log_sensor(
    context: dg.SensorEvaluationContext, online_store: OnlineStoreResource
) -> dg.SensorResult:
    from ml_assets.serving.online_store import StoreUnavailable

    # One drain at a time: two would read the same decisions and each find them not logged yet.
    running = context.instance.get_runs(
        filters=dg.RunsFilter(statuses=IN_FLIGHT, tags={DRAIN_TAG: "inference_log"}), limit=1
    )
    if running:
        return dg.SensorResult(skip_reason=f"a drain is running ({running[0].run_id[:8]})")
    try:
        with online_store.open() as store:
            queued, _ = store.read_decisions(None, 1)
    except StoreUnavailable as e:
        return dg.SensorResult(skip_reason=f"cannot read the queue: {e}")
    if not queued:
        return dg.SensorResult(skip_reason="no decisions queued")
    return dg.SensorResult(run_requests=[dg.RunRequest(tags={DRAIN_TAG: "inference_log"})])
