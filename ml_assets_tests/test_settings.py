"""One table of settings (ml_assets.lib.settings), and nothing that reads the environment behind it.

What a shell with production's variables can still reach is proven on a real pipeline run in
test_real_clients (its world is built with every production variable set, under an audit hook).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from ml_assets.lib import paths, settings
from ml_assets.lib.dbt_project import DBT_PROJECT_DIR
from ml_assets.lib.settings import SETTINGS

PACKAGE = paths.REPO_ROOT / "ml_assets"
# What may still read os.environ, and why: the table itself, and the PATH that dagster-dbt's
# manifest preparer needs (the process's search path, not a setting of ours).
READERS = {PACKAGE / "lib" / "settings.py", PACKAGE / "defs" / "features" / "assets.py"}
ENVIRONMENT = re.compile(r"os\.environ|os\.getenv|getenv\(|env_var\(")


def test_the_readme_lists_every_setting_as_the_table_says():
    assert settings.markdown() in (paths.REPO_ROOT / "README.md").read_text()


def test_nothing_reads_the_environment_but_the_table():
    readers = {
        path
        for path in [
            *PACKAGE.rglob("*.py"),
            *DBT_PROJECT_DIR.glob("**/*.yml"),
            *DBT_PROJECT_DIR.glob("**/*.sql"),
        ]
        if "target" not in path.relative_to(paths.REPO_ROOT).parts and ENVIRONMENT.search(path.read_text())
    }
    assert readers <= READERS, sorted(str(p) for p in readers - READERS)
    features = (PACKAGE / "defs" / "features" / "assets.py").read_text()
    assert set(re.findall(r"os\.environ(?:\.get)?\(?\[?\"(\w+)\"", features)) == {"PATH"}


def _local(default: str) -> str:
    """A setting's default as dbt_project/ spells it (relative to itself)."""
    return default.replace("<data>", "../data")


def test_dbt_defaults_are_the_settings_defaults():
    """dbt's own defaults (a plain `dbt build` inside dbt_project/) equal the table's, so the two
    ways of running dbt build the same local warehouse from the same lake."""
    profile = (DBT_PROJECT_DIR / "profiles.yml").read_text()
    defaults = dict(re.findall(r"var\('(\w+)', '([^']*)'\)", profile.split("prod:")[0]))
    assert defaults == {
        "warehouse": _local(SETTINGS["ML_ASSETS_WAREHOUSE"].default),
        "duckdb_memory_limit": SETTINGS["ML_ASSETS_DUCKDB_MEMORY_LIMIT"].default,
    }
    project_vars = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"]
    assert project_vars["lake_uri"] == _local(SETTINGS["ML_ASSETS_LAKE_URI"].default)
    # ... and Dagster passes every var these files take, from the settings.
    taken = set(re.findall(r"var\('(\w+)'", profile)) | {"lake_uri"}
    assert set(paths.dbt_vars()) == taken


def _online_store_readers() -> str:
    from ml_assets.defs.resources import build_resources
    from ml_assets.serving.settings import ServingSettings

    read = {paths.online_store_url(), ServingSettings.from_env().online_store}
    read.add(build_resources()["online_store"].url.get_value())  # given as dg.EnvVar: may hold a password
    assert len(read) == 1, read
    return read.pop()


def _dbt_vars_readers() -> str:
    import json

    from ml_assets.lib.features import feature_columns
    from ml_assets.serving.features import FeatureParams

    windows = {"1h": 1, "5m_x": 2}
    assert paths.dbt_vars()["card_velocity_windows"] == windows
    assert FeatureParams.from_dbt_project().card_velocity_windows == windows
    assert "card_tx_count_5m_x" in feature_columns() and "card_tx_count_7d" not in feature_columns()
    return json.dumps({"card_velocity_windows": windows})


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_setting_moves_what_it_names(name, monkeypatch, tmp_path):
    """Set to a value, each setting is what its reader returns (derived ones follow the data root)."""

    given = {
        "ML_ASSETS_LAKE_STORAGE_OPTIONS": '{"AWS_REGION": "eu-west-1"}',
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "ML_ASSETS_START_DATE": "2025-06-01",
        "ML_ASSETS_SERVING_STRATEGY": "shadow",
        "ML_ASSETS_DBT_VARS": '{"card_velocity_windows": {"1h": 1, "5m_x": 2}}',
        "ML_ASSETS_CANARY_STEPS": "0.1,0.6,1.0",
    }.get(
        name,
        str(tmp_path / "x")
        if name.endswith(("_DIR", "_URI", "HOME", "WAREHOUSE", "ARTIFACTS", "_STORE", "_FILE"))
        else "7",
    )
    monkeypatch.setenv(name, given)
    assert settings.value(name) == given
    readers = {
        "ML_ASSETS_DATA_DIR": lambda: str(paths.data_dir()),
        "ML_ASSETS_LANDING_DIR": lambda: str(paths.landing_dir()),
        "ML_ASSETS_LAKE_URI": paths.lake_uri,
        "ML_ASSETS_LAKE_STORAGE_OPTIONS": lambda: (
            '{"AWS_REGION": "eu-west-1"}'
            if paths.lake_storage_options() == {"AWS_REGION": "eu-west-1"}
            else None
        ),
        "ML_ASSETS_SIMULATOR_DIR": lambda: str(paths.simulator_dir()),
        "ML_ASSETS_WAREHOUSE": paths.warehouse_uri,
        "ML_ASSETS_DBT_TARGET": paths.dbt_target,
        "ML_ASSETS_DUCKDB_MEMORY_LIMIT": paths.duckdb_memory_limit,
        "MLFLOW_TRACKING_URI": paths.mlflow_tracking_uri,
        "ML_ASSETS_MLFLOW_ARTIFACTS": paths.mlflow_artifact_root,
        "DAGSTER_HOME": lambda: str(paths.dagster_home()),
        # dbt's runs get the vars, and the online features and the feature list read the same.
        "ML_ASSETS_DBT_VARS": lambda: _dbt_vars_readers(),
        # The service's store, and the pipeline's resource on it (the feed and the drain).
        "ML_ASSETS_ONLINE_STORE": lambda: _online_store_readers(),
    }
    if name in readers:
        assert readers[name]() == given
    elif "_TOKEN" in name:  # the service's bearer tokens (ml_assets.serving.auth): given or in a file
        from ml_assets.serving.settings import ServingSettings

        token = "token-of-a-test-0123456789"
        if name.endswith("_FILE"):
            (tmp_path / "x").write_text(f"{token}\n")
        else:
            monkeypatch.setenv(name, token)
        scope = "scoring" if "SCORING" in name else "operations"
        assert getattr(ServingSettings.from_env(), f"{scope}_tokens") == (token,)
    elif name.startswith("ML_ASSETS_SERVING_") and name != "ML_ASSETS_SERVING_STRATEGY":
        from ml_assets.serving.settings import ENV, ServingSettings

        field = next(f for f, var in ENV.items() if var == name)
        assert getattr(ServingSettings.from_env(), field) == type(getattr(ServingSettings, field))(given)
    elif name in (
        "ML_ASSETS_MODEL_NAME", "ML_ASSETS_SERVING_STRATEGY", "ML_ASSETS_CANARY_STEPS",
        "ML_ASSETS_ALERT_WEBHOOK",
    ):  # fmt: skip
        from ml_assets.defs.resources import build_resources

        resources = build_resources()
        got = {
            "ML_ASSETS_MODEL_NAME": lambda: resources["mlflow"].registered_model_name,
            "ML_ASSETS_SERVING_STRATEGY": lambda: resources["serving"].strategy,
            "ML_ASSETS_CANARY_STEPS": lambda: ",".join(repr(s) for s in resources["serving"].steps()),
            "ML_ASSETS_ALERT_WEBHOOK": lambda: resources["alerts"].webhook_url.get_value(),
        }[name]()
        assert got == given
    elif name == "ML_ASSETS_EXECUTOR":
        monkeypatch.setenv(name, "multiprocess")
        from ml_assets_tests.conftest import load_defs

        assert load_defs().get_repository_def().get_job("ingestion_job").executor_def.name == "multiprocess"
    elif name in ("ML_ASSETS_START_DATE", "ML_ASSETS_STEP_RETRY_SECONDS"):
        import subprocess
        import sys

        # Read when the policies module is imported: a fresh process reads it.
        code = {
            "ML_ASSETS_START_DATE": "print(p.daily_partitions.start.date())",
            "ML_ASSETS_STEP_RETRY_SECONDS": "print(int(p.storage_retry.delay))",
        }[name]
        code = f"import ml_assets.defs.policies as p; {code}"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == given
    elif name == "ML_ASSETS_STACK_PORT_BASE":
        from ml_assets.stack import PARTS, Stack

        monkeypatch.setenv("ML_ASSETS_DATA_DIR", str(tmp_path / "data"))  # a stack never started
        assert list(Stack.here().ports.values()) == [int(given) + i for i in range(len(PARTS))]
    elif name == "DAGSTER_EVENT_BATCH_SIZE":  # read by Dagster itself, as it hands events over
        import dagster as dg

        with dg.DagsterInstance.ephemeral() as instance:
            assert instance._get_event_batch_size() == int(given)
    else:
        assert name == "MLFLOW_REGISTRY_URI"  # read by MLflow itself; the table lists it to clear it


def test_every_setting_is_cleared_for_the_tests(data_dir):
    from ml_assets_tests.conftest import STORE_VARIABLES

    assert set(STORE_VARIABLES) == set(SETTINGS)
    assert paths.data_dir() == data_dir and paths.dagster_home() == data_dir.parent / "dagster_home"
    fixture_sets = {"ML_ASSETS_DATA_DIR", "DAGSTER_HOME"}
    assert all(settings.value(n) in (None, s.default) for n, s in SETTINGS.items() if n not in fixture_sets)


def test_a_secret_is_never_in_the_resource_config():
    secrets = [s.name for s in SETTINGS.values() if s.secret]
    assert secrets == [
        "ML_ASSETS_ALERT_WEBHOOK", "ML_ASSETS_SERVING_SCORING_TOKEN", "ML_ASSETS_SERVING_OPERATIONS_TOKEN",
    ]  # fmt: skip
    source = (PACKAGE / "defs" / "resources.py").read_text()
    assert 'dg.EnvVar("ML_ASSETS_ALERT_WEBHOOK")' in source
    # The tokens are the scoring service's alone: no resource, no Dagster config ever holds them.
    naming = {p for p in PACKAGE.rglob("*.py") if "_TOKEN" in p.read_text()}
    assert naming == {PACKAGE / "lib" / "settings.py", PACKAGE / "serving" / "auth.py"}, naming


def test_replacing_the_environment_writes_only_the_variables_that_differ(monkeypatch):
    """settings.replace_environment (a forked process's environment, every test's put back) adds,
    changes and unsets only what differs: a variable unset and added back moves the C environment's
    array under the native threads reading it (see its docstring). Counted on the process's own
    putenv and unsetenv, which it still calls; a child process inherits the result."""
    monkeypatch.setenv("ML_ASSETS_TEST_KEPT", "same")
    monkeypatch.setenv("ML_ASSETS_TEST_CHANGED", "before")
    monkeypatch.setenv("ML_ASSETS_TEST_REMOVED", "x")
    target = {k: v for k, v in os.environ.items() if k != "ML_ASSETS_TEST_REMOVED"}
    target |= {"ML_ASSETS_TEST_CHANGED": "after", "ML_ASSETS_TEST_ADDED": "new"}
    written = []

    def recorded(call: str):
        real = getattr(os, call)

        def write(key, *value):
            written.append((call, os.fsdecode(key)))
            real(key, *value)

        return write

    for call in ("putenv", "unsetenv"):
        monkeypatch.setattr(os, call, recorded(call))
    settings.replace_environment(target)
    assert sorted(written) == [
        ("putenv", "ML_ASSETS_TEST_ADDED"),
        ("putenv", "ML_ASSETS_TEST_CHANGED"),
        ("unsetenv", "ML_ASSETS_TEST_REMOVED"),
    ]
    assert dict(os.environ) == target
    child = subprocess.run(
        [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ours = {k: v for k, v in target.items() if k.startswith("ML_ASSETS_TEST_")}  # kept, changed, added
    assert {k: v for k, v in json.loads(child.stdout).items() if k.startswith("ML_ASSETS_TEST_")} == ours
