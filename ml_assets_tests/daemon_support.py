"""Dagster's own sensor daemon, one tick at a time, in this process, on a real instance.

`dagster-daemon` evaluates sensors with `dagster._daemon.sensor.execute_sensor_iteration`: it loads
the code location, evaluates every running sensor that is due, stores each tick (status, cursor,
skip reason, error) and submits the runs it asks for, deduplicated by run key. `SensorDaemon` runs
that same function, so what Dagster itself keeps (a cursor across a failed tick, a run key seen
before) is what a test sees, not what the test passes back in.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ml_assets.lib import paths


class SensorDaemon:
    """The code location, loaded in process from the environment as it is on entering, and one
    sensor tick at a time. Every tick is stamped an hour after the previous one, so that each
    sensor is due (its minimum interval has passed), as it would be on a live instance."""

    def __init__(self, instance):
        self.instance = instance

    def __enter__(self) -> SensorDaemon:
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(module_name="ml_assets.definitions", working_directory=str(paths.REPO_ROOT)),
            location_name="ml_assets",
        )
        self._context = WorkspaceProcessContext(self.instance, InProcessWorkspaceLoadTarget(origin))
        self._context.__enter__()
        entry = next(iter(self._context.create_request_context().get_code_location_entries().values()))
        assert entry.code_location, entry.load_error
        (repository,) = entry.code_location.get_repositories().values()
        self.repository = repository
        self.sensors = {s.name: s for s in repository.get_sensors()}
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)

    def _state(self, name: str):
        sensor = self.sensors[name]
        return self.instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)

    def cursor(self, name: str) -> str | None:
        """The cursor Dagster has stored for the sensor."""
        state = self._state(name)
        return state.instigator_data.cursor if state and state.instigator_data else None

    def set_cursor(self, name: str, cursor: str | None) -> None:
        """Store a cursor for the sensor, as `dagster sensor cursor NAME --set CURSOR` does."""
        from dagster._core.definitions.run_request import InstigatorType
        from dagster._core.scheduler.instigation import (
            InstigatorState,
            InstigatorStatus,
            SensorInstigatorData,
        )

        sensor = self.sensors[name]
        state = self._state(name)
        if state is None:
            self.instance.add_instigator_state(
                InstigatorState(
                    sensor.get_remote_origin(),
                    InstigatorType.SENSOR,
                    InstigatorStatus.DECLARED_IN_CODE,
                    SensorInstigatorData(
                        min_interval=sensor.min_interval_seconds,
                        cursor=cursor,
                        sensor_type=sensor.sensor_type,
                    ),
                )
            )
        else:
            self.instance.update_instigator_state(
                state.with_data(state.instigator_data._replace(cursor=cursor))
            )

    def tick(self, name: str):
        """One evaluation of sensor `name` by the daemon's code; returns the tick Dagster stored
        (`.status`, `.cursor`, `.run_ids`, `.skip_reason`, `.error`). The other sensors are
        stopped first, so that only this one is evaluated."""
        from dagster._daemon.sensor import execute_sensor_iteration

        for other, sensor in self.sensors.items():
            if sensor.sensor_type.is_handled_by_asset_daemon:
                continue
            state = sensor.get_current_instigator_state(self._state(other))
            if other == name and not state.is_running:
                self.instance.start_sensor(sensor)
            elif other != name and state.is_running:
                self.instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
        with _clock(self._next_tick_time(name)):
            list(execute_sensor_iteration(self._context, logging.getLogger("sensor_daemon"), None, None))
        sensor = self.sensors[name]
        (latest,) = self.instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id, limit=1)
        return latest

    def _next_tick_time(self, name: str) -> float:
        data = getattr(self._state(name), "instigator_data", None)
        last = max(
            getattr(data, "last_tick_timestamp", 0) or 0, getattr(data, "last_tick_start_timestamp", 0) or 0
        )
        return max(time.time(), last + 3600)


@contextmanager
def _clock(timestamp: float) -> Iterator[None]:
    """Dagster's clock (only Dagster's: `dagster._time`) at `timestamp`, as its own sensor tests
    move it, so that a sensor's minimum interval has passed without waiting it out."""
    from dagster._core.test_utils import freeze_time

    with freeze_time(datetime.datetime.fromtimestamp(timestamp, datetime.UTC)):
        yield


def execute_queued_run(instance, run_id: str):
    """A run the daemon submitted (queued), executed the way a launched run is, in this process:
    RUN_STARTING, as the queue's launch records it, then `execute_run` on the job rebuilt from the
    run's own code origin, as the run worker (`dagster api execute_run`) does. Its resources are
    the location's, built from the environment as it is now. Returns the run as stored after."""
    from dagster._core.definitions.reconstruct import ReconstructableJob
    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.execution.api import execute_run
    from dagster._utils.hosted_user_process import recon_job_from_origin

    # A run worker is a new process, which builds the job (and its resources) from the environment
    # it has. In this one, Dagster keeps the last job it built from an origin (the in-process code
    # location's, with the environment of its load): forget it, so this run builds its own.
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    run = instance.get_run_by_id(run_id)
    starting = DagsterEvent(event_type_value=DagsterEventType.PIPELINE_STARTING.value, job_name=run.job_name)
    instance.report_dagster_event(starting, run_id=run_id)
    run = instance.get_run_by_id(run_id)
    execute_run(recon_job_from_origin(run.job_code_origin), run, instance)
    return instance.get_run_by_id(run_id)
