"""Fault tolerance: what a killed, raced, cut-off or repeated run leaves behind, on real stores.

Every test drives real Dagster runs against real Delta tables, a real MLflow SQLite store and a
real DuckDB warehouse in temp dirs. A fault is injected from outside, the way it happens in
production: a run's process is SIGKILLed at a chosen point of its work, another process commits
to the table a writer has read, the tracking server is not there. Points in a Delta write are
reached through `resources.commit_hook` (the driver holds its run there, then the test kills it
or lets another writer commit): never guessed by time. Then the stores are read back, and a
re-run must converge to what a clean run gives.

"Same contents" is an order-independent content hash of a table's rows (`_content`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from ml_assets.lib import tables
from ml_assets_tests.conftest import (
    STORE_VARIABLES,
    load_defs,
    new_root,
    root_environ,
    run_job,
    scoped_environ,
)

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-01-15"
TX = tables.BRONZE["transactions"], tables.QUARANTINE["transactions"]

# A run of one job in a fresh process, the way `dagster job execute` would start it: it loads the
# code location, then runs the job once and prints what happened as one JSON line. With `go`, it
# loads first and waits for that file to exist before it runs (so drivers can load side by side,
# ahead of their turn: loading is ~10 s here, most of a kill test's time). With a hold
# ("<stage> <table> <path>"), its lake writes stop at that point of their commit to `table`
# (stage "before": the version is read, nothing written; "after": committed), or with stage
# "step", its run stops once the step `table` has succeeded, before the next step starts (a
# Dagster success hook): the driver creates `<path>.held` and waits there until `<path>` exists,
# then goes on (at once, if it already does).
DRIVER = """
import json, os, sys, time
import dagster as dg
from ml_assets.defs import resources
from ml_assets_tests.conftest import load_defs
from ml_assets_tests.test_faults import outcome

job, partition, select, config, hold, go = sys.argv[1:7]
hooks = set()
if hold:
    at_stage, at_table, path = hold.split(" ", 2)

    def wait():
        open(path + ".held", "w").close()
        while not os.path.exists(path):
            time.sleep(0.001)

    def commit_hook(stage, table):
        if (stage, table) == (at_stage, at_table):
            wait()

    @dg.success_hook
    def after_step(context):
        if context.op.name == at_table:
            wait()

    resources.commit_hook = commit_hook
    hooks = {after_step} if at_stage == "step" else set()
tags = {}
if ".." in partition:  # a range of days, in one run
    start, end = partition.split("..")
    tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
job_def = load_defs().resolve_job_def(job)
job_def = job_def.with_hooks(hooks) if hooks else job_def
while go and not os.path.exists(go):
    time.sleep(0.001)
result = job_def.execute_in_process(
    instance=dg.DagsterInstance.get(),
    partition_key=None if tags or not partition else partition,
    tags=tags,
    asset_selection=[dg.AssetKey(k) for k in select.split(",")] if select else None,
    run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}} | json.loads(config),
    raise_on_error=False,
)
print("OUTCOME " + json.dumps(outcome(result)), flush=True)
"""


def outcome(result) -> dict:
    """What a run did: success, and the error of every retry and failure (with its causes)."""

    def error(event) -> str:
        data = event.event_specific_data
        info = getattr(data, "error", None)
        return info.to_string() if info else event.message or ""

    events = result.all_events
    return {
        "run_id": result.run_id,
        "success": result.success,
        "retries": [error(e) for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"],
        "failures": [error(e) for e in events if e.event_type_value == "STEP_FAILURE"],
        "retried_steps": [e.step_key for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"],
        "retry_waits": [
            e.event_specific_data.seconds_to_wait for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"
        ],
    }


def _content(frame: pl.DataFrame) -> str:
    """Order-independent hash of a frame's rows (duplicates count): sha256 of the sorted row hashes."""
    if frame.is_empty():
        return "0 rows"
    frame = frame.select(sorted(frame.columns))
    hashes = np.sort(frame.hash_rows(seed=0).to_numpy())
    return f"{frame.height} rows {hashlib.sha256(hashes.tobytes()).hexdigest()[:16]}"


def _read(root: Path, table: str) -> pl.DataFrame | None:
    """A Delta table read twice, by deltalake and by polars, which must agree (None: no table)."""
    from deltalake import DeltaTable

    uri = str(root / "lake" / table)
    if not DeltaTable.is_deltatable(uri):
        return None
    arrow = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
    frame = pl.read_delta(uri)
    assert _content(arrow) == _content(frame.select(arrow.columns))
    return frame


def _day(root: Path, table: str, column: str = "event_date", day: str = DAY) -> str:
    """The content hash of one partition of a table (of nothing, when the table doesn't exist)."""
    frame = _read(root, table)
    if frame is None:
        return _content(pl.DataFrame())
    return _content(frame.filter(pl.col(column).cast(pl.String) == day))


def _environ(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES}
    return env | root_environ(root) | extra


def _spawn(
    root: Path, job: str, partition="", select="", config=None, hold="", go="", **env
) -> subprocess.Popen:
    """The driver in its own process group (so a kill reaches everything it started)."""
    args = [job, partition, select, json.dumps(config or {}), hold, str(go)]
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        cwd=REPO,
        env=_environ(root, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> dict:
    """The outcome of the driver's run."""
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("OUTCOME ")]
    assert len(lines) == 1, f"the driver printed no outcome (exit {proc.returncode}):\n{err[-3000:]}"
    return json.loads(lines[0].removeprefix("OUTCOME "))


def _kill_when(
    proc: subprocess.Popen, trigger: Callable[[], bool], timeout: float = 300, poll: float = 0.001
) -> None:
    """SIGKILL the process (group) the moment `trigger()` holds; fail if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if trigger():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            assert proc.returncode == -signal.SIGKILL
            return
        time.sleep(poll)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point:\n{err[-3000:]}")


def _held(proc: subprocess.Popen, path: Path) -> None:
    """Wait until the driver is held at its hold point (`path.held` exists), and take the marker
    away for the next driver."""
    marker = path.with_name(path.name + ".held")
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before its hold point:\n{err[-3000:]}")
        time.sleep(0.005)
    marker.unlink()


def _go(path: Path) -> Path:
    """The file that lets a driver held at `path` start its run."""
    return path.with_name(path.name + ".go")


def _kill_at(proc: subprocess.Popen, path: Path) -> None:
    """Let the driver go (`path.go`), and SIGKILL it (its process group) once it is held at its
    hold point."""
    _go(path).touch()
    _held(proc, path)
    _kill_when(proc, lambda: True)


def _files(folder: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(folder)}
    except FileNotFoundError:
        return set()


def _big_day(landing: Path, day: str, name: str, rows: int, channel: str = "pos") -> None:
    """`rows` transactions of `day` in one landing file (~0.1 s of Delta write per 100k): valid,
    unless `channel` is not one of the contract's (then they all go to quarantine)."""
    i = pl.col("i")
    two = lambda e: e.cast(pl.String).str.zfill(2)  # noqa: E731
    frame = pl.DataFrame({"i": np.arange(rows)}).select(
        transaction_id=pl.format(f"{day}-{name}-{{}}", i),
        event_time=pl.format(f"{day}T{{}}:{{}}:{{}}Z", two(i // 3600 % 24), two(i // 60 % 60), two(i % 60)),
        card_id=pl.format("card-{}", i % 5000),
        merchant_id=pl.format("m-{}", i % 300),
        merchant_category=pl.lit("5411"),
        amount=(i % 10_000 / 100 + 1).cast(pl.String),
        currency=pl.lit("EUR"),
        country=pl.lit("FR"),
        channel=pl.lit(channel),
        device_id=pl.lit(None, pl.String),
    )
    folder = landing / "transactions" / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_csv(folder / f"{name}.csv")


QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
DAYS = ("2026-01-14", "2026-01-15", "2026-01-16")  # DAY in the middle
RANGE = {"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]}


def _ingest_in_process(root: Path, partition: str | None = None) -> dict:
    """A clean run of raw_transactions in this process: for `partition`, or DAYS (one commit)."""
    with scoped_environ(**root_environ(root)):
        instance = dg.DagsterInstance.get()
        try:
            result = load_defs().resolve_job_def("ingestion_job").execute_in_process(
                instance=instance, partition_key=partition, tags={} if partition else RANGE,
                asset_selection=[dg.AssetKey("raw_transactions")], run_config=QUIET, raise_on_error=False,
            )  # fmt: skip
        finally:
            instance.dispose()
    return outcome(result)


def _days(root: Path) -> dict[str, str]:
    """'table day' -> the content hash of that day, for each of DAYS."""
    return {f"{t} {d}": _day(root, t, day=d) for t in TX for d in DAYS}


def _versions(root: Path) -> list[int | None]:
    """The Delta version of bronze and quarantine transactions (None: no table)."""
    from deltalake import DeltaTable

    uris = [str(root / "lake" / t) for t in TX]
    return [DeltaTable(u).version() if DeltaTable.is_deltatable(u) else None for u in uris]


def _of(table: str, days: dict[str, str]) -> dict[str, str]:
    """The days of one table, of a `_days` result."""
    return {k: v for k, v in days.items() if k.startswith(f"{table} ")}


def test_a_run_killed_during_its_delta_write_leaves_whole_days_and_a_rerun_converges(tmp_path):
    """SIGKILL before a Delta commit leaves every day of the table wholly old; SIGKILL right after
    it, wholly new (all days of the commit move together, never partial); the tables read either
    way, and a re-run converges to exactly what a clean run on another data root gives."""
    killed, clean = new_root(tmp_path / "killed"), new_root(tmp_path / "clean")
    for day in DAYS:
        _big_day(killed / "landing", day, "part-0", 20_000)
    # Three runs, each to be killed at its own point: started now, so that they load side by side,
    # then each let go in its turn.
    stages = {"new table": "before", "before": "before", "after": "after"}
    hold = {point: killed / f"hold-{i}" for i, point in enumerate(stages)}
    drivers = {
        point: _spawn(killed, "ingestion_job", f"{DAYS[0]}..{DAYS[-1]}", "raw_transactions",
                      hold=f"{stage} {TX[0]} {hold[point]}", go=_go(hold[point]))
        for point, stage in stages.items()
    }  # fmt: skip

    # 1. No table yet. Killed before the data commit of bronze (created empty, as its own commit):
    # the table reads, and holds none of the days.
    _kill_at(drivers["new table"], hold["new table"])
    assert _versions(killed) == [0, None]
    assert set(_days(killed).values()) == {"0 rows"}
    assert _ingest_in_process(killed)["success"]
    old = _days(killed)
    assert old[f"{TX[0]} {DAY}"].startswith("20000 rows") and old[f"{TX[1]} {DAY}"] == "0 rows"
    old_versions = _versions(killed)

    # 2. The days are re-delivered with more rows, some of them invalid (so quarantine changes too).
    for day in DAYS:
        for root in (killed, clean):
            _big_day(root / "landing", day, "part-1", 5_000)
            _big_day(root / "landing", day, "bad", 100, channel="bus")
        shutil.copy(killed / "landing" / "transactions" / f"date={day}" / "part-0.csv",
                    clean / "landing" / "transactions" / f"date={day}")  # fmt: skip
    assert _ingest_in_process(clean)["success"]
    new = _days(clean)
    assert all(new[k] != old[k] for k in new)

    # 3. Killed after the run read bronze and built the three days, just before it commits them.
    _kill_at(drivers["before"], hold["before"])
    assert _versions(killed) == old_versions
    assert _days(killed) == old  # exactly: every day of both tables wholly old

    # 4. Killed right after bronze's commit (the run goes on to quarantine's, its own commit):
    # bronze is one version on, every one of its days wholly new; quarantine wholly old.
    _kill_at(drivers["after"], hold["after"])
    assert _versions(killed) == [old_versions[0] + 1, old_versions[1]]
    assert _days(killed) == _of(TX[0], new) | _of(TX[1], old)

    assert _ingest_in_process(killed)["success"]
    assert _days(killed) == new
    assert [_content(_read(killed, t)) for t in TX] == [_content(_read(clean, t)) for t in TX]


def test_a_run_that_loses_a_commit_race_is_retried_and_leaves_one_copy_of_each_row(tmp_path):
    """Two runs of the same day: run A reads the table and is held before its commit while run B
    (another process) commits the day. A's real delta-rs commit then fails with CommitFailedError,
    every time; the step's storage_retry policy runs it again on B's table, and the table holds
    one clean run's rows, once (A's uncommitted files are on disk, and never read)."""
    from deltalake import DeltaTable

    from ml_assets.defs.ingestion.assets import raw_labels, raw_transactions
    from ml_assets.defs.policies import storage_retry

    assert raw_transactions.op.retry_policy == storage_retry
    assert raw_labels.op.retry_policy == storage_retry
    raced, clean = new_root(tmp_path / "raced"), new_root(tmp_path / "clean")
    for root in (raced, clean):
        _big_day(root / "landing", DAY, "part-0", 20_000)
    # No table yet: A creates bronze (empty, version 0), reads it, and is held. (It loads while
    # this process makes the clean run.) Then B commits the day.
    release = raced / "release"
    a = _spawn(raced, "ingestion_job", DAY, "raw_transactions", hold=f"before {TX[0]} {release}")
    assert _ingest_in_process(clean, DAY)["success"]
    expected = [_content(_read(clean, t)) for t in TX]
    _held(a, release)
    b = _ingest_in_process(raced, DAY)
    assert b["success"] and b["retries"] == [], b
    release.touch()  # A goes on: its write against version 0 must not commit
    run = _finish(a)

    assert run["success"], run
    assert run["retried_steps"] == ["raw_transactions"], run
    (error,) = run["retries"]
    assert "CommitFailedError: Failed to commit transaction" in error, error
    bronze = _read(raced, TX[0])
    assert bronze.height == bronze["transaction_id"].n_unique() == 20_000
    assert [_content(_read(raced, t)) for t in TX] == expected
    # Bronze's commits: created (0), B's day (1), A's retry (2). A's failed attempt left its data
    # files in the day's folder, and the table does not list them.
    table = DeltaTable(str(raced / "lake" / TX[0]))
    assert table.version() == 2
    folder = raced / "lake" / TX[0] / f"event_date={DAY}"
    listed = {Path(uri).name for uri in table.file_uris()}
    assert len(_files(folder) - listed) >= 2  # A's failed attempt, and B's replaced file


# --- On a small simulated world (conftest's small_world, shared in file order): a training run
# killed mid-tuning, re-run, and its model promoted (the world's first champion); then every
# asset, monitoring's included, materialized twice; then a tracking store that is not there.

TRAINING = {"ops": {"fraud_model": {"config": {"n_trials": 2, "num_boost_round": 200}}}}
# Days of the world materialized a second time: a week in the middle, so that later days' features
# (which read these days as history) are compared too.
AGAIN = ("2026-01-10", "2026-01-16")
LAKE = [*tables.BRONZE.values(), *tables.QUARANTINE.values()]
MONITORED = [tables.BATCH_PREDICTIONS, tables.DRIFT, tables.LIVE_PERFORMANCE]


def _registry(root: Path):
    """The world's MLflow registry (its SQLite store), as the location's resource sees it."""
    from ml_assets.defs.resources import MlflowResource

    return MlflowResource(
        tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", artifact_location=str(root / "mlflow")
    )


def _model_versions(root: Path) -> list:
    mlflow = _registry(root)
    return mlflow.client().search_model_versions(f"name='{mlflow.registered_model_name}'")


def _aliases(root: Path) -> dict[str, str | None]:
    from ml_assets.lib import registry

    mlflow = _registry(root)
    client = mlflow.client()
    return {a: registry.alias_version(client, mlflow.registered_model_name, a) for a in registry.ALIASES}


def _promotion_requests(root: Path, instance) -> list:
    """What one tick of the promotion sensor asks for, from the start (no cursor)."""
    from ml_assets.defs.promotion.sensors import model_promotion_sensor
    from ml_assets.defs.resources import AlertsResource

    resources = {"mlflow": _registry(root), "alerts": AlertsResource()}
    context = dg.build_sensor_context(instance=instance, resources=resources)
    return model_promotion_sensor(context).run_requests


def _trials_logged(db: Path) -> int:
    """Optuna trials the training run has logged to MLflow so far (nested runs)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from tags where key = 'mlflow.parentRunId'").fetchone()[0]
    except sqlite3.OperationalError:  # the store's tables are not there yet, or it is busy
        return 0


def _clean_training_run(root: Path) -> tuple[str, dict]:
    """The same training on a copy of the world that nothing ever killed: the content of its
    snapshot, and fraud_model's metadata. (Snapshot and model only: the report does not change
    what was trained.)"""
    from ml_assets.defs.resources import LakeResource

    with scoped_environ(**root_environ(root)):
        instance = dg.DagsterInstance.get()
        try:
            result = load_defs().resolve_job_def("retraining_job").execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey("training_set"), dg.AssetKey("fraud_model")],
                run_config=QUIET | TRAINING, raise_on_error=False,
            )  # fmt: skip
            assert result.success, outcome(result)
            snapshot = _content(
                LakeResource.from_env().scan(tables.TRAINING_SET, version=_snapshot(result)).collect()
            )
        finally:
            instance.dispose()
    return snapshot, result.asset_materializations_for_node("fraud_model")[0].metadata


def _snapshot(result) -> int:
    """The training_set version a run wrote."""
    return result.asset_materializations_for_node("training_set")[0].metadata["delta_version"].value


def _model_result(metadata) -> dict:
    keys = ("holdout_roc_auc", "holdout_pr_auc", "validation_pr_auc", "best_iteration", "best_params")
    return {k: metadata[k].value for k in keys}


def test_a_training_run_killed_mid_tuning_leaves_no_model_and_a_rerun_matches_a_clean_run(
    small_world, tmp_path
):
    """SIGKILL while fraud_model tunes: no version, no alias, nothing for the promotion sensor (which
    asks for the re-run's model once its report passed), and the snapshot the killed run wrote
    reads; then a re-run registers a model with a clean run's exact holdout metrics."""
    from dagster._core.storage.dagster_run import DagsterRunStatus

    from ml_assets.defs.resources import LakeResource
    from ml_assets.lib import registry

    root, definitions, instance = small_world
    # The world's first model: a clean twin of the world, before anything is killed in it.
    assert not (root / "mlflow" / "mlflow.db").exists() or _model_versions(root) == []
    lake = LakeResource.from_env()
    snapshot_before = lake.version(tables.TRAINING_SET)
    twin = tmp_path / "twin"
    shutil.copytree(root, twin, ignore=shutil.ignore_patterns("mlflow"))

    training = _spawn(root, "retraining_job", config=TRAINING)
    # Killed once the first Optuna trial is logged: the second one is training.
    _kill_when(training, lambda: _trials_logged(root / "mlflow" / "mlflow.db") >= 1, poll=0.01)

    client = _registry(root).client()
    (experiment,) = [e for e in client.search_experiments() if e.name == "fraud_detector"]
    runs = client.search_runs([experiment.experiment_id])
    (killed,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert killed.info.status == "RUNNING"  # a killed process ends nothing: the run stays open
    assert _model_versions(root) == []
    assert set(_aliases(root).values()) == {None}
    assert _promotion_requests(root, instance) == []
    # The snapshot the killed run itself wrote (its training_set step finished before the kill):
    # a new version, the table's latest, and it reads, whole.
    written = instance.get_latest_materialization_event(dg.AssetKey("training_set"))
    assert instance.get_run_by_id(written.run_id).status == DagsterRunStatus.STARTED  # the killed run
    version = written.asset_materialization.metadata["delta_version"].value
    assert snapshot_before is None or version > snapshot_before
    assert lake.version(tables.TRAINING_SET) == version
    snapshot = _content(lake.scan(tables.TRAINING_SET, version=version).collect())
    assert _content(_read(root, tables.TRAINING_SET)) == snapshot != "0 rows"

    result = run_job(definitions, "retraining_job", instance=instance, run_config=TRAINING)
    assert result.success, outcome(result)
    rerun = result.asset_materializations_for_node("fraud_model")[0].metadata
    (model,) = _model_versions(root)
    assert model.tags[registry.TAG_DAGSTER_RUN] == result.run_id
    assert _aliases(root)[registry.CHALLENGER] == str(model.version)
    assert _snapshot(result) == version + 1
    assert _content(lake.scan(tables.TRAINING_SET, version=version + 1).collect()) == snapshot

    clean_snapshot, clean = _clean_training_run(twin)
    assert clean_snapshot == snapshot
    assert _model_result(rerun) == _model_result(clean)

    # The sensor was silent after the kill because nothing passed: now a report has, it asks to
    # promote exactly that version. Promoted, it is the world's first champion (the tests below
    # score with it).
    (request,) = _promotion_requests(root, instance)
    assert request.run_config["ops"]["deployed_model"]["config"]["version"] == str(model.version)
    assert run_job(definitions, "promotion_job", instance=instance, run_config=request.run_config).success
    assert _aliases(root)[registry.CHAMPION] == str(model.version)


def _warehouse(root: Path, table: str) -> pl.DataFrame:
    import duckdb

    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(f"select * from {table}").pl()


def _world_contents(root: Path) -> dict[str, str]:
    # No column of these tables is run-specific (no load timestamps, run ids or Delta versions
    # in rows), so nothing is excluded from the hashes.
    return {t: _content(_read(root, t)) for t in LAKE} | {
        t: _content(_warehouse(root, t)) for t in ("stg_transactions", "stg_labels", "transaction_features")
    }


def _lake_versions(root: Path, names: list[str]) -> dict[str, int]:
    from deltalake import DeltaTable

    return {t: DeltaTable(str(root / "lake" / t)).version() for t in names}


def test_every_asset_materialized_twice_has_identical_contents(small_world):
    """Ingestion, the dbt features, the training snapshot, and monitoring (batch predictions, drift,
    live performance, by the champion the test above promoted), materialized again on the same
    inputs: every table's contents are identical (and they were really rewritten)."""
    root, definitions, instance = small_world
    before, versions = _world_contents(root), _lake_versions(root, LAKE)
    assert all(not h.startswith("0 rows") for t, h in before.items() if "quarantine" not in t)
    for job in ("ingestion_job", "features_job"):
        result = run_job(definitions, job, instance=instance, days=AGAIN)
        assert result.success, outcome(result)
    assert all(v > versions[t] for t, v in _lake_versions(root, LAKE).items())
    assert _world_contents(root) == before

    # Monitoring writes nothing until a champion exists: materialized once, then again.
    monitored = []
    for _ in range(2):
        result = run_job(definitions, "monitoring_job", instance=instance, days=AGAIN)
        assert result.success, outcome(result)
        monitored.append(({t: _content(_read(root, t)) for t in MONITORED}, _lake_versions(root, MONITORED)))
    (first, first_versions), (second, second_versions) = monitored
    assert all(second_versions[t] > first_versions[t] for t in MONITORED)
    assert not any(h.startswith("0 rows") for h in first.values()), first
    assert second == first

    from ml_assets.defs.resources import LakeResource

    lake, snapshots = LakeResource.from_env(), {}
    for _ in range(2):
        result = definitions.resolve_job_def("retraining_job").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("training_set")], run_config=QUIET
        )
        version = _snapshot(result)
        snapshots[version] = _content(lake.scan(tables.TRAINING_SET, version=version).collect())
    assert len(snapshots) == 2 and len(set(snapshots.values())) == 1, snapshots


def test_an_unreachable_tracking_store_fails_training_after_retries_and_registers_nothing(small_world):
    """Training with the MLflow server down: the step is retried with backoff (the storage_retry
    policy), then fails naming the store; nothing is registered or promoted."""
    import socket

    from ml_assets.defs.policies import storage_retry
    from ml_assets.defs.training.model import fraud_model

    root, _, instance = small_world
    assert fraud_model.op.retry_policy == storage_retry
    with socket.socket() as s:  # a port nothing listens on (bound, then closed)
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    versions_before, aliases_before = len(_model_versions(root)), _aliases(root)
    environ = {
        "ML_ASSETS_DATA_DIR": str(root),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "MLFLOW_TRACKING_URI": uri,
        # MLflow's own HTTP retries (7, with backoff, by default) would take minutes per attempt:
        # the step's retry policy is what is under test.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    with scoped_environ(**environ):
        started = time.monotonic()
        result = run_job(load_defs(), "retraining_job", instance=instance, run_config=TRAINING)
        seconds = time.monotonic() - started
    run = outcome(result)

    assert not run["success"]
    assert run["retried_steps"] == ["fraud_model"] * storage_retry.max_retries
    unreachable = f"MLflow tracking store {uri} is unreachable"
    assert all(unreachable in error for error in run["retries"] + run["failures"]), run
    assert len(run["failures"]) == 1
    # Exponential backoff (1x, 3x, 7x the delay, each give or take one delay of jitter), and the
    # run really waited.
    for attempt, wait in enumerate(run["retry_waits"], start=1):
        assert abs(wait - (2**attempt - 1) * storage_retry.delay) <= storage_retry.delay
    assert seconds >= sum(run["retry_waits"])
    assert result.asset_materializations_for_node("model_validation_report") == []

    assert len(_model_versions(root)) == versions_before
    assert _aliases(root) == aliases_before  # the champion the kill test promoted, untouched
    assert _promotion_requests(root, instance) == []
