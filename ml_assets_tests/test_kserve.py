"""The KServe manifest rendered from a real MLflow registry (small real LightGBM models, SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ml_assets import kserve
from ml_assets.lib.serving_config import CANARY_SHARE_TAG, STRATEGY_TAG
from ml_assets_tests.serving_support import shared_registry


@pytest.fixture(scope="module")
def registry():
    return shared_registry()


def _artifacts_of(client, name: str, version: str) -> Path:
    """The folder holding the version's MLmodel, checked to be the model the version was made from."""
    uri = client.get_model_version_download_uri(name, version)
    model_id = client.get_model_version(name, version).source.removeprefix("models:/")
    folder = Path(uri.removeprefix("file://"))
    assert (
        model_id in folder.parts
        and "python_function" in yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
    )
    return folder


def _render(registry, name: str, tmp_path) -> tuple[dict, list[str], dict]:
    out = tmp_path / "isvc.yaml"
    doc, problems = kserve.render(registry.client(), name, out, namespace="ml-assets")
    written = yaml.safe_load(out.read_text())
    assert written == doc  # the file is the manifest, comments aside
    return doc, problems, doc["spec"]["predictor"]


def test_champion_alone_is_an_mlflow_model_on_mlserver(registry, tmp_path):
    name = registry.register(
        aliases={"champion": 2, "previous_champion": 1}, tags={STRATEGY_TAG: "blue_green"}
    )
    doc, problems, predictor = _render(registry, name, tmp_path)

    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert doc["metadata"]["name"] == name.replace("_", "-") and doc["metadata"]["namespace"] == "ml-assets"
    assert doc["metadata"]["annotations"]["ml-assets/champion-version"] == "2"
    assert "canaryTrafficPercent" not in predictor
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "mlflow"}
    assert (model["runtime"], model["protocolVersion"]) == ("kserve-mlserver", "v2")
    assert Path(model["storageUri"]) == _artifacts_of(registry.client(), name, "2")
    # The test store keeps artifacts in a local folder, which KServe could not download.
    assert any("can't fetch" in p for p in problems)


def test_canary_is_the_predictor_with_its_share_and_the_champion_is_the_previous_revision(registry, tmp_path):
    name = registry.register(
        aliases={"champion": 1, "canary": 3}, tags={STRATEGY_TAG: "canary", CANARY_SHARE_TAG: "0.25"}
    )
    doc, _, predictor = _render(registry, name, tmp_path)

    client = registry.client()
    assert predictor["canaryTrafficPercent"] == 25
    assert Path(predictor["model"]["storageUri"]) == _artifacts_of(client, name, "3")
    annotations = doc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"
    assert (annotations["ml-assets/champion-version"], annotations["ml-assets/canary-version"]) == ("1", "3")
    assert Path(annotations["ml-assets/champion-storage-uri"]) == _artifacts_of(client, name, "1")


@pytest.mark.parametrize(
    ("aliases", "tags", "problem"),
    [
        ({"champion": 1}, {STRATEGY_TAG: "canary"}, "without a 'canary' alias"),
        ({"champion": 1, "shadow": 2}, {STRATEGY_TAG: "shadow"}, "strategy shadow"),
    ],
)
def test_what_kserve_cannot_split_serves_the_champion_alone(registry, tmp_path, aliases, tags, problem):
    name = registry.register(aliases=aliases, tags=tags)
    doc, problems, predictor = _render(registry, name, tmp_path)

    assert (
        "canaryTrafficPercent" not in predictor
        and "ml-assets/canary-version" not in doc["metadata"]["annotations"]
    )
    assert Path(predictor["model"]["storageUri"]) == _artifacts_of(registry.client(), name, "1")
    assert any(problem in p for p in problems), problems


def test_the_command_reads_the_environments_registry(registry, tmp_path, monkeypatch, capsys):
    name = registry.register(aliases={"champion": 2, "canary": 1}, tags={STRATEGY_TAG: "canary"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    out = tmp_path / "deploy" / "kserve" / "isvc.yaml"

    assert kserve.main(["--model-name", name, "--output", str(out), "--service-account", "kserve-s3"]) == 0
    text = out.read_text()
    assert text.startswith("# Rendered by `python -m ml_assets.kserve`")
    predictor = yaml.safe_load(text)["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10  # the default canary share
    assert predictor["serviceAccountName"] == "kserve-s3"

    unserved = registry.register(aliases={})
    assert kserve.main(["--model-name", unserved, "--output", "-"]) == 1
    assert "no 'champion' alias" in capsys.readouterr().err


def _expanded(env: list[dict], secret: dict[str, str]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: each secretKeyRef read from `secret`,
    then each `$(NAME)` in a value replaced by a variable defined earlier in the list."""
    import re

    out: dict[str, str] = {}
    for var in env:
        if "valueFrom" in var:
            out[var["name"]] = secret[var["valueFrom"]["secretKeyRef"]["key"]]
        else:
            out[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m[1], m[0]), var["value"])
    return out


def test_the_predictor_gets_the_online_stores_address_and_its_credentials_from_the_secret(
    registry, tmp_path, monkeypatch
):
    """The store's URL holds a user name and a password: the manifest names the store's host,
    port and database, and refers to the Secret for the rest (the code location's, whose keys
    deploy/ documents); expanded as Kubernetes does, the pod's ML_ASSETS_ONLINE_STORE is the URL."""
    from ml_assets_tests.test_deploy_config import PRODUCTION, SECRETS

    name = registry.register(aliases={"champion": 2})
    url = "redis://scorer-acl:pa55-w0rd@redis.ml-platform.svc.cluster.local:6380/2"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("ML_ASSETS_ONLINE_STORE", url)  # as production's code location has it
    out = tmp_path / "isvc.yaml"
    assert kserve.main(["--model-name", name, "--output", str(out)]) == 0

    text = out.read_text()
    assert "pa55-w0rd" not in text and "scorer-acl" not in text
    env = yaml.safe_load(text)["spec"]["predictor"]["model"]["env"]
    refs = [v["valueFrom"]["secretKeyRef"] for v in env if "valueFrom" in v]
    assert {r["name"] for r in refs} == {PRODUCTION["ML_ASSETS_ENV_SECRET"]}
    assert {r["key"] for r in refs} == {"ONLINE_STORE_USERNAME", "ONLINE_STORE_PASSWORD"} <= SECRETS.keys()
    [store] = [v for v in env if v["name"] == "ML_ASSETS_ONLINE_STORE"]
    assert store["value"].endswith("@redis.ml-platform.svc.cluster.local:6380/2")
    pod = _expanded(env, {"ONLINE_STORE_USERNAME": "scorer-acl", "ONLINE_STORE_PASSWORD": "pa55-w0rd"})
    assert pod["ML_ASSETS_ONLINE_STORE"] == url

    # A password alone (Redis AUTH without ACL users), and another Secret.
    doc, problems = kserve.render(
        registry.client(),
        name,
        None,
        online_store="redis://:only-pw@10.0.0.7:6379/0",
        store_secret="redis-auth",
    )
    env = doc["spec"]["predictor"]["model"]["env"]
    assert [v["name"] for v in env] == ["ONLINE_STORE_PASSWORD", "ML_ASSETS_ONLINE_STORE"]
    assert env[0]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    assert _expanded(env, {"ONLINE_STORE_PASSWORD": "only-pw"})["ML_ASSETS_ONLINE_STORE"] == (
        "redis://:only-pw@10.0.0.7:6379/0"
    )
    assert not any("online store" in p for p in problems)


@pytest.mark.parametrize(
    ("store", "problem"),
    [(None, "no online store given"), ("sqlite:////var/lib/online.db", "is one host's, not the pods'")],
)
def test_without_a_shared_store_the_predictor_reads_bronze_and_the_manifest_says_so(
    registry, tmp_path, store, problem
):
    name = registry.register(aliases={"champion": 1})
    doc, problems = kserve.render(registry.client(), name, tmp_path / "isvc.yaml", online_store=store)
    assert "env" not in doc["spec"]["predictor"]["model"]
    assert any(problem in p for p in problems), problems
    assert f"# note: {next(p for p in problems if problem in p)}" in (tmp_path / "isvc.yaml").read_text()
