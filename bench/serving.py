"""Serving: the service on its online store, 1 and 2 workers, SQLite and Redis, side by side in the
same run with the in-memory service as it was before the store (git commit af6dcc1) and with
`mlflow models serve` on the same model version, all on loopback.

A small simulated world (bronze history for the features) and a LightGBM model of a realistic size
(200 trees of 31 leaves) registered in a temp MLflow store. Every server gets the same
transactions as landing-contract fields, one per request, from 8 concurrent keep-alive clients
driven by one asyncio loop in this process (its own CPU is reported: on 2 cores it competes with
the servers), and does the same work: validate, compute the features online, score.

- ours (`python -m ml_assets.serving --workers N`): card history from its online store, fed from
  bronze first (as `online_store_feed` does: history and the day's merchant risk), each decision
  durable before the answer: SQLite (WAL, a fresh file per configuration) or a real redis-server
  of our own (AOF, appendfsync always, a database per configuration), both on disk;
- the baseline, the service at BASELINE_COMMIT: card history loaded from bronze into its memory,
  decisions buffered in memory (lost on kill -9), run from that commit's tree (`git archive`) with
  this environment;
- the ceiling: that baseline as 2 processes on one port (bench/in_memory_processes.py), each with
  its own memory and so only half of each card's history: not a service, but what a second
  process gives on this box at this load with no store between them, to read the engines'
  2-worker ratio against;
- mlflow serves the registered pyfunc (ml_assets.serving.mlflow_model), which reads each request's
  cards' history from bronze; fewer requests, it is far slower.

All of them run at once (the idle ones only poll the registry) and take the single-row load in
ROUNDS rounds, a slice each per round in a rotated order, so that a neighbour's burst on a shared
box falls on all of them alike. Then, for each of ours: 1000-transaction requests (against a raw
`booster.predict` of the same rows in this process, and mlflow's), single-row requests beside
back-to-back 1000-row batches spanning BESIDE_DAYS event days (their p99, and the batches'
latency), and on one worker of each engine the same again once those days' merchant-risk tables
hold MANY_MERCHANTS more merchants (a request reads only its own merchants' rows: the size of a
table must not show); and, once the servers are stopped, the `inference_log` asset draining what the load
queued into Delta (rows/s), in a fresh process per store as a Dagster run would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from bench.common import RESULTS, line, run_worker, save

DAYS, PER_DAY = 3, 10_000
CONCURRENCY = 8
WARMUP = 300
REQUESTS = 4_000  # single-row requests per configuration (fewer if the day has fewer rows)
MLFLOW_REQUESTS = 600  # mlflow is far slower: fewer requests keep the run short
BATCH, BATCHES = 1000, 10
BESIDE_BATCHES, BESIDE_DAYS, BESIDE_CLIENTS = 8, 14, 4
MANY_MERCHANTS = 100_000
ROUNDS = 4  # the single-row load, interleaved across servers
MLFLOW = "mlflow models serve 1w"
CEILING = "in-memory 2p"  # the baseline as 2 processes, each its own memory: what a second one gives
BASELINE_COMMIT = "af6dcc1"  # the service before the online store: state in its memory
GOAL_P99_MS, GOAL_WORKERS, GOAL_DURABLE, GOAL_BESIDE_P99_MS = 10.0, 1.3, 0.8, 50.0
REPO = Path(__file__).resolve().parents[1]


def _world(root: Path):
    """Simulate DAYS days; bronze holds all but the last (transactions and labels); return the last
    day's valid transactions as request rows (in event order), their features as the service
    computes them, and the days."""

    from ml_assets.defs.resources import LakeResource
    from ml_assets.lib import tables
    from ml_assets.lib.contract import LABELS, TRANSACTIONS
    from ml_assets.lib.ingest import ingest_partition
    from ml_assets.serving.features import FeatureParams, batch_features, matrix_of, transactions_of
    from ml_assets.serving.mlflow_model import bronze_windows
    from ml_assets_tests.serving_support import request_rows

    env = {**os.environ, "ML_ASSETS_DATA_DIR": str(root)}
    first = date(2026, 1, 1)
    subprocess.run(
        [sys.executable, "-m", "ml_assets.simulate", "--start", str(first), "--days", str(DAYS),
         "--transactions-per-day", str(PER_DAY)],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    lake = LakeResource(root=str(root / "lake"))
    days = [first + timedelta(days=i) for i in range(DAYS)]
    for day in days[:-1]:
        for feed in (TRANSACTIONS, LABELS):
            result = ingest_partition(feed, root / "landing" / feed.name / f"date={day}", day)
            lake.write_partitions(
                tables.BRONZE[feed.name], result.bronze, partition_column=feed.partition_column,
                partitions=[day], schema=feed.bronze_schema(),
            )  # fmt: skip
    last = ingest_partition(TRANSACTIONS, root / "landing" / "transactions" / f"date={days[-1]}", days[-1])
    frame = last.bronze.select(list(TRANSACTIONS.columns)).sort("event_time")
    # As the registered pyfunc computes them from bronze (the same pure function the service uses).
    params, txs = FeatureParams.from_dbt_project(), transactions_of(frame[:BATCH])
    windows, risk = bronze_windows(txs, params, str(root / "lake"), None)
    return request_rows(frame), matrix_of(batch_features(txs, windows, risk, params), params.columns), days


def _feed(url: str, root: Path, days: list[date]) -> None:
    """What `online_store_feed` writes for the bronze days, by the functions it uses: their
    transactions into the cards' history, and each next day's merchant risk."""
    from ml_assets.defs.resources import LakeResource
    from ml_assets.lib import tables
    from ml_assets.serving.features import FeatureParams, merchant_risk, transactions_of
    from ml_assets.serving.online_store import open_store

    lake = LakeResource(root=str(root / "lake"))
    params = FeatureParams.from_dbt_project()
    transactions = lake.scan(tables.BRONZE["transactions"])
    labels = lake.scan(tables.BRONZE["labels"])
    with open_store(url, lookback_days=params.card_lookback_days) as store:
        store.upsert_history(transactions_of(transactions.collect()))
        for day in days[1:]:
            store.put_merchant_risk(day, merchant_risk(labels, transactions, day, params))


def _model(root: Path):
    """A 200-tree model on the spec's features, registered as champion; (tracking URI, name, booster)."""
    import mlflow

    from ml_assets.lib import tracking
    from ml_assets_tests.serving_support import train_booster

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    (root / "mlflow").mkdir()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("bench", artifact_location=str(root / "mlflow" / "artifacts"))
    )
    booster, _ = train_booster(seed=7, rounds=200)
    with mlflow.start_run():
        model_uri = tracking.log_model(booster, lake_uri=str(root / "lake"), columns=booster.feature_name())
    version = mlflow.register_model(model_uri, "fraud_detector").version
    mlflow.MlflowClient(uri).set_registered_model_alias("fraud_detector", "champion", version)
    return uri, "fraud_detector", version, booster


def _baseline_tree(dest: Path) -> str | None:
    """BASELINE_COMMIT's tree materialized under `dest`; None, or why it can't be."""
    found = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{BASELINE_COMMIT}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        return f"commit {BASELINE_COMMIT} is not in {REPO}'s git history (no history, or a shallow copy)"
    dest.mkdir()
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", BASELINE_COMMIT], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True)
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        return f"git archive {BASELINE_COMMIT} failed: {untar.stderr.decode()[-500:]}"
    return None


# -- servers -----------------------------------------------------------------------------------


def _free_port() -> int:
    from ml_assets_tests.serving_support import free_port

    return free_port()


def _start(
    cmd: list[str], env: dict, health_url: str, log: Path, workers: int = 1, cwd: Path | None = None
) -> subprocess.Popen:
    """Start a server in a process group of its own; return once it is healthy and `workers`
    sockets listen on its port (a worker listens once its app has started). Stopped by `_stop`
    (its group)."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, cwd=cwd
        )
    port, listening = urllib.parse.urlsplit(health_url).port, 0
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[:4]} exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(health_url, timeout=2) as r:
                    listening = _listening(port)
                    if r.status == 200 and listening >= workers:
                        return proc
            except OSError:
                time.sleep(0.3)
            time.sleep(0.05)
        raise SystemExit(f"{cmd[:4]} did not become healthy ({listening} of {workers} workers listen)")
    except BaseException:
        _stop(proc)
        raise


def _listening(port: int) -> int:
    """How many sockets listen on this loopback TCP port (Linux's /proc/net/tcp: local address,
    then state; 0A is LISTEN)."""
    fields = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return sum(f[1].endswith(f":{port:04X}") and f[3] == "0A" for f in fields)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its id is the server's PID), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):  # workers the server left behind
        os.killpg(proc.pid, signal.SIGKILL)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU so far of these processes and their children (Linux's /proc)."""
    ticks, todo = 0, list(pids)
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime: the stat file's fields 14 and 15
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError):  # a process gone meanwhile
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


# -- load --------------------------------------------------------------------------------------


async def _client(
    port, path, todo, latencies, failures, until=None, answered_by=None, extra_headers=""
) -> None:
    """One keep-alive connection sending bodies from the shared iterator `todo` (until the event
    `until` is set), with `extra_headers` (lines ending in CRLF) besides the usual. With a list
    `answered_by`, first asks /health/details which worker process holds the connection (the one
    whose socket the kernel handed it to keeps it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if answered_by is not None:
            writer.write(b"GET /health/details HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            _, *answer = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            length = next(int(h.split(":")[1]) for h in answer if h.lower().startswith("content-length"))
            answered_by.append(json.loads(await reader.readexactly(length))["pid"])
        for body in todo:
            if until is not None and until.is_set():
                break
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
            )
            t0 = time.perf_counter()
            writer.write(head.encode() + body)
            status_line, *headers = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            length = next(int(h.split(":")[1]) for h in headers if h.lower().startswith("content-length"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status_line.split()[1] != "200":
                failures.append(int(status_line.split()[1]))
    finally:
        writer.close()


class _Run(NamedTuple):
    """One stretch of load: each request's latency, the non-200 statuses, the wall time, and the
    CPU seconds it cost this process (the load client) and the servers."""

    latencies: list[float]
    failures: list[int]
    wall: float
    client_cpu: float
    server_cpu: float
    connections: tuple[int, ...] = ()  # the worker PID holding each connection, when asked


def _summary(runs: list[_Run]) -> dict:
    """Runs of one server taken together: throughput over their wall time, quantiles over all
    their requests, CPU in cores (CPU seconds per second of wall)."""
    latencies = [x for r in runs for x in r.latencies]
    wall = sum(r.wall for r in runs)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "requests": len(latencies),
        "failures": sum(len(r.failures) for r in runs),
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "per_s": len(latencies) / wall,
        "round_per_s": [len(r.latencies) / r.wall for r in runs],  # each run's own throughput
        "client_cores": sum(r.client_cpu for r in runs) / wall,
        "server_cores": sum(r.server_cpu for r in runs) / wall,
        # What a request costs the servers, whatever share of the cores they got: on a shared box
        # the steadiest of these figures.
        "server_cpu_ms": sum(r.server_cpu for r in runs) * 1000 / max(len(latencies), 1),
        # How many of the load's connections each worker process held, most first.
        "connections_per_worker": sorted(
            Counter(p for r in runs for p in r.connections).values(), reverse=True
        ),
    }


def _measured(clients, server_pids) -> tuple[float, float, float]:
    """Run the coroutines `clients()` makes in a fresh loop: the wall time, and the CPU seconds of
    this process and of the servers meanwhile."""
    cpu0, server0, t0 = time.process_time(), _cpu_seconds(server_pids), time.perf_counter()

    async def run():
        await asyncio.gather(*clients())

    asyncio.run(run())
    wall = time.perf_counter() - t0
    return wall, time.process_time() - cpu0, _cpu_seconds(server_pids) - server0


def _load(
    port: int, path: str, bodies: list[bytes], concurrency: int, server_pids=(), ask=False, headers=""
) -> _Run:
    """Send every body once over `concurrency` keep-alive connections; the latency of each.

    One asyncio loop in this process drives every connection: no client threads contending for
    the GIL, whose hand-offs would show up as latency that belongs to neither server.
    """
    latencies: list[float] = []
    failures: list[int] = []
    todo = iter(bodies)
    connections: list[int] | None = [] if ask else None
    wall, client, server = _measured(
        lambda: [
            _client(port, path, todo, latencies, failures, None, connections, extra_headers=headers)
            for _ in range(concurrency)
        ],
        server_pids,
    )
    return _Run(latencies, failures, wall, client, server, tuple(connections or ()))


def _beside(port: int, batches: list[bytes], singles: list[bytes], server_pids) -> dict:
    """Back-to-back batches on one connection; single-row requests on BESIDE_CLIENTS others until
    the last batch is answered. The singles' figures, and the batches'."""
    single: list[float] = []
    batch: list[float] = []
    failures: list[int] = []
    todo = iter(singles)
    done = asyncio.Event()

    async def batches_then_done():
        try:
            await _client(port, "/predict", iter(batches), batch, failures)
        finally:
            done.set()

    def clients():
        beside = [_client(port, "/predict", todo, single, failures, done) for _ in range(BESIDE_CLIENTS)]
        return [batches_then_done(), *beside]

    wall, client, server = _measured(clients, server_pids)
    return {
        "single": _summary([_Run(single, failures, wall, client, server)]),
        "batch": _summary([_Run(batch, [], wall, 0.0, 0.0)]),
    }


# -- request bodies ----------------------------------------------------------------------------


def _renamed(rows: list[dict], tag: str, days_back: int = 0) -> list[dict]:
    """The rows as new transactions (transaction_id + tag: a durable store answers a transaction it
    has seen with its recorded decision, without scoring it); with days_back, row i moved i %
    days_back days earlier, so a batch spans that many event days."""
    out = []
    for i, r in enumerate(rows):
        r = {**r, "transaction_id": f"{r['transaction_id']}-{tag}"}
        if days_back:
            t = datetime.fromisoformat(r["event_time"]) - timedelta(days=i % days_back)
            r["event_time"] = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out.append(r)
    return out


def _slice(rows: list[dict], k: int) -> list[dict]:
    """The k-th BATCH rows of the day (wrapping): each batch other cards and times."""
    start = (k * BATCH) % (len(rows) - BATCH + 1)
    return rows[start : start + BATCH]


def _bodies(rows: list[dict]) -> dict[str, list[bytes]]:
    """What each of our servers is sent: the same rows (fresh ids where a store would see a
    retry)."""
    singles = [json.dumps(r).encode() for r in rows[: WARMUP + REQUESTS]]
    return {
        "warmup": singles[:WARMUP],
        "single": singles[WARMUP:],
        "batch": [
            json.dumps({"transactions": _renamed(_slice(rows, k), f"p{k}")}).encode() for k in range(BATCHES)
        ],
        "beside_batches": [
            json.dumps({"transactions": _renamed(_slice(rows, k), f"b{k}", BESIDE_DAYS)}).encode()
            for k in range(BESIDE_BATCHES)
        ],
        "beside_singles": [json.dumps(r).encode() for r in _renamed(rows[BATCH:], "s")],
        # The same again as new transactions, once the risk tables hold MANY_MERCHANTS more.
        "many_batches": [
            json.dumps({"transactions": _renamed(_slice(rows, k), f"m{k}", BESIDE_DAYS)}).encode()
            for k in range(BESIDE_BATCHES)
        ],
        "many_singles": [json.dumps(r).encode() for r in _renamed(rows[BATCH:], "ms")],
    }


class _Server(NamedTuple):
    proc: subprocess.Popen
    port: int
    path: str  # where requests go
    measured: list[int]  # the processes whose CPU counts as the server's (their children too)
    workers: int = 1


def _serve(cmd: list[str], env: dict, root: Path, label: str, workers: int = 1, pids=(), cwd=None) -> _Server:
    """One of ours, started (`cmd` then `--port`), in `cwd` (`python -m` imports from there first)."""
    port = _free_port()
    log = root / f"{label.replace(' ', '_')}.log"
    proc = _start([*cmd, "--port", str(port)], env, f"http://127.0.0.1:{port}/health", log, workers, cwd)
    return _Server(proc, port, "/predict", [proc.pid, *pids], workers)


def _in_memory_processes(env: dict, root: Path, n: int) -> _Server:
    """The in-memory baseline as `n` processes on one port (bench/in_memory_processes.py), once
    every one of them listens."""
    port = _free_port()
    script = Path(__file__).with_name("in_memory_processes.py")
    cmd, health = [sys.executable, str(script), str(port), str(n)], f"http://127.0.0.1:{port}/health"
    proc = _start(cmd, env, health, root / f"in-memory-{n}p.log", n, cwd=root / "baseline")
    # workers stays 1: the baseline has no /health/details to say which process holds a connection.
    return _Server(proc, port, "/predict", [proc.pid])


def _many_merchants(url: str, last: date) -> None:
    """MANY_MERCHANTS more merchants in the risk table of every day a beside batch spans (and the
    day before), beside the merchants the feed wrote."""
    from ml_assets.serving.features import FeatureParams
    from ml_assets.serving.online_store import open_store

    more = {f"bench-m-{i}": (i % 40, i % 3) for i in range(MANY_MERCHANTS)}
    with open_store(url, lookback_days=FeatureParams.from_dbt_project().card_lookback_days) as store:
        for k in range(BESIDE_DAYS + 1):
            day = last - timedelta(days=k)
            written = store.merchant_risk(day)
            store.put_merchant_risk(day, {**(written.table if written.day == day else {}), **more})


def _drain(url: str, lake_root: Path) -> dict:
    """The `inference_log` asset, invoked on the store's queue: the rows it moved, and how fast."""
    import dagster as dg

    from ml_assets.defs.resources import LakeResource, OnlineStoreResource
    from ml_assets.defs.serving_state.assets import inference_log

    lake, store = LakeResource(root=str(lake_root)), OnlineStoreResource(url=url)
    t0 = time.perf_counter()
    result = inference_log(context=dg.build_asset_context(), lake=lake, online_store=store)
    seconds = time.perf_counter() - t0
    metadata = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
    return {
        "rows": metadata["rows_drained"],
        "log_rows_written": metadata["log_rows_written"],
        "seconds": seconds,
        "rows_per_s": metadata["rows_drained"] / seconds,
    }


# -- the run -----------------------------------------------------------------------------------


def main() -> dict:
    import numpy as np

    from ml_assets.serving.validation import FIELDS
    from ml_assets_tests.redis_support import RedisServer

    load_before = os.getloadavg()
    figures: dict = {"single": {}, "ours": {}, "many_merchants": {}, "drain": {}, "group_commit": {}}
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:  # on disk (not tmpfs): fsync is real
        root = Path(tmp)
        rows, features, days = _world(root)
        tracking_uri, name, version, booster = _model(root)
        ours = _bodies(rows)
        # mlflow's signature takes the fields as the feed's text: amounts as strings.
        text = [[None if r[f] is None else str(r[f]) for f in FIELDS] for r in rows]
        mlflow_singles = [
            json.dumps({"dataframe_split": {"columns": FIELDS, "data": [x]}}).encode()
            for x in text[: WARMUP + MLFLOW_REQUESTS]
        ]
        mlflow_batch = json.dumps({"dataframe_split": {"columns": FIELDS, "data": text[:BATCH]}}).encode()
        # mlflow starts `uvicorn` from PATH: this environment's.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        unset = ("ML_ASSETS_ONLINE_STORE", "PYTHONPATH")
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env |= {"PATH": path, "ML_ASSETS_DATA_DIR": str(root), "MLFLOW_TRACKING_URI": tracking_uri}
        # The registry is read every second, so its pauses are in the figures.
        ours_env = {**env, "ML_ASSETS_MODEL_NAME": name, "ML_ASSETS_SERVING_POLL_SECONDS": "1"}
        serve = [sys.executable, "-m", "ml_assets.serving"]
        skipped = _baseline_tree(root / "baseline")
        if skipped:
            print(f"  baseline (the in-memory service at {BASELINE_COMMIT}) skipped: {skipped}")
            figures["baseline_skipped"] = skipped

        redis = RedisServer(root)
        redis.start()
        try:
            stores = {f"sqlite {n}w": f"sqlite:///{root / f'online-{n}w.db'}" for n in (1, 2)}
            stores |= {f"redis {n}w": redis.url.removesuffix("/0") + f"/{n - 1}" for n in (1, 2)}
            servers: dict[str, _Server] = {}
            try:
                if not skipped:
                    baseline_env = {**ours_env, "PYTHONPATH": str(root / "baseline")}
                    # Run from its own tree: `python -m` puts the working directory first on the path.
                    servers["in-memory"] = _serve(
                        serve, baseline_env, root, "in-memory", cwd=root / "baseline"
                    )
                    servers[CEILING] = _in_memory_processes(baseline_env, root, 2)
                for label, url in stores.items():
                    _feed(url, root, days)
                    n = int(label.split()[1][0])
                    pids = [redis.proc.pid] if label.startswith("redis") else []
                    store_env = {**ours_env, "ML_ASSETS_ONLINE_STORE": url}
                    servers[label] = _serve([*serve, "--workers", str(n)], store_env, root, label, n, pids)
                mlflow_port = _free_port()
                mlflow = _start(
                    [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}/{version}",
                     "--env-manager", "local", "-w", "1", "-h", "127.0.0.1", "-p", str(mlflow_port)],
                    env, f"http://127.0.0.1:{mlflow_port}/ping", root / "mlflow.log",
                )  # fmt: skip
                servers[MLFLOW] = _Server(mlflow, mlflow_port, "/invocations", [mlflow.pid])
                figures["single"] = _single_rounds(servers, ours, mlflow_singles)
                figures["group_commit"] = {
                    label: _store_calls(server) for label, server in servers.items() if label in stores
                }
                for label, server in servers.items():
                    if label not in (MLFLOW, CEILING):
                        figures["ours"][label] = _batches(server, ours)
                for label in ("sqlite 1w", "redis 1w"):
                    _many_merchants(stores[label], days[-1])
                    s = servers[label]
                    many = _beside(s.port, ours["many_batches"], ours["many_singles"], s.measured)
                    figures["many_merchants"][label] = many
                # Nothing truncates a WAL file: its size now is the largest it reached.
                figures["wal_mb"] = {
                    label: os.path.getsize(f"{url.removeprefix('sqlite:///')}-wal") / 2**20
                    for label, url in stores.items()
                    if label.startswith("sqlite")
                }
                figures["mlflow_batch"] = _summary(
                    [_load(mlflow_port, "/invocations", [mlflow_batch] * BATCHES, 1, [mlflow.pid])]
                )
            finally:
                for server in servers.values():
                    _stop(server.proc)
            # The servers are stopped: each drain has the box to itself, in a fresh process as a
            # Dagster run's, into a log of its own (the stores hold the same transaction ids).
            for label, url in stores.items():
                figures["drain"][label] = run_worker("bench.serving", url, str(root / "drain" / label))
        finally:
            redis.kill(signal.SIGTERM)
        x = np.ascontiguousarray(features[:BATCH])
        raw = []
        for _ in range(BATCHES + 1):
            t0 = time.perf_counter()
            booster.predict(x, num_threads=1)  # the service's setting: one thread
            raw.append(time.perf_counter() - t0)
    figures["raw_predict_rows_s"] = BATCH / statistics.median(raw[1:])
    figures["load_average"] = {"before": load_before, "after": os.getloadavg()}
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    figures["sched_autogroup"] = autogroup.read_text().strip() == "1" if autogroup.exists() else None
    _report(figures)
    save("serving", figures)
    return figures


def _single_rounds(servers: dict[str, _Server], ours: dict, mlflow_singles: list[bytes]) -> dict:
    """Every server warmed up, then single-row load in ROUNDS rounds, each server a slice of its
    requests per round, in an order rotated every round: a neighbour's burst on this shared box
    falls on all of them alike, not on whichever ran at the time."""
    bodies = {
        label: mlflow_singles if label == MLFLOW else ours["warmup"] + ours["single"] for label in servers
    }
    for label, server in servers.items():
        print(f"  warming up {label}", flush=True)
        _load(server.port, server.path, bodies[label][:WARMUP], CONCURRENCY)
    runs: dict[str, list[_Run]] = {label: [] for label in servers}
    labels = list(servers)
    for r in range(ROUNDS):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            server, todo = servers[label], bodies[label][WARMUP:]
            part = todo[r * len(todo) // ROUNDS : (r + 1) * len(todo) // ROUNDS]
            load = _load(server.port, server.path, part, CONCURRENCY, server.measured, server.workers > 1)
            runs[label].append(load)
    return {label: _summary(r) for label, r in runs.items()}


def _store_calls(server: _Server) -> dict:
    """The store calls one worker process made so far, and the commits they took (group commit:
    several requests' calls to a commit when they come at once)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health/details", timeout=10) as r:
        store = json.load(r)["online_store"]
    return {"calls": store["calls"], "commits": store["commits"]}


def _batches(server: _Server, ours: dict) -> dict:
    """1000-row requests one after the other; then batches spanning many days with single rows
    beside them."""
    batch = _summary([_load(server.port, "/predict", ours["batch"], 1, server.measured)])
    beside = _beside(server.port, ours["beside_batches"], ours["beside_singles"], server.measured)
    return {"batch": batch, "beside": beside}


def _by_round(s: dict, base: dict, goal: float) -> str:
    """The throughput ratio in each round of the single-row load (the two servers took it within
    seconds of each other): how steady the whole run's ratio is on this box."""
    ratios = [a / b for a, b in zip(s["round_per_s"], base["round_per_s"], strict=True)]
    met = sum(r >= goal for r in ratios)
    return f"    by round: {' '.join(f'{r:.2f}x' for r in ratios)}  (aim met in {met} of {len(ratios)})"


def _print_beside(label: str, beside: dict) -> None:
    s, b = beside["single"], beside["batch"]
    ok = s["p99_ms"] <= GOAL_BESIDE_P99_MS
    text = line(f"{label}: single p99 beside", s["p99_ms"], "ms", GOAL_BESIDE_P99_MS, "goal")
    print(text + _aim(ok, f"<= {GOAL_BESIDE_P99_MS:g} ms"))
    print(f"  {label + ': the batch p50 / p99':<44} {b['p50_ms']:9.2f} / {b['p99_ms']:.2f} ms")


def _aim(ok: bool, aim: str) -> str:
    return f"   aim {aim}: {'met' if ok else 'NOT met'}"


def _report(f: dict) -> None:
    single, ours = f["single"], f["ours"]
    load = " -> ".join(" / ".join(f"{x:.1f}" for x in f["load_average"][k]) for k in ("before", "after"))
    print(f"load average (1/5/15 min) before -> after: {load} (on {os.cpu_count()} cores)")
    if f["sched_autogroup"]:
        # Each server runs in a session of its own (stopped by its process group): with autogroup
        # the kernel shares the CPU between sessions, so on a busy box a server's 2 workers share
        # the one session's share; a second worker only adds cores that are idle.
        print("  sched_autogroup is on: a busy box gives a server's workers one session's CPU share")
    print(
        f"single transactions at concurrency {CONCURRENCY}, 200-tree LightGBM, in {ROUNDS} interleaved "
        f"rounds; CPU in cores (CPU s per s of wall; server: its processes, and redis-server)"
    )
    print(
        f"  {'server':<26} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'client CPU':>11} {'server CPU':>11} {'server CPU ms/req':>18}"
    )
    for label, s in single.items():
        print(
            f"  {label:<26} {s['requests']:8d} {s['per_s']:8.1f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} "
            f"{s['client_cores']:11.2f} {s['server_cores']:11.2f} {s['server_cpu_ms']:18.2f}"
        )
    for label, s in single.items():
        if s["connections_per_worker"]:
            print(f"  {label}: the load's connections per worker process: {s['connections_per_worker']}")
    for label, g in f["group_commit"].items():
        print(
            f"  {label}: one worker's store calls so far {g['calls']} in {g['commits']} commits"
            f" ({g['calls'] / max(g['commits'], 1):.1f} a commit)"
        )
    base, mlflow, ceiling = single.get("in-memory"), single[MLFLOW], single.get(CEILING)
    if ceiling:
        # Two processes with no store between them: what any second worker can give on this box.
        text = line(f"{CEILING}: throughput (the ceiling)", ceiling["per_s"], "req/s", base["per_s"], "1p")
        print(text + _aim(ceiling["per_s"] >= GOAL_WORKERS * base["per_s"], f">= {GOAL_WORKERS}x"))
        print(_by_round(ceiling, base, GOAL_WORKERS))
    for engine in ("sqlite", "redis"):
        one, two = single[f"{engine} 1w"], single[f"{engine} 2w"]
        for n, s in ((1, one), (2, two)):
            ok = s["p99_ms"] <= GOAL_P99_MS
            print(
                line(f"{engine} {n}w: p99", s["p99_ms"], "ms", GOAL_P99_MS, "goal")
                + _aim(ok, f"<= {GOAL_P99_MS:g} ms")
            )
        ok = two["per_s"] >= GOAL_WORKERS * one["per_s"]
        print(
            line(f"{engine} 2w: throughput", two["per_s"], "req/s", one["per_s"], "1w")
            + _aim(ok, f">= {GOAL_WORKERS}x")
        )
        print(_by_round(two, one, GOAL_WORKERS))
        if ceiling:
            scaling, most = two["per_s"] / one["per_s"], ceiling["per_s"] / base["per_s"]
            print(f"    against the ceiling's {most:.2f}x: {scaling / most:.0%} of what a second one gives")
        if base:
            ok = one["per_s"] >= GOAL_DURABLE * base["per_s"]
            text = line(f"{engine} 1w: throughput", one["per_s"], "req/s", base["per_s"], "in-memory")
            print(text + _aim(ok, f">= {GOAL_DURABLE}x"))
            print(_by_round(one, base, GOAL_DURABLE))
            cpu, base_cpu = one["server_cpu_ms"], base["server_cpu_ms"]
            print(line(f"{engine} 1w: server CPU per request", cpu, "ms", base_cpu, "in-memory"))
        print(line(f"{engine} 1w: throughput", one["per_s"], "req/s", mlflow["per_s"], "mlflow"))
    print(f"batch scoring, {BATCH}-transaction requests of one event day, median")
    raw = f["raw_predict_rows_s"]
    for label, r in [*((k, v["batch"]) for k, v in ours.items()), ("mlflow", f["mlflow_batch"])]:
        print(line(f"{label}: batch", BATCH / (r["p50_ms"] / 1000), "rows/s", raw, "raw booster.predict"))
        print(f"  {label + ': server CPU per 1000 rows':<44} {r['server_cpu_ms']:9.2f} ms")
    print(
        f"single rows ({BESIDE_CLIENTS} connections) beside back-to-back {BATCH}-row batches "
        f"spanning {BESIDE_DAYS} event days ({BESIDE_BATCHES} batches)"
    )
    for label, r in ours.items():
        _print_beside(label, r["beside"])
    print(f"the same, {MANY_MERCHANTS} more merchants in each of those days' risk tables")
    for label, r in f["many_merchants"].items():
        _print_beside(label, r)
    from ml_assets.serving.online_store.sqlite import WAL_RESTART_FRAMES

    # A WAL frame is a page (4 KB) and its 24-byte header.
    limit_mb = WAL_RESTART_FRAMES * (4096 + 24) / 2**20
    print("the SQLite stores' WAL file after every load above (it starts again past a limit)")
    for label, mb in f["wal_mb"].items():
        print(line(f"{label}: WAL file", mb, "MB", limit_mb, "limit"))
    print("the inference_log drain (store queue -> Delta), servers stopped")
    for label, d in f["drain"].items():
        print(
            f"  {label + ': drain':<44} {d['rows_per_s']:9.1f} rows/s   "
            f"({d['rows']} rows in {d['seconds']:.2f} s)"
        )
    failures = sum(s["failures"] for s in single.values()) + f["mlflow_batch"]["failures"]
    failures += sum(r["batch"]["failures"] + r["beside"]["single"]["failures"] for r in ours.values())
    failures += sum(r["single"]["failures"] for r in f["many_merchants"].values())
    if failures:
        print(f"  FAILED REQUESTS: {failures}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # one drain, in a process of its own (bench.common.run_worker)
        print(json.dumps(_drain(sys.argv[2], Path(sys.argv[3]))))
    else:
        main()
