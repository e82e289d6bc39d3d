"""The production topology for real, end to end (`make test-stack`; not in `make test`).

One stack comes up on free loopback ports in a temp data root, exactly as `make stack` starts it
(`python -m ml_assets.stack up` in its own process, so its servers outlive the command as they do
for a user), on a small simulated feed that ends today (ml_assets_tests/stack/world.py). Its own
daemon drives the scenario (ml_assets_tests/stack/scenario.py), phase by phase, one test each:

1. every part is healthy; the object store refuses a conditional PUT over an existing key, and a
   stale delta-rs writer commits after the other writer, never over it (what makes concurrent
   writers safe: without it, the concurrent ingestion below would prove nothing);
2. the history lands; the landing sensor ingests it; its features and the online store are
   backfilled through GraphQL;
3. yesterday lands with a redelivered copy of an older day's file: the sensor's three ingestion
   runs go at once in separate run processes; one of them is killed with SIGKILL once it writes,
   and the daemon is restarted meanwhile; Dagster's run retry completes the killed run;
4. declarative automation builds yesterday's features and feeds the online store;
5. a retraining run launched through GraphQL while another process writes to the same MLflow
   server;
6. the gates pass, the promotion sensor promotes, both replicas switch;
7. today's transactions are scored by both replicas, and the drain sensor logs every decision;
8. monitoring runs;
9. bronze, the features, the training set and the inference log equal, in row counts and content
   hashes, those of a clean run of the same feed on the embedded default (`make run`, in a
   process started once the stack is up: ml_assets_tests/stack/reference.py);
10. Dagster's run history shows every step of every run;
11. `down` stops every recorded PID (and its process group, and what the restarted daemon left)
    and leaves the data.

Where PostgreSQL or redis-server can't be installed, the module skips and says so (under CI, with
`CI` set, it fails instead).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ml_assets.lib.settings import environment_without_settings
from ml_assets.stack import BUCKET, CREDENTIALS, PARTS, _start_time
from ml_assets_tests.stack.scenario import Scenario
from ml_assets_tests.stack.world import differences, simulate, tables_of

pytestmark = [pytest.mark.stack, pytest.mark.timeout(1500)]
# The scenario runs on days that end today (UTC): its yesterday must stay the latest daily
# partition until automation has built it. Closer than this to midnight, the fixture waits.
MIDNIGHT_MARGIN = timedelta(minutes=8)


def _missing_programs() -> list[str]:
    missing = [] if list(Path("/usr/lib/postgresql").glob("*/bin/postgres")) else ["postgresql"]
    return missing + ([] if shutil.which("redis-server") else ["redis-server"])


def _wait_past_midnight() -> None:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    if midnight - now < MIDNIGHT_MARGIN:
        print(f"\n{(midnight - now).seconds} s to midnight UTC: waiting for the new day first")
        time.sleep((midnight - now).total_seconds() + 5)


@pytest.fixture(scope="module")
def scenario():
    """The stack, up, on the world's history, with the reference running beside it. Stopped at
    the end whatever happened (the test of `down` stops it first)."""
    missing = _missing_programs()
    if missing:
        why = f"not installed: {', '.join(missing)} (make stack installs them with apt-get where it can)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    _wait_past_midnight()
    began = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="ml_assets_stack_"))
    folder.chmod(0o711)  # PostgreSQL runs as the postgres user: it must reach its folder
    world = simulate(folder / "world")
    root = folder / "data"
    world.deliver_history(root / "landing")
    scenario = Scenario(root, world, environment_without_settings() | {"ML_ASSETS_DATA_DIR": str(root)})
    reference = None
    try:
        t0 = time.monotonic()
        up = scenario.stack_cli("up")
        scenario.seconds["up"] = time.monotonic() - t0
        assert up.returncode == 0, up.stderr[-4000:]
        print(f"\nstack up in {scenario.seconds['up']:.1f} s\n{up.stderr}")
        # The clean run beside it, once the stack is up (its start-up has the cores to itself): it
        # ends long before the comparison needs it.
        log = (folder / "reference.log").open("w")
        reference = subprocess.Popen(
            [sys.executable, "-m", "ml_assets_tests.stack.reference",
             str(world.folder), str(folder / "reference"), str(folder / "reference.json")],
            env=environment_without_settings(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        scenario.notes.update(
            reference=reference, reference_log=folder / "reference.log", began=began,
            reference_out=folder / "reference.json", reference_root=folder / "reference",
        )  # fmt: skip
        yield scenario
    finally:
        scenario.close()
        scenario.stack_cli("down", timeout=300)
        if reference is not None and reference.poll() is None:
            reference.kill()
            reference.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(scenario):
    import boto3

    return boto3.client(
        "s3", endpoint_url=scenario.stack_env["MLFLOW_S3_ENDPOINT_URL"],
        region_name=CREDENTIALS["AWS_REGION"], aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


@pytest.fixture
def phase(scenario):
    """Runs a phase; once one failed, the later ones skip (each builds on the one before)."""

    def run(name: str, *args):
        if scenario.notes.get("failed"):
            pytest.skip(f"the phase {scenario.notes['failed']!r} failed: nothing to build on")
        try:
            return getattr(scenario, name)(*args)
        except BaseException:
            scenario.notes["failed"] = name
            raise

    return run


def test_every_part_is_healthy_and_on_loopback(scenario):
    out = scenario.stack_cli("status", timeout=120)
    assert out.returncode == 0, out.stdout
    parts = json.loads(out.stdout)["parts"]
    assert list(parts) == list(PARTS)
    assert {name: p["healthy"] for name, p in parts.items()} == dict.fromkeys(PARTS, True)
    assert {urlsplit(p["url"]).hostname for p in parts.values()} == {"127.0.0.1"}
    # The environment a user's `make run STACK=1` gets points at these servers.
    stack_env = scenario.stack_env
    assert stack_env["MLFLOW_TRACKING_URI"] == parts["mlflow"]["url"]
    assert stack_env["ML_ASSETS_ONLINE_STORE"] == parts["redis"]["url"]
    assert stack_env["ML_ASSETS_EXECUTOR"] == "multiprocess"
    assert stack_env["ML_ASSETS_LAKE_URI"] == f"s3://{BUCKET}/lake"


def test_the_object_store_refuses_a_conditional_put_over_an_existing_key(s3):
    """Delta's commits are PUTs with If-None-Match: * (conditional_put=etag): a store that let the
    second one through would let two writers both write the same table version."""
    from botocore.exceptions import ClientError

    key = "checks/conditional"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"first"


def test_a_stale_delta_writer_commits_after_the_other_never_over_it(scenario):
    """Two delta-rs writers from the same version, with the lake's own storage options: the
    second one's PUT of that version is refused, and it commits the next one. A store that ignored
    If-None-Match would let it overwrite the first writer's commit (rows lost)."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    env = scenario.stack_env
    options = json.loads(env["ML_ASSETS_LAKE_STORAGE_OPTIONS"]) | {k: env[k] for k in CREDENTIALS}
    uri = f"s3://{BUCKET}/checks/two-writers"
    write_deltalake(uri, pa.table({"writer": ["setup"]}), storage_options=options)
    stale = DeltaTable(uri, storage_options=options)  # both writers start from version 0
    write_deltalake(uri, pa.table({"writer": ["first"]}), mode="append", storage_options=options)
    write_deltalake(stale, pa.table({"writer": ["second"]}), mode="append")
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 2
    assert sorted(table.to_pyarrow_table()["writer"].to_pylist()) == ["first", "second", "setup"]
    assert (
        DeltaTable(uri, version=1, storage_options=options)
        .to_pyarrow_table()["writer"]
        .to_pylist()
        .count("first")
        == 1
    )


def test_the_landing_sensor_ingests_the_history_and_graphql_backfills_it(phase, scenario, s3):
    phase("history")
    for table in ("bronze/transactions", "bronze/labels"):
        keys = [
            o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"lake/{table}/").get("Contents", [])
        ]
        assert any("/_delta_log/" in k for k in keys), keys
    assert not (scenario.root / "lake").exists()  # nothing went to the local default


def test_two_days_ingest_at_once_through_a_kill_and_a_daemon_restart(phase, scenario):
    phase("arrival")
    notes = scenario.notes
    runs = notes["arrival_runs"]
    # Separate run processes, at the same time, writing the same table (bronze/transactions).
    yesterday, redelivered = (scenario.window(runs[k]) for k in ("transactions", "redelivered"))
    assert max(yesterday[0], redelivered[0]) < min(yesterday[1], redelivered[1]), (yesterday, redelivered)
    pids = {k: scenario.run_worker_pid(runs[k]) for k in runs}
    assert len(set(pids.values())) == 3 and None not in pids.values(), pids
    # The restarted daemon took the work on: the retry was launched after the old daemon stopped.
    restart = notes["daemon_restart"]
    retry_start = scenario.window(notes["retry_run"])[0]
    assert retry_start > notes["killed"]["at"]
    print(
        f"\ndaemon restart: down {restart['started_at'] - restart['stopped_at']:.1f} s, healthy after "
        f"{restart['healthy_at'] - restart['stopped_at']:.1f} s; the killed run's retry started "
        f"{retry_start - notes['killed']['at']:.1f} s after the kill"
    )


def test_automation_builds_yesterday(phase):
    phase("automation")


def test_retraining_through_graphql_beside_a_second_mlflow_writer(phase, scenario, s3):
    import psycopg2
    from mlflow import MlflowClient

    phase("retraining")
    notes = scenario.notes
    env = scenario.stack_env
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    writer = notes["writer"]
    # Both wrote at once: the writer's span covers the training step's, and lost nothing.
    (step,) = [
        s
        for s in scenario.instance().get_run_step_stats(notes["retraining_run"])
        if s.step_key == "fraud_model"
    ]
    assert writer["first_at"] < step.start_time and step.end_time < writer["last_at"], (writer, step)
    history = client.get_metric_history(writer["run_id"], "written")
    assert sorted(m.step for m in history) == list(range(writer["written"]))
    version = client.get_model_version_by_alias("fraud_detector", "challenger")
    assert version.tags["validation_verdict"] == "passed", version.tags
    # The runs' rows are in PostgreSQL, the model's files in the object store.
    secrets = json.loads((scenario.stack_dir / "secrets.json").read_text())
    with psycopg2.connect(host="127.0.0.1", port=scenario.ports["postgres"], dbname="mlflow", user="mlflow",
                          password=secrets["mlflow"]) as con, con.cursor() as cur:  # fmt: skip
        cur.execute(
            "select run_uuid, status from runs where run_uuid in %s", ((writer["run_id"], version.run_id),)
        )
        assert dict(cur.fetchall()) == {writer["run_id"]: "FINISHED", version.run_id: "FINISHED"}
    con.close()
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow-artifacts/").get("Contents", [])
    ]
    assert any(version.run_id in k for k in keys), keys[:20]


def test_the_promotion_sensor_promotes_and_both_replicas_switch(phase, scenario):
    switched = phase("promotion")
    champion = scenario.notes["promotion"]["champion"]
    assert {part: [a["version"] for a in body["arms"]] for part, body in switched.items()} == {
        "serving-1": [champion], "serving-2": [champion]
    }  # fmt: skip


def test_traffic_is_scored_and_the_decision_log_drains(phase, scenario):
    answered = phase("traffic")
    sent = len(scenario.world.traffic())
    assert sum(answered.values()) == sent and answered.get("200", 0) > 0.95 * sent, answered
    assert set(answered) <= {"200", "422"}, answered  # the feed's broken rows: refused, never a 5xx


def test_monitoring_runs(phase):
    phase("monitoring")


def test_nothing_lost_or_duplicated_against_the_embedded_default(phase, scenario):
    if scenario.notes.get("failed"):
        pytest.skip(f"the phase {scenario.notes['failed']!r} failed: nothing to compare")
    reference, reference_root = scenario.notes["reference"], scenario.notes["reference_root"]
    reference.wait(timeout=900)
    result = json.loads(scenario.notes["reference_out"].read_text())
    assert "error" not in result, (
        result.get("error", "") + scenario.notes["reference_log"].read_text()[-2000:]
    )
    stack = scenario.fingerprints()
    if stack != result["fingerprints"]:
        ours = tables_of(*scenario.lake(), training_version=scenario.training_version())
        theirs = tables_of(str(reference_root / "lake"), {}, reference_root / "warehouse.duckdb")
        report = {name: differences(ours[name], theirs[name]) for name in stack
                  if stack[name] != result["fingerprints"][name]}  # fmt: skip
        pytest.fail("the stack's tables differ from the embedded default's:\n" + json.dumps(report, indent=1))
    assert scenario.notes["traffic"] == result["traffic"]
    total = time.monotonic() - scenario.notes["began"]
    rounded = {k: round(v, 1) for k, v in scenario.seconds.items()}
    beside = {k: round(v, 1) for k, v in result["seconds"].items()}
    print(
        f"\nphases: {json.dumps(rounded)}; scenario total {total:.0f} s; the embedded default beside it: "
        f"{json.dumps(beside)}\nrows: {json.dumps({k: v['rows'] for k, v in stack.items()})}"
    )


def test_the_run_history_shows_every_step(scenario):
    """Every run the scenario caused is in the instance, and every step it started succeeded; the
    killed run's unfinished steps succeeded in its retry. A run the daemon asked for on its own
    meanwhile (the retraining sensor, on what monitoring measured of this small world) is in the
    history, queued, running or with every step it started ended, and is listed."""
    import dagster as dg

    if scenario.notes.get("failed"):
        pytest.skip(f"the phase {scenario.notes['failed']!r} failed")
    instance = scenario.instance()
    runs = instance.get_runs()
    own = scenario.own_runs()
    killed = scenario.notes["killed"]["run_id"]
    lines, unfinished = [], {}
    for run in reversed(runs):
        stats = instance.get_run_step_stats(run.run_id)
        started = {
            r.dagster_event.step_key
            for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        }
        succeeded = {s.step_key for s in stats if s.status.value == "SUCCESS"}
        asked_by = "" if run.run_id in own else f"  (asked for by {run.tags.get('dagster/sensor_name')})"
        line = f"{run.job_name[:36]:<36} {run.status.value:<8} {len(succeeded):>2} steps  {run.run_id[:8]}"
        lines.append(line + asked_by)
        if run.run_id == killed:
            assert run.status == dg.DagsterRunStatus.FAILURE
            unfinished = started - succeeded
        elif run.run_id in own:
            assert run.status == dg.DagsterRunStatus.SUCCESS, (run.job_name, run.run_id, run.status)
            assert started and started <= succeeded, (run.job_name, started - succeeded)
        else:
            assert "dagster/sensor_name" in run.tags or "dagster/schedule_name" in run.tags, run.tags
            # Still in the run queue or running when the scenario ends is fine: the daemon asked
            # for it on its own time (CI once found a retraining run still QUEUED here).
            S = dg.DagsterRunStatus
            unfinished_yet = {S.QUEUED, S.NOT_STARTED, S.STARTING, S.STARTED}
            assert run.is_finished or run.status in unfinished_yet, run.status
            if run.is_finished:
                assert all(s.end_time for s in stats), [s.step_key for s in stats if not s.end_time]
    retry = scenario.notes["retry_run"]
    retried = {s.step_key for s in instance.get_run_step_stats(retry) if s.status.value == "SUCCESS"}
    assert unfinished <= retried, unfinished - retried
    assert own <= {r.run_id for r in runs}
    jobs = {r.job_name for r in runs if r.run_id in own}
    assert {
        "features_job",
        "serving_state_job",
        "retraining_job",
        "promotion_job",
        "monitoring_job",
    } <= jobs, jobs
    print("\n" + "\n".join(lines))


def test_down_stops_every_recorded_pid_and_keeps_the_data(scenario):
    root = scenario.stack_dir
    records = {p.stem: json.loads(p.read_text()) for p in (root / "pids").glob("*.pid")}
    assert set(records) == set(PARTS)
    retired = [int(p.stem.rsplit("-", 1)[1]) for p in (root / "pids" / "retired").glob("*.pid")]
    scenario.close()
    out = scenario.stack_cli("down", timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stopped"] == {name: records[name]["pid"] for name in reversed(PARTS)}
    for name, record in records.items():
        pid = record["pid"]
        # Gone, or (the number reused since) another process.
        assert _start_time(pid) != record["start_time"], name
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing of its process group is left either (code servers, runs)
    for pgid in retired:  # what the restarted daemon left: its code server, done with its runs
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    assert not list((root / "pids").glob("*.pid"))
    status = json.loads(scenario.stack_cli("status", timeout=120).stdout)["parts"]
    assert not any(p["healthy"] for p in status.values())
    # The data stays: PostgreSQL's cluster and Redis's append-only file.
    assert (root / "postgres" / "PG_VERSION").exists()
    assert list((root / "redis").rglob("*.aof*"))
