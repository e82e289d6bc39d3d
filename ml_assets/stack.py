"""The production topology on one box: `python -m ml_assets.stack up|status|down|restart PART`
(`make stack`, `make stack-status`, `make stack-down`, `make stack-restart PART=...`).

`up` starts, in the background, every part production runs as a managed service, each a real
server on 127.0.0.1, and returns once each answers:

- postgres: Debian's PostgreSQL, Dagster's run/event/schedule storage (database `dagster`) and
  MLflow's backend store (database `mlflow`). In production: RDS / Cloud SQL.
- object-store: moto's S3 server, holding the lake (`s3://ml-assets/lake`) and MLflow's
  artifacts; it refuses a conditional PUT (If-None-Match: *) over an existing key, which is what
  delta-rs's commits rely on. In production: S3 / GCS.
- mlflow: `mlflow server` on postgres, artifacts on the object store.
- redis: `redis-server`, append-only with fsync at every write: the serving's online store.
  In production: ElastiCache.
- dagster-webserver, dagster-daemon: postgres storage, the default run launcher, the
  multiprocess executor, a run queue with limits. In production: dagster-k8s.
- serving-1, serving-2: two replicas of `python -m ml_assets.serving` sharing Redis. In
  production: KServe (or these replicas behind a load balancer).

Everything lives under `<data>/stack/` (paths.stack_dir()): each server's data, the stack's
DAGSTER_HOME, `ports.json` (chosen once: ML_ASSETS_STACK_PORT_BASE, or free ports), one PID file
per part under `pids/`, logs under `logs/`, the parts' Python bytecode under `pycache/`, and
`stack.env`: the settings that point any process at the stack (`set -a; . <data>/stack/stack.env`
before `make run`, or `make run STACK=1`). `down` stops each part by its recorded PID (its whole
process group: the webserver's code server and the daemon's runs with it) and keeps the data.
`restart PART` stops one part and starts it again; the daemon alone, so that the runs it launched
finish (see `restart`). The warehouse stays a DuckDB file under the data root: one writer, so the
dbt step holds the instance's `warehouse` pool of one slot.

moto keeps objects in memory: `down` loses the lake and MLflow's artifacts (PostgreSQL, Redis and
DuckDB keep theirs). Heavy libraries (psycopg2, boto3) are imported only where used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ml_assets.lib import paths
from ml_assets.lib.settings import environment_without_settings, value

PARTS = (
    "postgres",
    "object-store",
    "redis",
    "mlflow",
    "dagster-webserver",
    "dagster-daemon",
    "serving-1",
    "serving-2",
)
BUCKET = "ml-assets"
# moto accepts any credentials; delta-rs, boto3 and MLflow still want some to sign with.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "stack", "AWS_SECRET_ACCESS_KEY": "stack", "AWS_REGION": "us-east-1"}
BIN = Path(sys.executable).parent
# How long `up` waits for one part before it gives up and says which (MLflow migrating a new
# database and a code location loading on two busy cores take tens of seconds).
START_TIMEOUT = 300.0
STOP_TIMEOUT = 60.0


class StackError(RuntimeError):
    """A part that could not be started, with the reason and the tail of its log."""


@dataclass(frozen=True)
class Stack:
    """Where one stack's state lives, and its ports (fixed at its first start)."""

    root: Path
    ports: dict[str, int]

    @classmethod
    def here(cls) -> Stack:
        """The stack of the current data root, ports chosen now if it never started."""
        root = paths.stack_dir()
        state = root / "ports.json"
        if state.exists():
            return cls(root, json.loads(state.read_text()))
        base = value("ML_ASSETS_STACK_PORT_BASE")
        ports = {name: int(base) + i for i, name in enumerate(PARTS)} if base else _free_ports(PARTS)
        return cls(root, ports)

    def save(self) -> None:
        for sub in ("pids", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "ports.json").write_text(json.dumps(self.ports, indent=2))

    # --- where things are -------------------------------------------------------------------
    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    def url(self, name: str) -> str:
        port = self.ports[name]
        return {
            "postgres": f"postgresql://dagster@127.0.0.1:{port}/dagster",
            "redis": f"redis://127.0.0.1:{port}/0",
        }.get(name, f"http://127.0.0.1:{port}")

    def secret(self, role: str) -> str:
        """The password of a PostgreSQL role, made at the stack's first start (0600 file)."""
        path = self.root / "secrets.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        if role not in known:
            known[role] = secrets.token_urlsafe(24)
            path.touch(mode=0o600)
            path.write_text(json.dumps(known))
        return known[role]

    def environment(self) -> dict[str, str]:
        """The settings (and AWS/MLflow variables of the libraries) that point a process at the
        stack: what stack.env holds."""
        store = self.url("object-store")
        return {
            "ML_ASSETS_DATA_DIR": str(paths.data_dir()),
            "DAGSTER_HOME": str(self.dagster_home),
            "ML_ASSETS_EXECUTOR": "multiprocess",
            "ML_ASSETS_LAKE_URI": f"s3://{BUCKET}/lake",
            "ML_ASSETS_LAKE_STORAGE_OPTIONS": json.dumps(
                # Commits are conditional PUTs (If-None-Match: *), which moto enforces.
                {"AWS_ENDPOINT_URL": store, "AWS_ALLOW_HTTP": "true", "conditional_put": "etag"}
            ),
            # dbt's delta plugin opens bronze with delta-rs's defaults, which take the endpoint
            # from the environment (production's S3 needs none), as boto3 does.
            "AWS_ENDPOINT_URL": store,
            "AWS_ALLOW_HTTP": "true",
            "ML_ASSETS_WAREHOUSE": str(paths.warehouse_path()),
            "MLFLOW_TRACKING_URI": self.url("mlflow"),
            # New experiments keep artifacts on the object store, written there directly (as run
            # pods do in production); the server's own default goes there too, through it.
            "ML_ASSETS_MLFLOW_ARTIFACTS": f"s3://{BUCKET}/mlflow-artifacts",
            "MLFLOW_S3_ENDPOINT_URL": store,
            "ML_ASSETS_ONLINE_STORE": self.url("redis"),
            "DAGSTER_PG_PASSWORD": self.secret("dagster"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **CREDENTIALS,
        }

    def write_env(self) -> Path:
        """stack.env: KEY='value' lines a shell (and so a make recipe) can source."""
        path = self.root / "stack.env"
        lines = [f"{k}={shlex.quote(v)}" for k, v in self.environment().items()]
        path.touch(mode=0o600)  # it holds the database password
        path.write_text(
            "# Written by `make stack` (ml_assets/stack.py): set -a; . this file\n" + "\n".join(lines) + "\n"
        )
        return path


def _free_ports(names) -> dict[str, int]:
    sockets = []
    try:
        for _ in names:  # all held open at once, so no two are the same
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return {name: s.getsockname()[1] for name, s in zip(names, sockets, strict=True)}
    finally:
        for s in sockets:
            s.close()


# --- processes, by PID -------------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), None if gone or a zombie: a PID file
    names the process it was written for, not a later one that reused the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _pid_file(stack: Stack, name: str) -> Path:
    return stack.root / "pids" / f"{name}.pid"


def recorded_pid(stack: Stack, name: str) -> int | None:
    """The PID of the part's process if it still runs (the one `up` started), else None."""
    path = _pid_file(stack, name)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record["pid"] if _start_time(record["pid"]) == record["start_time"] else None


def _spawn(stack: Stack, name: str, argv: list[str], env: dict[str, str], **popen) -> int:
    log = (stack.root / "logs" / f"{name}.log").open("ab")
    # A session of its own: `down` signals the whole group (code servers, runs, postgres's
    # backends), and the part outlives `up`.
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, **popen,
    )  # fmt: skip
    log.close()
    record = {"pid": proc.pid, "start_time": _start_time(proc.pid), "started_at": time.time(), "argv": argv}
    _pid_file(stack, name).write_text(json.dumps(record))
    return proc.pid


def _log_tail(stack: Stack, name: str) -> str:
    path = stack.root / "logs" / f"{name}.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _wait(stack: Stack, name: str, ready) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if recorded_pid(stack, name) is None:
            raise StackError(f"{name} exited while starting:\n{_log_tail(stack, name)}")
        if time.monotonic() > deadline:
            raise StackError(f"{name} not healthy after {START_TIMEOUT:.0f} s:\n{_log_tail(stack, name)}")
        time.sleep(0.3)


# --- health ------------------------------------------------------------------------------------
def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _graphql(stack: Stack, query: str) -> dict | None:
    request = urllib.request.Request(
        f"{stack.url('dagster-webserver')}/graphql",
        json.dumps({"query": query}).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read()).get("data")
    except (OSError, ValueError):
        return None


def _pg_connect(stack: Stack, db: str = "postgres", user: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host="127.0.0.1", port=stack.ports["postgres"], dbname=db, user=user,
        password=stack.secret(user), connect_timeout=3,
    )  # fmt: skip


def _healthy(stack: Stack, name: str) -> bool:
    """Whether the part answers as it should (not merely whether its process runs)."""
    try:
        if name == "postgres":
            with _pg_connect(stack, "dagster", "dagster") as con, con.cursor() as cur:
                cur.execute("select 1")
                return cur.fetchone() == (1,)
        if name == "redis":
            with socket.create_connection(("127.0.0.1", stack.ports["redis"]), timeout=3) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")  # "-LOADING" while it replays its AOF
    except Exception:  # psycopg2's errors, refused connections: not healthy, whatever the cause
        return False
    if name == "object-store":
        return _http_status(f"{stack.url(name)}/moto-api/") == 200
    if name == "mlflow":
        return _http_status(f"{stack.url(name)}/health") == 200
    if name == "dagster-webserver":
        data = _graphql(
            stack, "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
        )
        entries = (data or {}).get("workspaceOrError", {}).get("locationEntries", [])
        return [(e["name"], e["loadStatus"]) for e in entries] == [("ml_assets", "LOADED")]
    if name == "dagster-daemon":
        fields = "daemonType required healthy lastHeartbeatTime"
        query = f"{{ instance {{ daemonHealth {{ allDaemonStatuses {{ {fields} }} }} }} }}"
        data = _graphql(stack, query)
        statuses = (data or {}).get("instance", {}).get("daemonHealth", {}).get("allDaemonStatuses", [])
        required = [s for s in statuses if s["required"]]
        # Heartbeats of this process: a daemon that was just replaced leaves fresh ones behind.
        since = json.loads(_pid_file(stack, name).read_text()).get("started_at", 0)
        return bool(required) and all(
            s["healthy"] and (s["lastHeartbeatTime"] or 0) >= since for s in required
        )
    # A replica with no champion yet answers 503: it is live.
    return _http_status(f"{stack.url(name)}/health") in (200, 503)


def status(stack: Stack | None = None) -> dict:
    """{"parts": {name: {"url", "healthy", "pid"}}}: healthy means running and answering."""
    stack = stack or Stack.here()
    parts = {}
    for name in PARTS:
        pid = recorded_pid(stack, name)
        parts[name] = {
            "url": stack.url(name),
            "healthy": pid is not None and _healthy(stack, name),
            "pid": pid,
        }
    return {"parts": parts}


# --- starting each part ------------------------------------------------------------------------
def _child_env(stack: Stack) -> dict[str, str]:
    """The shell's environment without any setting of ours (a shell with production's variables
    must not point a part elsewhere), then the stack's."""
    base = environment_without_settings()
    base["PATH"] = os.pathsep.join([str(BIN), base.get("PATH", "")])
    # Every run, and every step of it, is a process that imports the code location: with bytecode
    # kept (here, once for all parts), none compiles the modules again, even where the shell says
    # not to write any (PYTHONDONTWRITEBYTECODE) or the environment's folders are read-only.
    base.pop("PYTHONDONTWRITEBYTECODE", None)
    base["PYTHONPYCACHEPREFIX"] = str(stack.root / "pycache")
    return base | stack.environment()


def _postgres_bin() -> Path:
    """Debian's PostgreSQL binaries: /usr/lib/postgresql/<newest version>/bin."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise StackError("PostgreSQL is not installed: apt-get install -y postgresql")
    return versions[-1].parent


def _as_postgres_user() -> dict:
    """PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` user."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _start_postgres(stack: Stack, env: dict[str, str]) -> None:
    pg_bin = _postgres_bin()
    data = stack.root / "postgres"
    who = _as_postgres_user()
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, exist_ok=True)
        pwfile = stack.root / "postgres.pw"
        pwfile.write_text(stack.secret("postgres") + "\n")
        if who:
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            subprocess.run(
                [str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"],
                check=True, capture_output=True, text=True, **who,
            )  # fmt: skip
        except subprocess.CalledProcessError as e:
            raise StackError(
                f"initdb failed (as root, the data root must be reachable by the postgres user):\n{e.stderr}"
            ) from e
        except PermissionError as e:
            raise StackError(f"initdb could not run as postgres: {e}") from e
        finally:
            pwfile.unlink(missing_ok=True)
    _spawn(
        stack, "postgres",
        # TCP on loopback only, no Unix socket (no shared /var/run folder needed).
        [str(pg_bin / "postgres"), "-D", str(data), "-p", str(stack.ports["postgres"]),
         "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
        env, cwd=data, **who,
    )  # fmt: skip


def _create_databases(stack: Stack) -> None:
    """The roles and databases of Dagster and MLflow (each its own), made once."""

    def up() -> bool:
        try:
            _pg_connect(stack).close()
            return True
        except Exception:  # not accepting connections yet
            return False

    _wait(stack, "postgres", up)
    con = _pg_connect(stack)
    con.autocommit = True  # CREATE DATABASE can't run in a transaction
    with con.cursor() as cur:
        for role in ("dagster", "mlflow"):
            cur.execute("select 1 from pg_roles where rolname = %s", (role,))
            if not cur.fetchone():
                cur.execute(f"create role {role} login password %s", (stack.secret(role),))
            cur.execute("select 1 from pg_database where datname = %s", (role,))
            if not cur.fetchone():
                cur.execute(f"create database {role} owner {role}")
    con.close()


def _create_bucket(stack: Stack) -> None:
    import boto3

    _wait(stack, "object-store", lambda: _healthy(stack, "object-store"))
    client = boto3.client(
        "s3", endpoint_url=stack.url("object-store"), region_name=CREDENTIALS["AWS_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)


def _write_instance(stack: Stack) -> None:
    from ml_assets.lib import dagster_instance

    stack.dagster_home.mkdir(parents=True, exist_ok=True)
    values = dagster_instance.stack(
        pg_port=stack.ports["postgres"], compute_logs_dir=stack.dagster_home / "compute_logs"
    )
    (stack.dagster_home / "dagster.yaml").write_text(dagster_instance.render(values))


def _argv(stack: Stack, name: str) -> list[str]:
    port = str(stack.ports[name])
    if name == "object-store":
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port]
    if name == "redis":
        folder = stack.root / "redis"
        folder.mkdir(exist_ok=True)
        return ["redis-server", "--bind", "127.0.0.1", "--port", port, "--dir", str(folder),
                "--appendonly", "yes", "--appendfsync", "always", "--save", ""]  # fmt: skip
    if name == "mlflow":
        # No password on the command line (ps shows it): libpq reads it from PGPASSFILE. The driver
        # is named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed.
        backend = f"postgresql+psycopg2://mlflow@127.0.0.1:{stack.ports['postgres']}/mlflow"
        return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", port,
                "--backend-store-uri", backend, "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts",
                "--workers", "1"]  # fmt: skip
    if name == "dagster-webserver":
        return [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port]
    if name == "dagster-daemon":
        return [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]
    return [sys.executable, "-m", "ml_assets.serving", "--host", "127.0.0.1", "--port", port]


def _environment_of_parts(stack: Stack) -> dict[str, str]:
    """What every part runs with: the stack's settings, and libpq's password file for MLflow's."""
    env = _child_env(stack)
    pgpass = stack.root / "pgpass"
    pgpass.touch(mode=0o600)
    pgpass.write_text(f"127.0.0.1:{stack.ports['postgres']}:mlflow:mlflow:{stack.secret('mlflow')}\n")
    env["PGPASSFILE"] = str(pgpass)
    # MLflow's server runs a job queue of its own (huey consumers, six processes importing MLflow)
    # for features this project doesn't use: off, it starts in a fraction of the CPU.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def _start(stack: Stack, name: str, env: dict[str, str]) -> None:
    if name == "postgres":
        _start_postgres(stack, env)
        return
    if name == "redis" and not shutil.which("redis-server"):
        raise StackError("redis-server is not installed: make redis-server")
    _spawn(stack, name, _argv(stack, name), env, cwd=paths.REPO_ROOT)


def up() -> dict:
    """Start every part not already running, wait until each is healthy; return status()."""
    stack = Stack.here()
    stack.save()
    stack.write_env()
    _write_instance(stack)
    env = _environment_of_parts(stack)
    started: list[str] = []
    began = time.monotonic()

    def start(name: str) -> None:
        if recorded_pid(stack, name) is None:
            _start(stack, name, env)
            started.append(name)

    try:
        # The stores first, side by side; then what needs them; each waited for in that order.
        for name in ("postgres", "object-store", "redis"):
            start(name)
        _create_databases(stack)
        _create_bucket(stack)
        # The replicas too: one that can't read the registry yet answers, and polls it until it can.
        for name in ("mlflow", "dagster-webserver", "dagster-daemon", "serving-1", "serving-2"):
            start(name)
        for name in PARTS:
            _wait(stack, name, lambda name=name: _healthy(stack, name))
            print(f"{name}: healthy after {time.monotonic() - began:.1f} s", file=sys.stderr)
    except BaseException:
        # Half a stack is no stack: stop what this call started (what already ran stays).
        _stop(stack, reversed(started))
        raise
    return status(stack)


def restart(name: str) -> dict:
    """Stop one running part and start it again; return once it is healthy.

    The daemon is stopped alone (SIGTERM to its process, not to its group), as a daemon pod is
    replaced in production while run pods go on: the code server it started takes no new work and
    ends once the runs it launched end (Dagster's gRPC server does that when its heartbeat stops),
    so runs in flight finish. What is left of that group is recorded under `pids/retired/`, and
    `down` stops it. Any other part is stopped with its group, as `down` stops it.

    Returns the PIDs, when it stopped, when the new process started and when it was healthy
    (seconds since the epoch: time.time())."""
    stack = Stack.here()
    if name not in PARTS:
        raise StackError(f"no part {name!r}: the parts are {', '.join(PARTS)}")
    old = recorded_pid(stack, name)
    if old is None:
        raise StackError(f"{name} is not running: make stack starts it")
    env = _environment_of_parts(stack)
    stopped_at = time.time()
    if name == "dagster-daemon":
        record = json.loads(_pid_file(stack, name).read_text())
        retired = stack.root / "pids" / "retired"
        retired.mkdir(exist_ok=True)
        (retired / f"{name}-{old}.pid").write_text(json.dumps(record))
        os.kill(old, signal.SIGTERM)
        _wait_gone(old, record["start_time"])
        _pid_file(stack, name).unlink(missing_ok=True)
    else:
        _stop(stack, [name])
    _start(stack, name, env)
    started_at = time.time()
    _wait(stack, name, lambda: _healthy(stack, name))
    return {
        "part": name, "stopped_pid": old, "pid": recorded_pid(stack, name),
        "stopped_at": stopped_at, "started_at": started_at, "healthy_at": time.time(),
    }  # fmt: skip


def _wait_gone(pid: int, start_time: str) -> None:
    """Wait for the process `pid` (the one started at `start_time`) to exit; SIGKILL it after
    STOP_TIMEOUT."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while _start_time(pid) == start_time:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def down() -> dict[str, int | None]:
    """Stop every part `up` started, by its recorded PID (and its process group), last started
    first; the data stays. Returns {part: the PID stopped, or None if it was not running}."""
    stack = Stack.here()
    stopped = _stop(stack, reversed(PARTS))
    # What a restarted daemon left running (its code server and the runs it was finishing).
    for path in sorted((stack.root / "pids" / "retired").glob("*.pid")):
        if _ours(int(path.stem.rsplit("-", 1)[1])):
            _stop_group(int(path.stem.rsplit("-", 1)[1]), signal.SIGTERM)
        path.unlink()
    return stopped


def _ours(pgid: int) -> bool:
    """Whether a process of this environment's Python is still in process group `pgid` (a retired
    group's leader is gone, so its PID can't name it; its members' programs can)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        if int(fields[2]) == pgid and argv0.startswith(str(BIN)):
            return True
    return False


STORES = ("postgres", "object-store", "redis")


def _stop(stack: Stack, names) -> dict[str, int | None]:
    """Stop the parts `names`: what uses the stores first, all of them at once, then the stores
    (a part stopping still writes to them)."""
    names = list(names)
    stopped = {name: recorded_pid(stack, name) for name in names}
    for wave in ([n for n in names if n not in STORES], [n for n in names if n in STORES]):
        running = [(name, stopped[name]) for name in wave if stopped[name] is not None]
        for name, pid in running:
            # PostgreSQL's "fast" shutdown is SIGINT (SIGTERM waits for every client to leave).
            _signal_group(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
        for _, pid in running:
            _wait_group(pid)
        for name in wave:
            _pid_file(stack, name).unlink(missing_ok=True)
    return stopped


def _stop_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads, wait for all of it to exit, SIGKILL what remains."""
    _signal_group(pid, sig)
    _wait_group(pid)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _wait_group(pid: int) -> None:
    """Wait for every process of group `pid` to exit; SIGKILL what remains after STOP_TIMEOUT."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ml_assets.stack", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("up", "status", "down", "restart"))
    ap.add_argument("part", nargs="?", help="restart: the part (dagster-daemon, serving-1, ...)")
    args = ap.parse_args(argv)
    if args.command == "restart":
        try:
            print(json.dumps(restart(args.part or ""), indent=2))
        except StackError as e:
            print(f"make stack-restart: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "up":
        # A stop (make's timeout, Ctrl-C) still stops what this call started: see up().
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        started = time.monotonic()
        try:
            result = up()
        except StackError as e:
            print(f"make stack: {e}", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2))
        print(
            f"stack healthy in {time.monotonic() - started:.1f} s; its environment: "
            f"{Stack.here().root / 'stack.env'} (make run STACK=1)",
            file=sys.stderr,
        )
        return 0
    if args.command == "status":
        result = status()
        print(json.dumps(result, indent=2))
        return 0 if all(p["healthy"] for p in result["parts"].values()) else 1
    print(json.dumps({"stopped": down()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
