"""`run_failure_alert` on a real failed run: it posts the alert to a real webhook (an HTTP server on
loopback), and a webhook that can't take it costs a warning, never a failure.

The sensor is evaluated as Dagster's code server evaluates a daemon tick (`evaluate_tick` on a
sensor context with the location's repository and the resources the sensor needs), on a persistent
instance in a temp DAGSTER_HOME, with the cursor carried from tick to tick: the first tick only
places the cursor, the next one sees the failures after it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ml_assets_tests.conftest import load_defs, run_job
from ml_assets_tests.serving_support import free_port

SENSOR = "run_failure_alert"
DAY = "2026-01-05"


class Webhook:
    """A real HTTP server on a free loopback port, in a thread: records every POST, answers `status`."""

    def __init__(self, status: int = 200):
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                kind = self.headers["Content-Type"]
                posts.append({"path": self.path, "type": kind, "body": json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):  # not on stderr: the test reads `posts`
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/ml-assets"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _tick(repo, instance, cursor: str | None, number: int = 0):
    """One evaluation of the sensor, as the code server runs it for the daemon: its resources are
    the location's own (AlertsResource configured from ML_ASSETS_ALERT_WEBHOOK at load), and its log
    goes to the instance under the tick's log key, where the UI reads a tick's logs."""
    import dagster as dg

    sensor = repo.get_sensor_def(SENSOR)
    needed = sensor.required_resource_keys
    resources = {k: v for k, v in repo.get_top_level_resources().items() if k in needed}
    log_key = [repo.name, SENSOR, str(number)]  # the daemon's: repository, sensor, tick id
    # What the code server builds for each daemon tick (dagster._grpc.impl), without the
    # location's origin and repository name: the sensor reacts to runs of its own location, and a
    # run executed in process has neither (Dagster matches them when both sides have none).
    with dg.SensorEvaluationContext(
        instance_ref=instance.get_ref(),
        instance=instance,
        cursor=cursor,
        log_key=log_key,
        repository_def=repo,
        sensor_name=SENSOR,
        resources=resources,
    ) as context:
        return sensor.evaluate_tick(context), log_key


def _tick_log(instance, log_key) -> list[tuple[str, str]]:
    """(level, message) of every line the tick logged, read back from the instance."""
    from dagster._core.definitions.instigation_logger import get_instigation_log_records

    return [(r["levelname"], r["msg"]) for r in get_instigation_log_records(instance, log_key)]


def _fail_a_run(webhook_url: str, monkeypatch):
    """The location loaded with the webhook set, and a real failed run on a persistent instance:
    `ingestion_job` for a day with no landing files fails its blocking `partition_not_empty` check.
    Returns (repository, instance, the failed run, the cursor of the tick before the failure)."""
    import dagster as dg

    monkeypatch.setenv("ML_ASSETS_ALERT_WEBHOOK", webhook_url)
    definitions = load_defs()
    repo = definitions.get_repository_def()
    instance = dg.DagsterInstance.get()  # DAGSTER_HOME: the data_dir fixture's temp dir
    first, _ = _tick(repo, instance, cursor=None, number=1)
    assert first.skip_message.startswith(f"Initiating {SENSOR}") and first.cursor
    result = run_job(definitions, "ingestion_job", instance=instance, partition=DAY)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    return repo, instance, run, first.cursor


def _failure_message(instance, run_id: str) -> str:
    import dagster as dg

    (record,) = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return record.event_log_entry.dagster_event.message


def test_a_failed_run_is_posted_to_the_webhook(data_dir, monkeypatch):
    with Webhook() as hook:
        repo, instance, run, cursor = _fail_a_run(hook.url, monkeypatch)
        with instance:
            assert hook.posts == []  # nothing is sent until the sensor sees the failure
            tick, log_key = _tick(repo, instance, cursor, number=2)
            reason = _failure_message(instance, run.run_id)
            # The tick reacted to that run, without error, and moved its cursor past it.
            (reaction,) = tick.dagster_run_reactions
            assert reaction.dagster_run.run_id == run.run_id and reaction.error is None
            assert not tick.run_requests
            # Always in the Dagster log (the tick's), and no complaint about the webhook.
            title, text = "Dagster run failed: ingestion_job", f"run {run.run_id}: {reason}"
            assert _tick_log(instance, log_key) == [("ERROR", f"{title}: {text}")]
            again, _ = _tick(repo, instance, tick.cursor, number=3)
            assert again.dagster_run_reactions == []

    (post,) = hook.posts  # once, though the sensor ticked again
    assert post["path"] == "/hooks/ml-assets" and post["type"] == "application/json"
    assert post["body"] == {"title": title, "text": text}
    # The reason says what failed: the blocking check that stopped the day.
    assert "ingestion_job" in reason and "raw_transactions_partition_not_empty" in reason


@pytest.mark.parametrize("webhook", ["refusing connections", "answering 500"])
def test_a_webhook_that_cannot_take_the_alert_only_warns(data_dir, monkeypatch, webhook):
    if webhook == "answering 500":
        hook = Webhook(status=500)
        url = hook.url
    else:
        hook = None
        url = f"http://127.0.0.1:{free_port()}/hooks/ml-assets"  # nothing listens there
    with hook or contextlib.nullcontext():
        repo, instance, run, cursor = _fail_a_run(url, monkeypatch)
        with instance:
            tick, log_key = _tick(repo, instance, cursor, number=2)
            # The tick itself succeeded: the sensor reacted to the run without error ...
            (reaction,) = tick.dagster_run_reactions
            assert reaction.dagster_run.run_id == run.run_id and reaction.error is None
            assert instance.get_run_by_id(run.run_id).status == run.status  # ... and changed nothing
            log = _tick_log(instance, log_key)
    if hook:
        assert len(hook.posts) == 1  # it did try
    # The alert is in the Dagster log all the same, followed by the warning.
    (alert, warning) = log
    assert alert[0] == "ERROR"
    assert alert[1].startswith(f"Dagster run failed: ingestion_job: run {run.run_id}: ")
    assert warning[0] == "WARNING" and warning[1].startswith("could not post the alert to the webhook: ")
