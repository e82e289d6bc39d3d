"""The stack's end-to-end scenario, phase by phase: driven by the daemon, checked from outside.

`make test-stack` runs the phases as tests in order (ml_assets_tests/stack/test_stack.py) and
`python -m bench stack` times them (bench/stack.py). Each phase waits for what the stack's own
daemon does (its sensors, its run queue, declarative automation, run retries); the scenario only
does what a user or upstream would: files land, runs are launched through the webserver's GraphQL
API, transactions are sent to the replicas, a process is killed, the daemon is restarted.

Runs are looked up in the stack's Dagster instance (its PostgreSQL run and event storage), read
from this process as any Dagster client reads it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ml_assets_tests.stack.world import RETRAINING, World, fingerprints, send_traffic

# How long any one wait gives up after: far above what a phase takes on a loaded 2-core box, so a
# stuck phase fails with what it waited for instead of running into pytest's timeout.
GIVE_UP = 420
LANDING_SENSOR = "landing_sensor"
AUTOMATION_SENSOR = "default_automation_condition_sensor"
PROMOTION_SENSOR = "model_promotion_sensor"
DRAIN_SENSOR = "inference_log_sensor"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
RUN_WORKER_PID = re.compile(r"multiprocess executor: parent process \(pid: (\d+)\)")


class Waited(AssertionError):
    """What a phase waited for and did not see."""


def wait_for(what: str, probe, give_up: float = GIVE_UP, every: float = 1.0):
    """probe() until it returns something truthy; returns it, or raises Waited with `what`."""
    deadline = time.monotonic() + give_up
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise Waited(f"waited {give_up:.0f} s for {what}")
        time.sleep(every)


@dataclass
class Scenario:
    """One stack (its data root `root`, started by `up`) and the world it runs on."""

    root: Path
    world: World
    env: dict[str, str]  # the environment `python -m ml_assets.stack` runs with
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds
    notes: dict = field(default_factory=dict)  # what the phases saw: run ids, pids, times

    # --- the stack -------------------------------------------------------------------------
    def stack_cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ml_assets.stack", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    @property
    def stack_dir(self) -> Path:
        return self.root / "stack"

    @property
    def ports(self) -> dict[str, int]:
        return json.loads((self.stack_dir / "ports.json").read_text())

    def url(self, part: str) -> str:
        return f"http://127.0.0.1:{self.ports[part]}"

    @property
    def stack_env(self) -> dict[str, str]:
        """stack.env, read the way a shell sources it."""
        out = subprocess.run(
            ["bash", "-c", f"set -a; . {self.stack_dir / 'stack.env'}; env -0"],
            capture_output=True, check=True, env={},
        ).stdout.decode()  # fmt: skip
        return dict(line.split("=", 1) for line in out.split("\0") if "=" in line)

    def instance(self):
        """The stack's Dagster instance (PostgreSQL), opened once."""
        if not hasattr(self, "_instance"):
            import dagster as dg

            os.environ["DAGSTER_PG_PASSWORD"] = self.stack_env["DAGSTER_PG_PASSWORD"]  # the yaml reads it
            self._instance = dg.DagsterInstance.from_config(str(self.stack_dir / "dagster_home"))
        return self._instance

    def close(self) -> None:
        if hasattr(self, "_instance"):
            self._instance.dispose()
            del self._instance

    # --- runs --------------------------------------------------------------------------------
    def submit(self, job: str, tags: dict[str, str] | None = None, run_config: dict | None = None) -> str:
        """Launch `job` through the webserver's GraphQL API (it queues; the daemon starts it)."""
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=self.ports["dagster-webserver"])
        return client.submit_job_execution(
            job, repository_location_name="ml_assets", repository_name="__repository__",
            run_config=run_config or {}, tags=tags or {},
        )  # fmt: skip

    def runs(self, **tags: str) -> list:
        import dagster as dg

        return list(reversed(self.instance().get_runs(filters=dg.RunsFilter(tags=tags))))  # oldest first

    def ended(self, run_ids: list[str], what: str, give_up: float = GIVE_UP) -> list:
        """Wait until every run of `run_ids` has ended; returns them (as stored)."""
        instance = self.instance()

        def all_ended():
            runs = [instance.get_run_by_id(r) for r in run_ids]
            return runs if all(r is not None and r.is_finished for r in runs) else None

        return wait_for(what, all_ended, give_up)

    def succeeded(self, run_ids: list[str], what: str, give_up: float = GIVE_UP) -> list:
        import dagster as dg

        runs = self.ended(run_ids, what, give_up)
        failed = [
            (r.job_name, r.run_id[:8], r.status.value)
            for r in runs
            if r.status != dg.DagsterRunStatus.SUCCESS
        ]
        assert not failed, f"{what}: {failed}\n{self.failure_messages(runs)}"
        return runs

    def failure_messages(self, runs) -> str:
        instance = self.instance()
        out = []
        for run in runs:
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if record.is_dagster_event and (event.is_failure or event.is_step_up_for_retry):
                    error = getattr(event.event_specific_data, "error", None)
                    detail = error.to_string()[-2500:] if error else ""
                    out.append(f"{run.run_id[:8]} {event.message}\n{detail}")
        return "\n".join(out[-6:])

    def run_worker_pid(self, run_id: str) -> int | None:
        for record in self.instance().all_logs(run_id):
            if m := RUN_WORKER_PID.search(record.message or ""):
                return int(m.group(1))
        return None

    def step_started(self, run_id: str, step: str) -> bool:
        import dagster as dg

        return any(
            r.dagster_event.step_key == step
            for r in self.instance().all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        )

    def window(self, run_id: str) -> tuple[float, float]:
        """(start, end) of a run, seconds since the epoch, as its run record says."""
        record = self.instance().get_run_record_by_id(run_id)
        return record.start_time, record.end_time

    # --- the phases ----------------------------------------------------------------------------
    def landing_runs(self, feed: str, first, last) -> list:
        return [
            r for r in self.runs(**{"dagster/sensor_name": LANDING_SENSOR})
            if r.tags.get("dagster/run_key", "").startswith(f"{feed}:{first}:{last}:")
        ]  # fmt: skip

    def history(self) -> None:
        """The history lands before the stack starts: the landing sensor ingests it (one run per
        feed for the range), then a user backfills its features and the online store through
        GraphQL (automation builds the latest day only, as declarative automation does)."""
        began = time.monotonic()
        first, last = self.world.history
        label_days = sorted(p.name[5:] for p in (self.root / "landing" / "labels").glob("date=*"))
        ingested = wait_for(
            "the landing sensor's runs of the history",
            lambda: (
                (t := self.landing_runs("transactions", first, last))
                and (lab := self.landing_runs("labels", label_days[0], label_days[-1]))
                and t + lab
            ),
        )
        self.succeeded([r.run_id for r in ingested], "the history's ingestion")
        days = {RANGE_START: str(first), RANGE_END: str(last)}
        backfill = [self.submit("features_job", days), self.submit("serving_state_job", days)]
        self.succeeded(backfill, "the history's features and online store")
        self.notes["history_runs"] = [r.run_id for r in ingested] + backfill
        self.seconds["history"] = time.monotonic() - began

    def arrival(self) -> None:
        """Yesterday's files land, with a redelivered copy of an older day's first file. The
        landing sensor asks for three runs at once: yesterday's transactions and labels, and the
        redelivered day's transactions. The redelivered day's run process is killed (SIGKILL) once
        its ingestion step has started, and the daemon is restarted meanwhile; the run's retry
        (Dagster's run retries) completes it."""
        began = time.monotonic()
        y, x = self.world.yesterday, self.world.redelivered
        self.world.deliver_yesterday(self.root / "landing")
        self.notes["delivered_at"] = time.time()

        def asked():
            found = [
                self.landing_runs(feed, d, d)
                for feed, d in (("transactions", y), ("labels", y), ("transactions", x))
            ]
            return [runs[0] for runs in found] if all(found) else None

        today_tx, today_labels, redelivered = wait_for(
            "the landing sensor's runs of yesterday and the redelivered day", asked
        )
        self.notes["arrival_runs"] = {"transactions": today_tx.run_id, "labels": today_labels.run_id,
                                      "redelivered": redelivered.run_id}  # fmt: skip
        # The kill: the run's own process (the one the code server started, which runs the
        # multiprocess executor), once the step that writes bronze has started.
        run_id = redelivered.run_id
        pid = wait_for(
            "the redelivered day's run process and its ingestion step",
            lambda: self.step_started(run_id, "raw_transactions") and self.run_worker_pid(run_id),
            every=0.2,
        )
        assert _is_ours(pid), f"pid {pid} is not a process of this environment's Python"
        os.kill(pid, signal.SIGKILL)
        self.notes["killed"] = {"run_id": redelivered.run_id, "pid": pid, "at": time.time()}
        restarted = self.stack_cli("restart", "dagster-daemon", timeout=GIVE_UP)
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        self.notes["daemon_restart"] = json.loads(restarted.stdout)
        self.succeeded(
            [today_tx.run_id, today_labels.run_id], "yesterday's ingestion (across the daemon restart)"
        )
        killed = self.ended([redelivered.run_id], "the killed run to be marked failed")[0]
        assert killed.status.value == "FAILURE", killed.status
        retry = wait_for(
            "the killed run's retry",
            lambda: self.runs(**{"dagster/parent_run_id": redelivered.run_id}),
        )[0]
        self.succeeded([retry.run_id], "the killed run's retry")
        self.notes["retry_run"] = retry.run_id
        self.seconds["arrival"] = time.monotonic() - began

    def automation(self) -> None:
        """Declarative automation builds yesterday's features (after its ingestion checks pass)
        and feeds the online store with yesterday."""
        import dagster as dg

        began = time.monotonic()
        y = str(self.world.yesterday)

        def materialized_by_automation():
            runs = [r for r in self.runs(**{"dagster/sensor_name": AUTOMATION_SENSOR}) if r.is_finished]
            found = {}
            for key in ("transaction_features", "online_store_feed"):
                records = (
                    self.instance()
                    .fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[y]), limit=1
                    )
                    .records
                )
                if records and records[0].run_id in {r.run_id for r in runs}:
                    found[key] = records[0].run_id
            failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
            assert not failed, f"automation runs failed: {failed}\n{self.failure_messages(runs)}"
            return found if len(found) == 2 else None

        self.notes["automation_runs"] = wait_for("automation to build yesterday", materialized_by_automation)
        self.seconds["automation"] = time.monotonic() - began

    def retraining(self) -> None:
        """A retraining run launched through GraphQL while a second process writes to the same
        tracking server (two MLflow writers at once)."""
        began = time.monotonic()
        stop = self.root / "writer.stop"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, self.stack_env["MLFLOW_TRACKING_URI"], str(stop)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            run_id = self.submit("retraining_job", run_config=RETRAINING)
            self.succeeded([run_id], "the retraining run")
        finally:
            stop.touch()
            out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err[-3000:]
        self.notes["writer"] = json.loads(out.strip().splitlines()[-1])
        self.notes["retraining_run"] = run_id
        self.seconds["retraining"] = time.monotonic() - began

    def promotion(self) -> dict:
        """The promotion sensor promotes the version whose gates passed; both replicas switch to
        it. Returns each replica's deployment as its /health/details says."""
        from mlflow import MlflowClient

        began = time.monotonic()
        promoted = wait_for(
            "the promotion sensor's run", lambda: self.runs(**{"dagster/sensor_name": PROMOTION_SENSOR})
        )
        self.succeeded([r.run_id for r in promoted], "the promotion run")
        client = MlflowClient(tracking_uri=self.stack_env["MLFLOW_TRACKING_URI"])
        champion = client.get_model_version_by_alias("fraud_detector", "champion").version

        def serving(part: str):
            try:
                with urllib.request.urlopen(f"{self.url(part)}/health/details", timeout=5) as answer:
                    body = json.loads(answer.read())
            except (OSError, ValueError):
                return None
            versions = {a.get("version") for a in body.get("arms", [])}
            return body if versions == {champion} else None

        switched = {part: wait_for(f"{part} to serve v{champion}", lambda p=part: serving(p), every=0.3)
                    for part in ("serving-1", "serving-2")}  # fmt: skip
        self.notes["promotion"] = {"champion": champion, "run": promoted[0].run_id}
        self.seconds["promotion"] = time.monotonic() - began
        return switched

    def traffic(self) -> dict[str, int]:
        """Yesterday's monitoring is launched through GraphQL (as the daily schedule launches it at
        01:00; `monitoring` waits for it), then today's transactions are sent, alternating between
        the replicas, and the drain sensor moves every decision into the inference log."""
        import polars as pl

        from ml_assets.lib import tables

        began = time.monotonic()
        self.notes["monitoring_run"] = self.submit(
            "monitoring_job", {"dagster/partition": str(self.world.yesterday)}
        )
        answered = send_traffic([self.url("serving-1"), self.url("serving-2")], self.world.traffic())
        self.notes["traffic"] = answered
        lake_uri, options, _ = self.lake()
        log = f"{lake_uri}/{tables.INFERENCE_LOG}"

        def logged():
            drains = [r for r in self.runs(**{"dagster/sensor_name": DRAIN_SENSOR}) if r.is_finished]
            if not drains:
                return None
            try:
                rows = pl.read_delta(log, storage_options=options).height
            except Exception:  # the table not written yet
                return None
            return drains if rows >= answered.get("200", 0) else None

        drains = wait_for("the drain sensor to log every decision", logged, every=2)
        self.succeeded([r.run_id for r in drains], "the drain runs")
        self.notes["drain_runs"] = [r.run_id for r in drains]
        self.seconds["traffic_and_drain"] = time.monotonic() - began
        return answered

    def monitoring(self) -> None:
        """Yesterday's monitoring (launched with the traffic) succeeds."""
        began = time.monotonic()
        self.succeeded([self.notes["monitoring_run"]], "monitoring")
        self.seconds["monitoring"] = time.monotonic() - began

    def lake(self) -> tuple[str, dict[str, str], Path]:
        """(the lake's URI, its storage options with the credentials, the warehouse file)."""
        env = self.stack_env
        options = json.loads(env["ML_ASSETS_LAKE_STORAGE_OPTIONS"]) | {
            k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
        }
        return env["ML_ASSETS_LAKE_URI"], options, Path(env["ML_ASSETS_WAREHOUSE"])

    def training_version(self) -> int:
        """The training_set version the scenario's retraining run wrote (the retraining sensor
        may ask for another retraining on what monitoring measured since)."""
        import dagster as dg

        records = (
            self.instance()
            .get_records_for_run(
                self.notes["retraining_run"], of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            )
            .records
        )
        (record,) = [r for r in records if r.asset_materialization.asset_key == dg.AssetKey("training_set")]
        return int(record.asset_materialization.metadata["delta_version"].value)

    def fingerprints(self) -> dict[str, dict]:
        return fingerprints(*self.lake(), training_version=self.training_version())

    def own_runs(self) -> set[str]:
        """The runs the scenario caused: the ones it launched, the sensors' and automation's it
        waited for, and the killed run's retry."""
        notes = self.notes
        sensors = (LANDING_SENSOR, AUTOMATION_SENSOR, PROMOTION_SENSOR, DRAIN_SENSOR)
        asked = {r.run_id for name in sensors for r in self.runs(**{"dagster/sensor_name": name})}
        launched = {
            *notes["history_runs"],
            notes["retraining_run"],
            notes["monitoring_run"],
            notes["retry_run"],
        }
        return asked | launched


def _is_ours(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return False
    return argv0.startswith(str(Path(sys.executable).parent))


# The second MLflow writer: a run in an experiment of its own, one metric value per call, until the
# stop file appears (at most 2,000 values); prints what it wrote.
WRITER = """
import json, sys, time
from pathlib import Path
from mlflow import MlflowClient
uri, stop = sys.argv[1], Path(sys.argv[2])
client = MlflowClient(tracking_uri=uri)
experiment = client.create_experiment("concurrent-writer")
run = client.create_run(experiment)
first, written = time.time(), 0
while not stop.exists() and written < 2000:
    client.log_metric(run.info.run_id, "written", written, step=written)
    written += 1
    time.sleep(0.02)
client.set_terminated(run.info.run_id)
print(json.dumps({"run_id": run.info.run_id, "written": written, "first_at": first, "last_at": time.time()}))
"""
