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
