"""Shared fixtures: every test gets its own data root, so real Delta tables land in a temp dir."""

from __future__ import annotations

import atexit
import csv
import io
import os
import shutil
import sqlite3
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

# LightGBM's OpenMP threads spin while they wait for each other: two trainings at once on two cores
# (two pytest-xdist workers, or two runs of one test) spin against each other (the README's training
# section has the figures). Set before anything loads libgomp, for this process and every process
# the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ml_assets.lib.settings import SETTINGS, replace_environment  # noqa: E402

# A step's storage retries wait about 2, 6 and 14 s. The tests keep that policy (three retries,
# exponential backoff, jitter) on a shorter clock: it is read once, when the policies module is
# imported, which is here, before any test clears the settings.
os.environ["ML_ASSETS_STEP_RETRY_SECONDS"] = "0.2"
import ml_assets.defs.policies  # noqa: E402, F401

del os.environ["ML_ASSETS_STEP_RETRY_SECONDS"]

# Test instances don't send telemetry (nor log every step's telemetry event).
DAGSTER_YAML = "telemetry:\n  enabled: false\n"

TX_COLUMNS = [
    "transaction_id", "event_time", "card_id", "merchant_id", "merchant_category", "amount",
    "currency", "country", "channel", "device_id",
]  # fmt: skip


def tx(i: int = 1, day: str = "2026-01-15", **overrides) -> dict[str, str]:
    """A valid landing-contract transaction row (raw strings), with overrides."""
    row = {
        "transaction_id": f"tx-{i}",
        "event_time": f"{day}T10:{i % 60:02d}:00Z",
        "card_id": f"card-{i % 7}",
        "merchant_id": "m-1",
        "merchant_category": "5411",
        "amount": "12.50",
        "currency": "EUR",
        "country": "FR",
        "channel": "pos",
        "device_id": "",
    }
    row.update(overrides)
    return row


def label(i: int = 1, day: str = "2026-01-18", **overrides) -> dict[str, str]:
    row = {"transaction_id": f"tx-{i}", "labeled_at": f"{day}T09:00:00Z", "is_fraud": "0"}
    row.update(overrides)
    return row


def csv_bytes(rows: list[dict[str, str]], columns: list[str] | None = None, eol: str = "\n") -> bytes:
    columns = columns or list(rows[0])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator=eol, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def write_landing(root: Path, feed: str, day: str, name: str, data: bytes) -> Path:
    folder = root / feed / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


# Every setting the project reads (ml_assets.lib.settings): a test sets what it needs on a clean
# slate, so no variable of the shell (production's, say) points it at someone else's store. MLflow's
# `set_tracking_uri` itself exports MLFLOW_TRACKING_URI, so one test's store leaks into the next
# unless it is cleared.
STORE_VARIABLES = tuple(SETTINGS)


@contextmanager
def scoped_environ(**values: str):
    """os.environ with the store variables cleared and `values` set; as it was on exit."""
    saved = dict(os.environ)
    for name in STORE_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        replace_environment(saved)


# The modules that take minutes, longest first (worker-seconds in one slow day's run: 284, 281, 226,
# 150, 143, 84, 64); the rest follow in file order. `make test` hands a pytest-xdist worker one
# module at a time in this order (--no-loadscope-reorder: by default xdist starts with the modules
# that have the most tests), so that no long one is left to run alone at the end.
LONGEST_MODULES = (
    "test_faults", "test_model_lifecycle", "test_real_clients", "test_automation", "test_closed_loop",
    "test_serving_features", "test_feature_evolution",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: first.get(item.path.stem, len(first)))  # stable: tests keep their order


@pytest.fixture(autouse=True)
def _environ_restored_after_each_test():
    """Whatever a test (or a library it calls) exports is gone before the next test. Only what
    changed is written back (settings.replace_environment): clearing and refilling it, some 50
    variables unset and added back at every test's end, freed the C environment under any native
    thread reading it meanwhile."""
    saved = dict(os.environ)
    yield
    replace_environment(saved)


@pytest.fixture(autouse=True)
def _sys_path_restored_after_each_test():
    """Loading a logged model puts its code folder first on sys.path (MLflow's code_paths). A
    process the tests spawn later starts from this process's sys.path, and imported ml_assets from
    that copy in /tmp, not from the repository."""
    saved = sys.path[:]
    yield
    sys.path[:] = saved


_store_template: Path | None = None


def seed_mlflow_store(root: Path) -> Path:
    """An empty MLflow store, already migrated, where the data root `root` keeps its own
    (`mlflow/mlflow.db`, paths.mlflow_tracking_uri's default); returns its path.

    MLflow spends ~10 s creating a new SQLite store's tables: the session creates one and every
    world starts from a copy. Its Default experiment is pointed into `root`, as creating the store
    there would have done. A store already there is kept.
    """
    global _store_template
    if _store_template is None:
        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="ml_assets_mlflow_template_"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(), client.search_registered_models()  # creates every table
        _store_template = folder / "mlflow.db"
    target = root / "mlflow" / "mlflow.db"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_store_template, target)
        with sqlite3.connect(target) as con:
            con.execute(
                "update experiments set artifact_location = ? where experiment_id = 0",
                (str(root / "mlflow" / "mlruns" / "0"),),
            )
        con.close()
    return target


def new_root(path: Path, dagster_yaml: str = DAGSTER_YAML) -> Path:
    """A data root at `path` with its own DAGSTER_HOME (`dagster_home/` under it) and an empty
    MLflow store; returns it."""
    (path / "landing").mkdir(parents=True, exist_ok=True)
    (path / "dagster_home").mkdir(exist_ok=True)
    (path / "dagster_home" / "dagster.yaml").write_text(dagster_yaml)
    seed_mlflow_store(path)
    return path


def root_environ(root: Path) -> dict[str, str]:
    """The variables that point a process at the data root `root` (and its DAGSTER_HOME)."""
    return {"ML_ASSETS_DATA_DIR": str(root), "DAGSTER_HOME": str(root / "dagster_home")}


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A fresh ML_ASSETS_DATA_DIR (and DAGSTER_HOME) for one test."""
    root = tmp_path / "data"
    (root / "landing").mkdir(parents=True)
    seed_mlflow_store(root)
    for name in STORE_VARIABLES:  # first: ML_ASSETS_DATA_DIR and DAGSTER_HOME are among them
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ML_ASSETS_DATA_DIR", str(root))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return root


def load_defs():
    """The real code location, with resources pointing at the current (temp) data root."""
    from ml_assets.definitions import defs

    return defs()


def run_job(
    definitions,
    job: str,
    instance=None,
    partition: str | None = None,
    days: tuple[str, str] | None = None,
    run_config=None,
    tags: dict[str, str] | None = None,
):
    """Execute one of the location's jobs in process, for one day or a range of days, with `tags`
    (a sensor's request's, say) on the run."""
    import dagster as dg

    tags = dict(tags or {})
    if days:
        tags |= {
            "dagster/asset_partition_range_start": days[0],
            "dagster/asset_partition_range_end": days[1],
        }
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    return definitions.resolve_job_def(job).execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        partition_key=partition,
        tags=tags,
        run_config=quiet | (run_config or {}),
        raise_on_error=False,
    )


def check_results(result) -> dict[str, object]:
    """Check name -> its evaluation (for the asset the check targets, as 'asset:check')."""
    out = {}
    for e in result.all_events:
        if e.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = e.event_specific_data
            out[f"{ev.asset_key.to_user_string()}:{ev.check_name}"] = ev
    return out


WORLD_DAYS = ("2026-01-01", "2026-01-24")


@pytest.fixture(scope="session")
def small_world_template(tmp_path_factory) -> Path:
    """The small world, built once a session: 24 days x 1,500 transactions, 3% fraud, ingested
    and featurized. Modules never write to it: `small_world` gives each its own copy."""
    import dagster as dg

    from ml_assets.simulate.generator import SimulatorConfig, simulate

    root = new_root(tmp_path_factory.mktemp("world-template") / "data")
    with scoped_environ(**root_environ(root)):
        cfg = SimulatorConfig(days=24, transactions_per_day=1500, base_fraud_rate=0.03, drift_day=None)
        simulate(cfg, root / "landing", root / "simulator" / "truth", log=lambda _: None)
        instance = dg.DagsterInstance.get()
        try:
            definitions = load_defs()
            for job in ("ingestion_job", "features_job"):
                result = run_job(definitions, job, instance=instance, days=WORLD_DAYS)
                assert result.success, [e.message for e in result.all_events if e.is_failure]
        finally:
            instance.dispose()
    return root


@pytest.fixture(scope="module")
def small_world(small_world_template, tmp_path_factory):
    """A module's own copy of the small world (its lake, warehouse, empty MLflow store and Dagster
    instance with the runs that built it). The tests of one module share it, and may build on each
    other's state, in file order. Yields (data root, definitions, a persistent Dagster instance).
    """
    import dagster as dg

    root = tmp_path_factory.mktemp("world") / "data"
    shutil.copytree(small_world_template, root)
    with scoped_environ(**root_environ(root)):
        instance = dg.DagsterInstance.get()
        definitions = load_defs()
        yield root, definitions, instance
        instance.dispose()


# -- the online store's two engines (ml_assets_tests/redis_support.py) -------------------------------


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of the test's own in its temp dir (append-only, fsync always), stopped after
    it; skips where redis-server is not installed (fails under CI)."""
    import signal

    from ml_assets_tests.redis_support import started

    server = started(tmp_path)
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture(params=["sqlite", "redis"])
def engine(request, tmp_path):
    """(store URL, the RedisServer or None): an SQLite file in the temp dir, or a redis-server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online' / 'online.db'}", None
    server = request.getfixturevalue("redis_server")
    return server.url, server


def launch_through_graphql(port: int, job: str, tags: dict[str, str], give_up: float):
    """Launch `job` through a running webserver's GraphQL API, as a user of the UI or an
    orchestrator would, and wait for it to end; returns (run id, its final DagsterRunStatus)."""
    import time

    from dagster import DagsterRunStatus
    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution(
        job, repository_location_name="ml_assets", repository_name="__repository__", tags=tags
    )
    ended = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
    deadline = time.monotonic() + give_up
    while (status := client.get_run_status(run_id)) not in ended:
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(2)
    return run_id, status
