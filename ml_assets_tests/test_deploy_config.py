"""deploy/ loads and validates: the Dagster instance against Dagster's own schema, the code location
with the production environment. No cluster, database or server is contacted.
"""

from __future__ import annotations

import importlib
import json
import subprocess

import dagster as dg
import pytest
import yaml

from ml_assets.lib.paths import REPO_ROOT
from ml_assets_tests.conftest import load_defs

DEPLOY = REPO_ROOT / "deploy"


def _env_file(name: str) -> dict[str, str]:
    """KEY=VALUE lines, read the way `kubectl create configmap --from-env-file` reads them."""
    pairs = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


PRODUCTION = _env_file("production.env.example")
SECRETS = _env_file("secrets.env.example")


def _env_refs(node) -> set[str]:
    """Every `{env: NAME}` in a parsed dagster.yaml."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node))
    return set()


@pytest.fixture
def production_env(data_dir, monkeypatch):
    """The production environment (secrets with stand-in values) over a fresh data root."""
    for key, value in {**PRODUCTION, **{k: f"stand-in-{k}" for k in SECRETS}}.items():
        monkeypatch.setenv(key, value)
    return data_dir


def _instance_parts(tmp_path, config_dir=DEPLOY):
    """dagster.yaml read the way DagsterInstance reads it: (ref, {part: (class, its config result)})."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.ref import InstanceRef

    # Validates the whole file against the instance schema, as DagsterInstance.get() does.
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(config_dir))
    parts = {}
    for part, data in {
        "storage": ref.storage_data,
        "run_launcher": ref.run_launcher_data,
        "run_coordinator": ref.run_coordinator_data,
        "compute_logs": ref.compute_logs_data,
    }.items():
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        # What ConfigurableClassData.rehydrate does before it builds the class (which would
        # connect to the database or the cluster): check the class's config, resolve env vars.
        config = yaml.safe_load(data.config_yaml)
        parts[part] = (klass, process_config(resolve_to_config_type(klass.config_type()), config))
    return ref, parts


def test_every_variable_deploy_reads_is_documented():
    refs = _env_refs(yaml.safe_load((DEPLOY / "dagster.yaml").read_text()))
    assert refs, "dagster.yaml takes its settings from the environment"
    assert refs <= PRODUCTION.keys() | SECRETS.keys(), refs - PRODUCTION.keys() - SECRETS.keys()
    assert not PRODUCTION.keys() & SECRETS.keys()
    assert all(value == "" for value in SECRETS.values()), "secrets.env.example holds names only"


def test_dagster_yaml_validates_and_names_the_production_classes(production_env, tmp_path):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    ref, parts = _instance_parts(tmp_path)
    assert {part: klass for part, (klass, _) in parts.items()} == {
        "storage": DagsterPostgresStorage,
        "run_launcher": K8sRunLauncher,
        "run_coordinator": QueuedRunCoordinator,
        "compute_logs": S3ComputeLogManager,
    }
    failed = {part: [e.message for e in r.errors] for part, (_, r) in parts.items() if not r.success}
    assert not failed
    # Env references resolved to the values production sets (ints too).
    config = {part: result.value for part, (_, result) in parts.items()}
    db = config["storage"]["postgres_db"]
    assert (db["hostname"], db["port"], db["password"]) == (
        PRODUCTION["DAGSTER_PG_HOST"], int(PRODUCTION["DAGSTER_PG_PORT"]), "stand-in-DAGSTER_PG_PASSWORD",
    )  # fmt: skip
    assert config["run_launcher"]["job_namespace"] == PRODUCTION["DAGSTER_K8S_JOB_NAMESPACE"]
    assert config["run_launcher"]["env_config_maps"] == [PRODUCTION["ML_ASSETS_ENV_CONFIG_MAP"]]
    runs = ref.settings["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == 8
    assert runs["tag_concurrency_limits"] == [
        {"key": "dagster/backfill", "limit": 4},
        {"key": "ml_assets/serial", "value": "retraining", "limit": 1},
    ]
    # The dbt step's pool (the DuckDB warehouse takes one writer) has one slot.
    assert ref.settings["concurrency"]["pools"] == {"default_limit": 1}
    assert config["compute_logs"]["bucket"] == PRODUCTION["DAGSTER_COMPUTE_LOG_BUCKET"]
    assert ref.settings["run_monitoring"]["enabled"] and ref.settings["telemetry"] == {"enabled": False}


def test_deploy_dagster_yaml_is_the_template_rendered_with_productions_values():
    from ml_assets.lib import dagster_instance

    assert (DEPLOY / "dagster.yaml").read_text() == dagster_instance.render(dagster_instance.PRODUCTION), (
        "deploy/dagster.yaml is rendered: edit deploy/dagster.yaml.template, then run "
        "`python -m ml_assets.lib.dagster_instance`"
    )


def test_the_stacks_dagster_yaml_renders_from_the_same_template_and_validates(tmp_path, monkeypatch):
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
    from dagster_postgres import DagsterPostgresStorage

    from ml_assets.lib import dagster_instance

    home = tmp_path / "home"
    home.mkdir()
    text = dagster_instance.render(dagster_instance.stack(pg_port=15432, compute_logs_dir=tmp_path / "logs"))
    (home / "dagster.yaml").write_text(text)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "stand-in")
    ref, parts = _instance_parts(home, config_dir=home)
    assert {part: klass for part, (klass, _) in parts.items() if part != "run_coordinator"} == {
        "storage": DagsterPostgresStorage,
        "run_launcher": DefaultRunLauncher,
        "compute_logs": LocalComputeLogManager,
    }
    failed = {part: [e.message for e in r.errors] for part, (_, r) in parts.items() if not r.success}
    assert not failed
    db = parts["storage"][1].value["postgres_db"]
    assert (db["hostname"], db["port"], db["password"]) == ("127.0.0.1", 15432, "stand-in")
    # Everything but the launcher, the database's address and the step logs is production's.
    assert ref.settings["concurrency"]["pools"] == {"default_limit": 1}
    assert ref.settings["run_retries"] == yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_retries"]
    assert "{env: DAGSTER_PG_PASSWORD}" in text and "$" not in text


def test_dagster_yaml_is_rejected_when_wrong(production_env, tmp_path, monkeypatch):
    from dagster._core.errors import DagsterInvalidConfigError

    monkeypatch.delenv("DAGSTER_PG_HOST")
    _, parts = _instance_parts(tmp_path)
    assert not parts["storage"][1].success
    assert "DAGSTER_PG_HOST" in " ".join(e.message for e in parts["storage"][1].errors)

    typo = tmp_path / "typo"
    typo.mkdir()
    text = (DEPLOY / "dagster.yaml").read_text()
    (typo / "dagster.yaml").write_text(text.replace("run_launcher:", "run_lancher:"))
    with pytest.raises(DagsterInvalidConfigError, match="run_lancher"):
        _instance_parts(tmp_path, config_dir=typo)


def test_the_code_location_takes_the_production_environment(production_env):
    resources = load_defs().resources
    lake, mlflow, dbt = resources["lake"], resources["mlflow"], resources["dbt"]
    assert lake.root == "s3://ml-assets-prod/lake"
    assert lake.storage_options == json.loads(PRODUCTION["ML_ASSETS_LAKE_STORAGE_OPTIONS"])
    assert lake.storage_options["conditional_put"] == "etag"
    assert lake.uri("bronze/transactions") == "s3://ml-assets-prod/lake/bronze/transactions"
    assert mlflow.tracking_uri == "http://mlflow.ml-platform.svc.cluster.local:5000"
    assert mlflow.artifact_location == "s3://ml-assets-prod/mlflow-artifacts"
    assert dbt.target == "prod"
    assert resources["warehouse"].path == "md:ml_assets"
    assert resources["landing"].root == "/mnt/landing"
    # A secret: the resource names the variable (the UI shows the name), resolved only in a run.
    webhook = resources["alerts"].webhook_url
    assert isinstance(webhook, dg.EnvVar) and webhook.env_var_name == "ML_ASSETS_ALERT_WEBHOOK"
    assert webhook.get_value() == "stand-in-ML_ASSETS_ALERT_WEBHOOK"
    # The online store's URL carries Redis's password: a variable's name too.
    store = resources["online_store"].url
    assert isinstance(store, dg.EnvVar) and store.env_var_name == "ML_ASSETS_ONLINE_STORE"
    # Nothing local was made: no lake, and the data root's MLflow folder holds only the empty store
    # the fixture put there.
    assert not (production_env / "lake").exists()
    assert [p.name for p in (production_env / "mlflow").iterdir()] == ["mlflow.db"]


def test_dbt_parses_with_the_production_target(production_env, tmp_path):
    """dbt renders the `prod` output of profiles.yml and parses the project with it (no connection)."""
    dbt = load_defs().resources["dbt"]
    out = subprocess.run(
        [dbt.dbt_executable, "parse", "--project-dir", dbt.project_dir, "--profiles-dir", dbt.profiles_dir,
         "--target", dbt.target, "--target-path", str(tmp_path / "target"), "--no-partial-parse"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    nodes = json.loads((tmp_path / "target" / "manifest.json").read_text())["nodes"].values()
    # The models land in the MotherDuck database the prod output names (locally: "warehouse").
    assert {n["database"] for n in nodes if n["resource_type"] == "model"} == {"ml_assets"}


def test_retraining_runs_one_at_a_time_on_both_instances(production_env, tmp_path):
    """retraining_job carries the serial tag, and both instance configs, production's and the one
    `make setup` puts in DAGSTER_HOME (`dagster.local.yaml`), queue such runs one at a time."""
    import shutil

    from dagster._core.run_coordinator import QueuedRunCoordinator

    from ml_assets.defs.promotion.jobs import SERIAL_TAG

    assert load_defs().resolve_job_def("retraining_job").tags.items() >= SERIAL_TAG.items()
    ((key, value),) = SERIAL_TAG.items()
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(REPO_ROOT / "dagster.local.yaml", local / "dagster.yaml")
    for config_dir in (DEPLOY, local):
        ref, parts = _instance_parts(tmp_path, config_dir=config_dir)
        klass, result = parts["run_coordinator"]
        assert klass is QueuedRunCoordinator and result.success, (config_dir, result.errors)
        # Production's limits are in `concurrency: runs:` (beside its pools, which rule out
        # `run_queue`'s), the local file's in `run_queue`: the coordinator reads either.
        given = ref.settings.get("concurrency", {}).get("runs", {}).get("tag_concurrency_limits")
        limits = [
            {k: d.get(k) for k in ("key", "value", "limit")}
            for d in given or result.value["tag_concurrency_limits"]
        ]
        assert {"key": key, "value": value, "limit": 1} in limits, config_dir
        assert ref.settings["telemetry"] == {"enabled": False}


def test_the_local_run_queue_holds_a_second_retraining_run(data_dir, tmp_path):
    """On an instance configured by `dagster.local.yaml`, Dagster's own queue daemon would launch a
    queued run of another job, and holds a queued retraining run while one is in progress."""
    import shutil

    from dagster._core.instance.ref import InstanceRef
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    from ml_assets_tests.daemon_support import SensorDaemon

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.local.yaml", home / "dagster.yaml")
    definitions = load_defs()
    with (
        dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance,
        SensorDaemon(instance) as daemon,  # the loaded location, whose jobs the runs are of
    ):

        def run(job: str, status: dg.DagsterRunStatus) -> str:
            """A run as a schedule or sensor creates it (queued runs need their code's origin)."""
            job_def, remote = definitions.resolve_job_def(job), daemon.repository.get_full_job(job)
            return instance.create_run_for_job(
                job_def, status=status, tags=job_def.tags, remote_job_origin=remote.get_remote_origin(),
                job_code_origin=remote.get_python_origin(),
            ).run_id  # fmt: skip

        run("retraining_job", dg.DagsterRunStatus.STARTED)  # the weekly schedule's, training
        sensor_retraining = run("retraining_job", dg.DagsterRunStatus.QUEUED)
        promotion = run("promotion_job", dg.DagsterRunStatus.QUEUED)
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=5)
        dequeued = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
    assert [r.run_id for r in dequeued] == [promotion], (dequeued, sensor_retraining)
