"""The one-box stack for real (`make test-stack`; not in `make test`: it starts eight servers).

One stack comes up on free loopback ports in a temp data root, exactly as `make stack` starts it
(`python -m ml_assets.stack up` in its own process, so its servers outlive the command as they do
for a user). Then: every part reports healthy; the object store refuses a conditional PUT over an
existing key (what Delta's commits rely on); one simulated day's ingestion is launched through the
webserver's GraphQL API, queued, dequeued and run by the daemon with the multiprocess executor, and
its Delta tables land in the object store; one MLflow run is written through the tracking server
(its row in PostgreSQL, its artifact in the object store). Last, `down` stops every recorded PID
(and its process group) and leaves the data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ml_assets.lib.settings import environment_without_settings
from ml_assets.stack import BUCKET, CREDENTIALS, PARTS, _start_time
from ml_assets_tests.conftest import launch_through_graphql

pytestmark = pytest.mark.stack

DAY = "2026-01-18"  # the 4th simulated day: its transactions, and the labels of the 1st
# How long to wait for the run (a multiprocess run imports the code location once per step).
RUN_GIVE_UP = 600


def _missing_programs() -> list[str]:
    missing = [] if list(Path("/usr/lib/postgresql").glob("*/bin/postgres")) else ["postgresql"]
    return missing + ([] if shutil.which("redis-server") else ["redis-server"])


def _stack_cli(env: dict[str, str], command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml_assets.stack", command],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _read_env_file(path: Path) -> dict[str, str]:
    """stack.env read the way a shell sources it."""
    out = subprocess.run(
        ["bash", "-c", f"set -a; . {path}; env -0"], capture_output=True, check=True, env={}
    ).stdout.decode()
    return dict(line.split("=", 1) for line in out.split("\0") if "=" in line)


@pytest.fixture(scope="module")
def stack():
    """A stack in a temp data root: (its data root, its stack.env, the seconds `up` took).
    Stopped at the end whatever happened (the tests of `down` stop it first)."""
    missing = _missing_programs()
    if missing:
        why = f"not installed: {', '.join(missing)} (make stack installs them with apt-get where it can)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="ml_assets_stack_"))
    # PostgreSQL runs as the postgres user: it must be able to reach its folder under the root.
    root.chmod(0o711)
    env = environment_without_settings() | {"ML_ASSETS_DATA_DIR": str(root)}
    simulate = [sys.executable, "-m", "ml_assets.simulate", "--start", "2026-01-15", "--days", "4",
                "--transactions-per-day", "400", "--seed", "7"]  # fmt: skip
    subprocess.run(simulate, env=env, check=True, capture_output=True)
    began = time.monotonic()
    up = _stack_cli(env, "up")
    seconds = time.monotonic() - began
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        print(f"\nstack up in {seconds:.1f} s\n{up.stderr}")
        yield root, _read_env_file(root / "stack" / "stack.env"), env
    finally:
        _stack_cli(env, "down", timeout=300)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(stack):
    import boto3

    _, stack_env, _ = stack
    return boto3.client(
        "s3", endpoint_url=stack_env["MLFLOW_S3_ENDPOINT_URL"], region_name=CREDENTIALS["AWS_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


def test_every_part_is_healthy_and_on_loopback(stack):
    _, stack_env, env = stack
    out = _stack_cli(env, "status", timeout=120)
    assert out.returncode == 0, out.stdout
    parts = json.loads(out.stdout)["parts"]
    assert list(parts) == list(PARTS)
    assert {name: p["healthy"] for name, p in parts.items()} == dict.fromkeys(PARTS, True)
    assert {urlsplit(p["url"]).hostname for p in parts.values()} == {"127.0.0.1"}
    # The environment a user's `make run STACK=1` gets points at these servers.
    assert stack_env["MLFLOW_TRACKING_URI"] == parts["mlflow"]["url"]
    assert stack_env["ML_ASSETS_ONLINE_STORE"] == parts["redis"]["url"]
    assert stack_env["ML_ASSETS_EXECUTOR"] == "multiprocess"
    assert stack_env["ML_ASSETS_LAKE_URI"] == f"s3://{BUCKET}/lake"


def test_the_object_store_refuses_a_conditional_put_over_an_existing_key(s3):
    """Delta's commits are PUTs with If-None-Match: * (conditional_put=etag): a store that let the
    second one through would let two writers both write the same table version."""
    from botocore.exceptions import ClientError

    key = "smoke/conditional"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"first"


RUN_EVENTS = """
query ($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}
"""


def test_a_day_ingested_through_graphql_runs_on_the_daemon_into_the_object_store(stack, s3):
    import httpx
    from dagster import DagsterRunStatus

    root, stack_env, _ = stack
    ports = json.loads((root / "stack" / "ports.json").read_text())
    run_id, status = launch_through_graphql(
        ports["dagster-webserver"], "ingestion_job", {"dagster/partition": DAY}, RUN_GIVE_UP
    )
    response = httpx.post(
        f"http://127.0.0.1:{ports['dagster-webserver']}/graphql",
        json={"query": RUN_EVENTS, "variables": {"runId": run_id}}, timeout=60,
    )  # fmt: skip
    events = response.json()["data"]["logsForRun"]["events"]
    messages = [e.get("message") or "" for e in events]
    assert status == DagsterRunStatus.SUCCESS, "\n".join(messages[-30:])
    kinds = {e["__typename"] for e in events}
    # Queued by the webserver, started (only the daemon's run coordinator takes runs off the
    # queue), and its steps run by the multiprocess executor.
    assert {"RunEnqueuedEvent", "RunStartingEvent", "RunSuccessEvent"} <= kinds, kinds
    assert any("multiprocess executor" in m for m in messages), messages[:20]

    for table in ("bronze/transactions", "bronze/labels"):
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"lake/{table}/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        assert any("/_delta_log/" in k for k in keys), keys
        assert any("=" + DAY in k and k.endswith(".parquet") for k in keys), keys
    assert not (root / "lake").exists()  # nothing went to the local default


def test_mlflow_writes_through_the_server_to_postgres_and_the_object_store(stack, s3, monkeypatch):
    import psycopg2
    from mlflow import MlflowClient

    root, stack_env, _ = stack
    for key in ("MLFLOW_S3_ENDPOINT_URL", *CREDENTIALS):  # what a client writing artifacts needs
        monkeypatch.setenv(key, stack_env[key])
    client = MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment(
        "stack-smoke", artifact_location=f"{stack_env['ML_ASSETS_MLFLOW_ARTIFACTS']}/stack-smoke"
    )
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "rows", "400")
    note = root / "note.txt"
    note.write_text("written through the stack")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)

    assert client.get_run(run.info.run_id).data.params == {"rows": "400"}
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow-artifacts/stack-smoke/")["Contents"]
    ]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
    # The server's backend store is the stack's PostgreSQL database `mlflow`.
    secrets = json.loads((root / "stack" / "secrets.json").read_text())
    port = json.loads((root / "stack" / "ports.json").read_text())["postgres"]
    with psycopg2.connect(host="127.0.0.1", port=port, dbname="mlflow", user="mlflow",
                          password=secrets["mlflow"]) as con, con.cursor() as cur:  # fmt: skip
        cur.execute("select status from runs where run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone() == ("FINISHED",)
    con.close()


def test_down_stops_every_recorded_pid_and_keeps_the_data(stack):
    root, _, env = stack
    records = {p.stem: json.loads(p.read_text()) for p in (root / "stack" / "pids").glob("*.pid")}
    assert set(records) == set(PARTS)
    out = _stack_cli(env, "down", timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stopped"] == {name: records[name]["pid"] for name in reversed(PARTS)}
    for name, record in records.items():
        pid = record["pid"]
        # Gone, or (the number reused since) another process.
        assert _start_time(pid) != record["start_time"], name
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing of its process group is left either (code servers, runs)
    assert not list((root / "stack" / "pids").glob("*.pid"))
    status = json.loads(_stack_cli(env, "status", timeout=120).stdout)["parts"]
    assert not any(p["healthy"] for p in status.values())
    # The data stays: PostgreSQL's cluster and Redis's append-only file.
    assert (root / "stack" / "postgres" / "PG_VERSION").exists()
    assert list((root / "stack" / "redis").rglob("*.aof*"))
