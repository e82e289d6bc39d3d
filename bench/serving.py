"""Serving: our service against `mlflow models serve` on the same model version, both on loopback.

A small simulated world (bronze history for the features) and a LightGBM model of a realistic size
(200 trees of 31 leaves) registered in a temp MLflow store. Both servers get the same transactions
as landing-contract fields, one per request, from 8 concurrent keep-alive clients, and both do the
same work: validate them, compute the features online, score. Ours reads and appends card history
in its online store (the default SQLite file, not fed from bronze here) and records each decision
durably before answering; mlflow serves the registered pyfunc (ml_assets.serving.mlflow_model),
which reads each request's cards' history from bronze. Then batch scoring: 1000-transaction
requests to both, against a raw `booster.predict` of the same rows in this process.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

from bench.common import line, save

DAYS, PER_DAY = 3, 6000
CONCURRENCY = 8
WARMUP = 300
MLFLOW_REQUESTS = 1000  # mlflow is far slower: fewer requests keep the run short
BATCH, BATCHES = 1000, 15
GOAL_P99_MS = 10.0


def _world(root: Path):
    """Simulate DAYS days; bronze holds all but the last (transactions and labels); return the last
    day's valid transactions (bronze-typed, in event order) and their features as the service
    computes them."""

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
    params, txs = FeatureParams.from_dbt_project(), transactions_of(frame)
    windows, risk = bronze_windows(txs, params, str(root / "lake"), None)
    return request_rows(frame), matrix_of(batch_features(txs, windows, risk, params))


def _model(root: Path):
    """A 200-tree model on FEATURE_COLUMNS, registered as champion; (tracking URI, name, booster)."""
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
        model_uri = tracking.log_model(booster, lake_uri=str(root / "lake"))
    version = mlflow.register_model(model_uri, "fraud_detector").version
    mlflow.MlflowClient(uri).set_registered_model_alias("fraud_detector", "champion", version)
    return uri, "fraud_detector", version, booster


def _start(cmd: list[str], env: dict, health_url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[:4]} exited: {proc.stderr.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{cmd[:4]} did not become healthy")


def _free_port() -> int:
    from ml_assets_tests.serving_support import free_port

    return free_port()


def _load(port: int, path: str, bodies: list[bytes], concurrency: int, extra_headers: str = "") -> dict:
    """Send every body once over `concurrency` keep-alive connections, with `extra_headers` (lines
    ending in CRLF) besides the usual; the latency of each.

    One asyncio loop in this process drives every connection: no client threads contending for
    the GIL, whose hand-offs would show up as latency that belongs to neither server.
    """
    import asyncio

    latencies: list[float] = []
    failures: list[int] = []
    todo = iter(bodies)

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for body in todo:
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
        writer.close()

    async def run():
        await asyncio.gather(*(client() for _ in range(concurrency)))

    t0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "failures": len(failures),
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "per_s": len(latencies) / wall,
    }


def main() -> dict:
    import numpy as np

    from ml_assets.serving.validation import FIELDS

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows, features = _world(root)
        tracking_uri, name, version, booster = _model(root)
        ours_bodies = [json.dumps(r).encode() for r in rows]
        # mlflow's signature takes the fields as the feed's text: amounts as strings.
        text = [[None if r[f] is None else str(r[f]) for f in FIELDS] for r in rows]
        mlflow_bodies = [
            json.dumps({"dataframe_split": {"columns": FIELDS, "data": [x]}}).encode()
            for x in text[: WARMUP + MLFLOW_REQUESTS]
        ]
        mlflow_batch_body = json.dumps(
            {"dataframe_split": {"columns": FIELDS, "data": text[:BATCH]}}
        ).encode()
        # mlflow starts `uvicorn` from PATH: this environment's.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, "ML_ASSETS_DATA_DIR": str(root)}
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        ours_port, mlflow_port = _free_port(), _free_port()
        # The registry is read every second, so its pauses are in the figures. Decisions go to the
        # data root's online store (SQLite), fsynced before each answer.
        ours_env = {"ML_ASSETS_MODEL_NAME": name}
        ours_env["ML_ASSETS_SERVING_POLL_SECONDS"] = "1"
        ours = _start(
            [sys.executable, "-m", "ml_assets.serving", "--port", str(ours_port)],
            {**env, **ours_env},
            f"http://127.0.0.1:{ours_port}/health",
        )
        try:
            _load(ours_port, "/predict", ours_bodies[:WARMUP], CONCURRENCY)
            ours_single = _load(ours_port, "/predict", ours_bodies[WARMUP:], CONCURRENCY)
            batch_body = json.dumps({"transactions": rows[:BATCH]}).encode()
            batch = _load(ours_port, "/predict", [batch_body] * BATCHES, 1)
        finally:
            ours.terminate()
            ours.wait(60)
        mlflow_server = _start(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}/{version}",
             "--env-manager", "local", "-w", "1", "-h", "127.0.0.1", "-p", str(mlflow_port)],
            env, f"http://127.0.0.1:{mlflow_port}/ping",
        )  # fmt: skip
        try:
            _load(mlflow_port, "/invocations", mlflow_bodies[:WARMUP], CONCURRENCY)
            mlflow_single = _load(mlflow_port, "/invocations", mlflow_bodies[WARMUP:], CONCURRENCY)
            mlflow_batch = _load(mlflow_port, "/invocations", [mlflow_batch_body] * BATCHES, 1)
        finally:
            mlflow_server.terminate()
            mlflow_server.wait(60)
        x = np.ascontiguousarray(features[:BATCH])
        raw = []
        for _ in range(BATCHES + 1):
            t0 = time.perf_counter()
            booster.predict(x, num_threads=1)  # the service's setting: one thread
            raw.append(time.perf_counter() - t0)

    # Medians: this box is shared, and a neighbour's burst should not decide a ratio.
    batch_rows_s = BATCH / (batch["p50_ms"] / 1000)
    mlflow_batch_rows_s = BATCH / (mlflow_batch["p50_ms"] / 1000)
    raw_rows_s = BATCH / statistics.median(raw[1:])
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end: {load} (on {os.cpu_count()} cores)")
    print(
        f"single transactions at concurrency {CONCURRENCY}, one server process each, 200-tree LightGBM "
        f"({ours_single['requests']} requests to ours, {mlflow_single['requests']} to mlflow)"
    )
    print(line("ours: throughput", ours_single["per_s"], "req/s", mlflow_single["per_s"], "mlflow"))
    print(line("ours: p50 latency", ours_single["p50_ms"], "ms", mlflow_single["p50_ms"], "mlflow"))
    print(line("ours: p99 latency", ours_single["p99_ms"], "ms", mlflow_single["p99_ms"], "mlflow"))
    print(line("ours: p99 latency", ours_single["p99_ms"], "ms", GOAL_P99_MS, "goal"))
    print(f"batch scoring, {BATCH}-transaction requests (validation, online features, routing, log), median")
    print(line("ours: batch", batch_rows_s, "rows/s", raw_rows_s, "raw booster.predict"))
    print(line("ours: batch", batch_rows_s, "rows/s", mlflow_batch_rows_s, "mlflow batch"))
    failures = (
        ours_single["failures"] + mlflow_single["failures"] + batch["failures"] + mlflow_batch["failures"]
    )
    if failures:
        print(f"  FAILED REQUESTS: {failures}")
    figures = {
        "ours_single": ours_single,
        "mlflow_single": mlflow_single,
        "ours_batch_rows_s": batch_rows_s,
        "mlflow_batch_rows_s": mlflow_batch_rows_s,
        "raw_predict_rows_s": raw_rows_s,
        "load_average": os.getloadavg(),
    }
    save("serving", figures)
    return figures


if __name__ == "__main__":
    main()
