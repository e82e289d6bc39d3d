"""The project through the clients people use, on one small world where the whole pipeline ran once
(`python -m ml_assets.run`, what `make run` runs): the Dagster UI in a real browser (Playwright
driving Debian's chromium), Dagster's GraphQL client, and plain MLflow in a fresh venv that has only
the model version's own pinned requirements.

The UI screenshots go to `test-results/real_clients/` (gitignored), replaced on every run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from ml_assets.lib import paths, registry, tables
from ml_assets.lib.evaluation import score_metrics
from ml_assets.lib.gates import GATES
from ml_assets.lib.monitoring import SCORE
from ml_assets_tests.conftest import (
    DAGSTER_YAML,
    STORE_VARIABLES,
    launch_through_graphql,
    root_environ,
    seed_mlflow_store,
)
from ml_assets_tests.serving_support import free_port
from ml_assets_tests.test_definitions import EXPECTED_ASSETS, EXPECTED_CHECKS

BIN = Path(sys.executable).parent
SHOTS = paths.REPO_ROOT / "test-results" / "real_clients"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WORLD = ["--days", "20", "--transactions-per-day", "1000", "--fraud-rate", "0.03"]
# Runs launched through the webserver start at once. Dagster's default coordinator queues them for
# the daemon that `dagster dev` adds; with the webserver alone they would stay QUEUED. No daemon
# also means no sensor acts on the world behind the tests' backs.
INSTANCE_YAML = DAGSTER_YAML + textwrap.dedent("""\
    run_coordinator:
      module: dagster._core.run_coordinator
      class: DefaultRunCoordinator
    """)
# lib/report.py's PLOTS
PLOTS = {"roc", "pr", "calibration", "alert_budget", "scores_challenger", "feature_importance"}
GIVE_UP = 600  # seconds: only so that a hung server or run fails the test instead of stalling it

# README.md's table "group | assets | what the UI shows", and what the browser test checks of each
# row's promises: (words of the row's third cell, the asset whose page must show them, the metadata
# labels that show them). The words must be in the README's cell, so neither side drifts alone.
README_TABLE = "| group | assets | what the UI shows |"
UI_PROMISES = {
    "ingestion": [
        (
            "rows in / ingested / quarantined",
            "raw_transactions",
            ("rows_in", "rows_ingested", "rows_quarantined"),
        ),
        ("duplicates dropped", "raw_transactions", ("duplicates_dropped",)),
        ("Delta version", "raw_transactions", ("delta_version",)),
        ("unknown columns", "raw_transactions", ("unknown_columns",)),
        ("seconds per phase", "raw_transactions", ("seconds_by_phase",)),
    ],
    # The features' promise is their checks: every dbt test (dbt's manifest) on its asset's checks tab.
    "features": [("every dbt test as a check, including the leakage test", "transaction_features", ())],
    "training": [
        ("class balance", "training_set", ("class_balance",)),
        ("the MLflow run link, model version", "fraud_model", ("mlflow_run", "model_version")),
        ("Optuna trials", "fraud_model", ("trials",)),
        ("holdout ROC-AUC / PR-AUC", "fraud_model", ("holdout_roc_auc", "holdout_pr_auc")),
    ],
    "validation": [
        ("challenger vs champion: metrics", "model_validation_report", ("challenger_version", "metrics")),
        ("bootstrap interval of the difference", "model_validation_report", ("difference_ci",)),
        ("worst slices", "model_validation_report", ("worst_slices",)),
        ("plots inline", "model_validation_report", ("plots",)),
        (
            "decision threshold and recall at the alert budget",
            "model_validation_report",
            ("alert_budget", "at_alert_budget"),
        ),
    ],
    "promotion": [
        ("which version replaced which", "deployed_model", ("champion", "replaced")),
        ("who asked, why", "deployed_model", ("actor", "reason")),
    ],
    "monitoring": [
        ("scores per model", "batch_predictions", ("by_model",)),
        ("PSI per feature and for the score (table and plot)", "drift_report", ("psi", "score_psi", "plot")),
        ("per arm", "live_performance", ("by_arm",)),
        (
            "the live alert rate against the budget per arm",
            "live_performance",
            ("alerts_by_arm", "alert_rate_plot"),
        ),
    ],
    # make run feeds the store (serving_state_job); nothing is queued to drain there.
    "serving_state": [
        ("rows upserted into the online store", "online_store_feed", ("rows_upserted", "merchants")),
        ("rows drained, log rows written, rows/s, days touched", "inference_log", ()),
    ],
}


def readme_ui_table() -> dict[str, tuple[list[str], str]]:
    """README.md's UI table: group -> (its assets, in backticks in the second cell; the third cell)."""
    lines = (paths.REPO_ROOT / "README.md").read_text().splitlines()
    start = lines.index(README_TABLE) + 2  # after the header and its separator
    rows = {}
    for line in itertools.takewhile(lambda x: x.startswith("|"), lines[start:]):
        group, assets, shows = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows[group] = (re.findall(r"`([^`]+)`", assets), shows)
    return rows


def dbt_tests() -> dict[str, set[str]]:
    """Every dbt test in the parsed project (dbt's manifest), by the model whose checks it is."""
    from ml_assets.lib.dbt_project import DBT_PROJECT_DIR

    manifest = json.loads((DBT_PROJECT_DIR / "target" / "manifest.json").read_text())
    out: dict[str, set[str]] = {}
    for node in manifest["nodes"].values():
        if node["resource_type"] == "test":
            # A generic test is attached to its model; a singular one names it (meta.dagster.ref).
            attached = (
                node.get("attached_node") or f"model.{node['config']['meta']['dagster']['ref']['name']}"
            )
            out.setdefault(attached.rsplit(".", 1)[-1], set()).add(node["name"])
    return out


def test_the_readme_ui_table_is_the_location_and_the_promises_are_in_it():
    """What the browser test holds the UI to is what README.md says (this runs without a browser)."""
    table = readme_ui_table()
    groups: dict[str, list[str]] = {}
    for key, group in EXPECTED_ASSETS.items():
        groups.setdefault(group, []).append(key)
    # Every group of the location, with exactly its assets (test_definitions holds EXPECTED_ASSETS
    # to the loaded definitions).
    assert {g: sorted(assets) for g, (assets, _) in table.items()} == {
        g: sorted(a) for g, a in groups.items()
    }
    assert set(UI_PROMISES) == set(table)
    for group, promises in UI_PROMISES.items():
        for words, asset, _ in promises:
            assert words in table[group][1], (group, words)
            assert EXPECTED_ASSETS[asset] == group, (group, asset)
    # The ingestion row names its checks, the features row promises every dbt test as a check
    # and names the one that is not dbt's (serving parity).
    ingestion_checks = {
        c.split(":")[1] for c in EXPECTED_CHECKS if EXPECTED_ASSETS[c.split(":")[0]] == "ingestion"
    }
    assert set(re.findall(r"`([^`]+)`", table["ingestion"][1])) == ingestion_checks
    features = {c for c in EXPECTED_CHECKS if EXPECTED_ASSETS[c.split(":")[0]] == "features"}
    parity = "transaction_features:online_features_match_dbt"
    assert {f"{model}:{t}" for model, tests in dbt_tests().items() for t in tests} | {parity} == features
    assert re.findall(r"`([^`]+)`", table["features"][1]) == [parity.split(":")[1]]
    assert "transaction_features:transaction_features_use_only_the_past" in features  # the leakage test


def _env(root: Path) -> dict[str, str]:
    """This process's environment, with every path under `root` (no variable moves one elsewhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_ASSETS_", "MLFLOW_", "DAGSTER_"))}
    return env | {
        "ML_ASSETS_DATA_DIR": str(root),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # as the Makefile does: dbt and dagster
    }


AUDIT = Path(__file__).parent / "audit"  # sitecustomize.py: an audit hook in every process


def _audited_env(root: Path) -> dict[str, str]:
    """What a test run of the pipeline gets when the shell has production's variables (every one of
    deploy/*.env.example, secrets as stand-ins): the tests' own clearing of every setting, the data
    root, and the audit hook of `AUDIT` in every Python process, dbt's included. Per-user caches
    (matplotlib's font list, dbt's user file) and temp files go to folders of the run's own."""
    from ml_assets_tests.test_deploy_config import PRODUCTION, SECRETS

    shell = os.environ | PRODUCTION | {k: f"stand-in-{k}" for k in SECRETS}
    env = {k: v for k, v in shell.items() if k not in STORE_VARIABLES and k != "PYTEST_CURRENT_TEST"}
    scratch = root.parent
    for folder in ("home", "tmp"):
        (scratch / folder).mkdir(exist_ok=True)
    return env | {
        **root_environ(root),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # as the Makefile does: dbt and dagster
        "PYTHONPATH": str(AUDIT),
        "ML_ASSETS_AUDIT_LOG": str(scratch / "audit.jsonl"),
        "ML_ASSETS_AUDIT_ALLOWED": str(scratch),
        "HOME": str(scratch / "home"),
        "TMPDIR": str(scratch / "tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",  # bytecode caches would be writes into the repository
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small simulated world (20 days x ~1,000 transactions) on which `make run`'s pipeline ran:
    ingestion, features, retraining, promotion of the first model, monitoring. It ran with every
    production variable set, under the audit hook (see _audited_env)."""
    root = tmp_path_factory.mktemp("clients") / "data"
    (root / "dagster_home").mkdir(parents=True)
    (root / "dagster_home" / "dagster.yaml").write_text(INSTANCE_YAML)
    seed_mlflow_store(root)
    for args in (["ml_assets.simulate", *WORLD], ["ml_assets.run"]):
        done = subprocess.run(
            [sys.executable, "-m", *args], cwd=paths.REPO_ROOT, env=_audited_env(root), capture_output=True,
            text=True,
        )  # fmt: skip
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return root


def test_with_production_variables_set_the_pipeline_reached_nothing_outside(world):
    """The world's whole pipeline ran with every production variable in its environment: no
    connection left loopback and no file was written outside the run's temp folder. The hook ran
    in every process that matters: the simulator, the pipeline and each dbt invocation."""
    audit = world.parent / "audit.jsonl"
    processes = [json.loads(line)["argv"] for line in Path(f"{audit}.processes").read_text().splitlines()]
    assert ["-m", "ml_assets.run"] in [argv[1:3] for argv in processes]
    assert ["-m", "ml_assets.simulate"] in [argv[1:3] for argv in processes]
    assert any(argv[1].endswith("/dbt") and argv[2] == "build" for argv in processes if len(argv) > 2)
    found = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
    assert found == [], found[:20]


@pytest.fixture
def resources(world, monkeypatch):
    """The location's resources (lake, warehouse, MLflow) on the world, as the runs built them."""
    from ml_assets.defs.resources import build_resources

    for k in list(os.environ):
        if k.startswith(("ML_ASSETS_", "MLFLOW_")):
            monkeypatch.delenv(k)
    for k, v in _env(world).items():
        monkeypatch.setenv(k, v)
    return build_resources()


def _graphql(url: str, query: str, **variables) -> dict:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"


@pytest.fixture(scope="module")
def webserver(world) -> str:
    """`dagster-webserver -w workspace.yaml` on a free loopback port, serving the world; its URL.

    The same workspace `make dev` serves, without the daemon (see INSTANCE_YAML).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = world.parent / "webserver.log"
    with log_path.open("w") as log:
        # Its own process group: the code server it starts, and any run, go down with it.
        server = subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=paths.REPO_ROOT,
            env=_env(world),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + GIVE_UP
        while True:
            assert server.poll() is None, f"the webserver exited:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"the webserver never loaded:\n{log_path.read_text()[-4000:]}"
            try:
                entries = _graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
                if [(e["name"], e["loadStatus"]) for e in entries] == [("ml_assets", "LOADED")]:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium (Playwright's own browser download is not reachable everywhere).

    Under CI (`CI` set, as CI services do) a missing browser fails the test: a green CI run must
    mean the UI was checked. Elsewhere the test skips and says why.
    """
    if not CHROMIUM.exists():
        why = f"no {CHROMIUM}: `make chromium` (part of `make test`) installs it where apt-get can"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; under CI the browser test must run")
        pytest.skip(why)
    return CHROMIUM


def _metadata_row(page, label: str):
    """The row of a metadata table whose key is `label` (values may hold tables of their own)."""
    return page.locator(f"xpath=//tr[td[1][normalize-space()='{label}']]").first


# `chromium` first: without a browser, the test skips before the world and the server are built.
def test_the_ui_shows_every_stage_with_its_checks_and_the_validation_report(chromium, webserver):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    checks: dict[str, list[str]] = {key: [] for key in EXPECTED_ASSETS}
    for check in sorted(EXPECTED_CHECKS):
        key, name = check.split(":")
        checks[key].append(name)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            # Wide enough that the graph, fitted to the screen, draws full asset nodes (names, check
            # counts) rather than the bare boxes it draws when zoomed far out.
            page = browser.new_page(viewport={"width": 3200, "height": 1400})
            # Generous waits: on a loaded 2-core box a tab can take well over expect's default 5 s.
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            # A new browser is invited to join the community first: skip that whenever it shows.
            page.add_locator_handler(
                page.get_by_text("Join the Dagster community"),
                lambda: page.get_by_role("button", name="Skip").click(),
            )

            # Global lineage, every group expanded: each asset, and its number of checks.
            page.goto(f"{webserver}/asset-groups")
            expect(page.get_by_text("Global asset lineage")).to_be_visible()
            expect(page.get_by_text("validation", exact=True).first).to_be_visible()
            page.keyboard.press("Alt+E")  # "Expand all groups" (⌥E in the graph's context menu)
            for key, names in checks.items():
                expect(page.get_by_text(key, exact=True)).to_be_visible()
                # A node links to its checks tab, with "<passed> / <all> Passed", iff it has checks.
                link = page.locator(f'a[href="/assets/{key}?view=checks"]')
                if names:
                    expect(link).to_have_text(re.compile(rf"\d+ / {len(names)} Passed"))
                else:
                    expect(link).to_have_count(0)
            # The first model passed every gate: make run promoted it.
            expect(page.locator('a[href="/assets/model_validation_report?view=checks"]')).to_have_text(
                f"{len(GATES)} / {len(GATES)} Passed"
            )
            page.screenshot(path=SHOTS / "lineage.png")

            # README's table, row by row: each group's page lists exactly the row's assets ...
            page.set_viewport_size({"width": 1600, "height": 1000})
            table = readme_ui_table()
            for group, (assets, _) in table.items():
                page.goto(f"{webserver}/locations/ml_assets/asset-groups/{group}/list")
                expect(page.get_by_text("Asset Group in")).to_be_visible()
                listed = page.locator('a[href^="/assets/"]')
                for key in assets:
                    expect(page.locator(f'a[href="/assets/{key}"]')).to_be_visible()
                expect(listed).to_have_count(len(assets))
                page.screenshot(path=SHOTS / f"group_{group}.png", full_page=True)
            # ... and each asset's page shows what the row promises, in its latest materialization's
            # metadata (the validation report's are checked on its events below).
            labels: dict[str, list[str]] = {}
            for promises in UI_PROMISES.values():
                for _, key, names in promises:
                    labels.setdefault(key, []).extend(names)
            for key, names in labels.items():
                if names and key != "model_validation_report":
                    page.goto(f"{webserver}/assets/{key}")
                    expect(page.get_by_text("Latest materialization")).to_be_visible()
                    for name in names:
                        expect(_metadata_row(page, name)).to_be_visible()
                    page.screenshot(path=SHOTS / f"asset_{key}.png", full_page=True)
                    if key == "deployed_model":  # make run's promotion, asked for by the sensor
                        expect(_metadata_row(page, "actor")).to_contain_text("model_promotion_sensor")

            # Each asset's checks tab lists its checks (long names are cut in the middle; the full
            # name is the item's title).
            for key, names in checks.items():
                if names:
                    page.goto(f"{webserver}/assets/{key}?view=checks")
                    expect(page.get_by_text(f"Checks ({len(names)})")).to_be_visible()
                    for name in names:
                        expect(page.get_by_title(name, exact=True)).to_be_visible()
                    page.screenshot(path=SHOTS / f"checks_{key}.png")

            # The validation report's latest materialization, and its plots (Markdown with PNGs).
            page.goto(f"{webserver}/assets/model_validation_report?view=events")
            expect(page.get_by_text("Materialized in run")).to_be_visible()
            verdict = page.get_by_role("row").filter(has=page.get_by_text("verdict", exact=True))
            expect(verdict).to_contain_text("passed")
            for name in labels["model_validation_report"]:
                expect(_metadata_row(page, name)).to_be_visible()
            page.screenshot(path=SHOTS / "validation_report_metadata.png", full_page=True)
            plots_row = page.get_by_role("row").filter(has=page.get_by_text("plots", exact=True))
            plots_row.get_by_text("[Show Markdown]").click()
            dialog = page.get_by_role("dialog")
            expect(dialog.locator("img")).to_have_count(len(PLOTS))
            for name in sorted(PLOTS):
                image = dialog.get_by_role("img", name=name, exact=True)
                expect(image).to_be_visible()
                image.scroll_into_view_if_needed()
                # Decoded, not a broken image: the data URI holds a real PNG.
                assert image.evaluate("i => i.complete && i.naturalWidth") > 100, name
                image.screenshot(path=SHOTS / f"validation_report_{name}.png")
        finally:
            browser.close()


ASSET_MATERIALIZATIONS = """
query ($key: AssetKeyInput!, $partition: String!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        runId
        partition
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}"""


def _latest(url: str, key: str, partition: str) -> dict:
    """The latest materialization of one partition: run id and integer metadata, through GraphQL."""
    data = _graphql(url, ASSET_MATERIALIZATIONS, key={"path": [key]}, partition=partition)
    (event,) = data["assetOrError"]["assetMaterializations"]
    assert event["partition"] == partition
    ints = {e["label"]: e["intValue"] for e in event["metadataEntries"] if "intValue" in e}
    return {"run_id": event["runId"], **ints}


def test_a_job_launched_through_graphql_runs_and_its_materializations_read_back(webserver, resources):
    from dagster import DagsterRunStatus

    day = "2026-01-10"
    before = {key: _latest(webserver, key, day) for key in ("raw_transactions", "raw_labels")}
    run_id, status = launch_through_graphql(
        httpx.URL(webserver).port, "ingestion_job", {"dagster/partition": day}, GIVE_UP
    )
    assert status == DagsterRunStatus.SUCCESS

    for key, old in before.items():
        new = _latest(webserver, key, day)
        assert new["run_id"] == run_id and old["run_id"] != run_id
        # Re-ingesting a day replaces exactly that day: the same files give the same rows.
        for stat in ("rows_in", "rows_ingested", "rows_quarantined", "duplicates_dropped", "files_read"):
            assert new[stat] == old[stat], (key, stat)
        assert new["rows_in"] == new["rows_ingested"] + new["rows_quarantined"] + new["duplicates_dropped"]
        assert new["dagster/row_count"] == new["rows_ingested"] > 0
        assert new["delta_version"] > old["delta_version"]
    # ... and the metadata tells the truth about the table.
    bronze = resources["lake"].scan(tables.BRONZE["transactions"])
    rows = bronze.filter(pl.col("event_date") == date.fromisoformat(day)).select(pl.len()).collect().item()
    assert rows == before["raw_transactions"]["rows_ingested"]


# What a user of the registry runs: nothing of this project, only MLflow and the model's own pinned
# requirements (a fresh venv made from its requirements.txt), and the registry's address. The input
# is the feed's own files, as text, then the input example logged with the model.
SCORE_WITH_PLAIN_MLFLOW = """
import importlib.util, json, sys
import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model("models:/fraud_detector@champion")
files = json.load(sys.stdin)
landing = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in files], ignore_index=True)
out = model.predict(landing)
example = model.input_example
assert example is not None, "the version has no input example"
without_device = example.drop(columns="device_id")  # optional in the signature
print(json.dumps({
    "run_id": model.metadata.run_id, "rows": landing.shape[0], "scores": out.to_dict("list"),
    "example": example.to_dict("records"), "example_scores": model.predict(example).to_dict("records"),
    "without_device": model.predict(without_device).to_dict("records"),
    "modules": sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)),
    "dagster": importlib.util.find_spec("dagster") is not None,
}))
"""


def _fresh_venv(requirements: Path, where: Path) -> Path:
    """A new venv with only `requirements` installed (uv, from its cache when warm); its python.

    uv runs from the interpreter this venv was made from (the Makefile installs uv there); the new
    venv gets the same CPython, the version the model was logged with.
    """
    base = Path(sys.base_prefix) / "bin" / "python3"
    venv = where / "venv"
    python = venv / "bin" / "python"
    for args in (
        ["venv", "--quiet", "--python", str(base), str(venv)],
        ["pip", "install", "--quiet", "--python", str(python), "-r", str(requirements)],
    ):
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        done = subprocess.run([str(base), "-m", "uv", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"uv {args[0]} failed:\n{done.stderr[-4000:]}"
    return python


def test_the_champion_scores_landing_files_with_plain_mlflow_in_a_fresh_venv(resources, tmp_path):
    from mlflow.artifacts import download_artifacts
    from mlflow.models import get_model_info

    from ml_assets.lib import tracking
    from ml_assets.lib.contract import TRANSACTIONS
    from ml_assets_tests.conftest import TX_COLUMNS

    mlflow = resources["mlflow"]
    client = mlflow.client()
    champion = registry.alias_version(client, mlflow.registered_model_name, registry.CHAMPION)
    assert mlflow.registered_model_name == "fraud_detector" and champion is not None
    version_uri = f"models:/{mlflow.registered_model_name}/{champion}"
    tracking.use_store(mlflow.tracking_uri)

    # The version says what it takes: the landing contract's transaction columns, as text, every one
    # required but device_id; per row out, its id, its score and the contract's reasons.
    info = get_model_info(version_uri)
    inputs = info.signature.inputs.to_dict()
    assert [c["name"] for c in inputs] == TX_COLUMNS == list(TRANSACTIONS.columns)
    assert {c["type"] for c in inputs} == {"string"}
    assert [c["name"] for c in inputs if not c["required"]] == ["device_id"]
    outputs = [(c["name"], c["type"]) for c in info.signature.outputs.to_dict()]
    assert outputs == [
        ("transaction_id", "string"), ("score", "double"), ("problems", "string"), ("decision", "string")
    ]  # fmt: skip
    assert info.saved_input_example_info and info.saved_input_example_info["type"] == "dataframe"
    # ... and what it needs: exactly the pins the project logs, nothing inferred, nothing more.
    requirements = Path(download_artifacts(f"{version_uri}/requirements.txt", dst_path=str(tmp_path)))
    assert requirements.read_text().split() == tracking.pip_requirements()
    python = _fresh_venv(requirements, tmp_path)

    # The latest day whose labels have all arrived, with every transaction's latest label.
    labelled = resources["warehouse"].query(
        """
        with labels as (
            select transaction_id, arg_max(is_fraud, labeled_ts) as is_fraud from stg_labels group by 1
        ), day as (
            select max(event_date) as d from transaction_features join labels using (transaction_id)
        )
        select transaction_id, is_fraud, event_date
        from transaction_features join labels using (transaction_id)
        where event_date = (select d from day)
        """
    )
    day = labelled["event_date"][0]
    files = sorted(str(f) for f in (paths.landing_dir() / "transactions" / f"date={day}").glob("*.csv*"))
    assert files

    # Only that venv's python, in an empty directory, with the registry's address and nothing else
    # (no PYTHONPATH, no venv of this project on PATH).
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    done = subprocess.run(
        [str(python), "-c", SCORE_WITH_PLAIN_MLFLOW],
        input=json.dumps(files),
        env={
            "MLFLOW_TRACKING_URI": mlflow.tracking_uri,
            "PATH": f"{python.parent}:/usr/bin:/bin",
            "HOME": str(run_dir),
        },
        cwd=run_dir,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["run_id"] == client.get_model_version(mlflow.registered_model_name, champion).run_id
    # Nothing of this repository was imported: the code is the model's own copy, in its artifacts.
    assert not out["dagster"]
    assert not [m for m in out["modules"] if m.startswith(str(paths.REPO_ROOT))]
    model_dir = client.get_model_version_download_uri(mlflow.registered_model_name, champion)
    ours = [m for m in out["modules"] if "/ml_assets/" in m]
    assert ours and all(m.startswith(f"{model_dir}/code/ml_assets/") for m in ours), ours
    # The input example is a landing row, and it scores (device_id left out too: it is optional).
    (example,) = out["example"]
    assert list(example) == TX_COLUMNS
    for scored_example in (out["example_scores"], out["without_device"]):
        (row,) = scored_example
        assert row["transaction_id"] == example["transaction_id"] and row["problems"] == ""
        assert 0 < row["score"] < 1
    scored = pl.DataFrame(out["scores"], schema={"transaction_id": pl.String, "score": pl.Float64,
                                                  "problems": pl.String, "decision": pl.String})  # fmt: skip
    assert scored.height == out["rows"]

    # Every row ingestion took is scored, with the very score the pipeline's batch scoring gave it
    # from dbt's features: the model computes the same features from the landing row and the lake.
    bronze = (
        resources["lake"]
        .scan(tables.BRONZE["transactions"])
        .filter(pl.col("event_date") == day)
        .select("transaction_id")
        .collect()
    )
    batch = (
        resources["lake"]
        .scan(tables.BATCH_PREDICTIONS)
        .filter(
            pl.col("alias") == registry.CHAMPION,
            pl.col("transaction_id").is_in(bronze["transaction_id"].to_list()),
        )
        .select("transaction_id", "model_version", SCORE)
        .collect()
    )
    assert batch.height == bronze.height > 500 and set(batch["model_version"]) == {champion}
    both = batch.join(scored, on="transaction_id", how="left")
    assert both["problems"].to_list() == [""] * both.height
    np.testing.assert_allclose(both["score"].to_numpy(), both[SCORE].to_numpy(), rtol=1e-9, atol=1e-12)
    # ... and decided by the version's own threshold, which it found in the registry at load.
    tags = client.get_model_version(mlflow.registered_model_name, champion).tags
    threshold = float(tags[registry.TAG_DECISION_THRESHOLD])
    review = both["score"] >= threshold
    assert both["decision"].to_list() == ["review" if r else "approve" for r in review]
    # ... and it ranks that day's frauds as the pipeline's model does.
    truth = labelled.join(scored, on="transaction_id")
    assert score_metrics(truth["is_fraud"].to_numpy(), truth["score"].to_numpy())["roc_auc"] > 0.8

    # A row the contract refuses gets no score and the contract's reasons; ingestion quarantined it.
    refused = scored.filter(pl.col("problems") != "")
    assert refused["score"].is_nan().all() and refused["decision"].is_null().all()
    assert not refused["transaction_id"].is_in(bronze["transaction_id"].to_list()).any()
    quarantined = (
        resources["lake"]
        .scan(tables.QUARANTINE["transactions"])
        .filter(pl.col("event_date") == day, pl.col("level") == "row")
        .select(pl.col("raw").str.json_path_match("$.transaction_id").alias("transaction_id"), "reasons")
        .collect()
    )
    assert refused.height > 0  # the feed breaks the contract now and then (bad_row_rate)
    for transaction_id, problems in refused.select("transaction_id", "problems").iter_rows():
        reasons = quarantined.filter(pl.col("transaction_id") == transaction_id)["reasons"].to_list()
        assert reasons and set(problems.split("; ")) <= set(reasons[0]), (transaction_id, problems, reasons)
