"""Logging a LightGBM model to MLflow and registering it, as the registry contract says. No Dagster."""

from __future__ import annotations

import functools
import json
import tempfile
from importlib.metadata import version
from pathlib import Path

from ml_assets.lib import registry, settings

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # ml_assets/: logged with every model
BOOSTER_FILE = "booster.txt"  # the booster, in LightGBM's text format, under the model's artifacts/


def pip_requirements() -> list[str]:
    """Pinned explicitly: letting MLflow infer them costs ~20 s per model here. What the logged
    model imports when it loads (ml_assets.serving.mlflow_model): the booster, polars and
    deltalake to read its features' history from the lake, and redis for when it is loaded with
    an online store on Redis (the service's live history)."""
    packages = ("lightgbm", "numpy", "pandas", "polars", "deltalake", "pyarrow", "mlflow", "redis")
    return [f"{pkg}=={version(pkg)}" for pkg in packages]


def use_store(tracking_uri: str) -> None:
    """Point MLflow's process-wide tracking and registry URIs at one store.

    MLflow's fluent API (`models:/` loads, `register_model`) resolves the store through both, and
    `set_tracking_uri` even exports MLFLOW_TRACKING_URI: set them right before each use.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


@functools.lru_cache(maxsize=16)
def load_booster(tracking_uri: str, model_name: str, version: str):
    """The LightGBM booster of `model_name` version `version` in the store at `tracking_uri`.

    Always by version number, never by alias: an alias may move between reading and loading. Only
    the booster's file is fetched: the pipeline scores its own features, not landing rows.
    Cached per (store, name, version): a registered version's artifacts never change, and each
    load costs a registry query and a download. The store is named explicitly, so loading leaves
    MLflow's process-wide URIs alone. Callers only predict with the booster, never change it.
    """
    import lightgbm as lgb
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_dir = client.get_model_version_download_uri(model_name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_dir}/artifacts/{BOOSTER_FILE}",
            dst_path=tmp,
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
        )
        return lgb.Booster(model_file=local)


def log_iteration_metrics(client, run_id: str, history: dict[str, list[float]]) -> None:
    """The validation curve of the final model, one point per boosting iteration, in one batch."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"validation_{name}", float(v), now, step)
        for name, values in history.items()
        for step, v in enumerate(values, start=1)
    ]
    for i in range(0, len(metrics), 1000):  # the store's batch limit
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def log_model(booster, lake_uri: str | None, columns: list[str]) -> str:
    """Log the booster in the active run as the registry's model, and return its model URI.
    `columns`: its features, in order (the pyfunc builds its input from them).

    The model is ml_assets.serving.mlflow_model's: plain `mlflow.pyfunc` scores landing-contract
    rows with it, computing their features from the lake at `lake_uri`. The package's code travels
    with it, so loading it needs only the pip requirements, not this project.
    """
    import mlflow
    import pandas as pd

    from ml_assets.serving import mlflow_model

    # MLflow loads the logged model and scores its input example before it returns. In a process
    # where ML_ASSETS_ONLINE_STORE is set (a run pod, the stack's runs), the pyfunc would score the
    # example through the live online store: it would join a card's history, and the inference log
    # as a decision of arm "pyfunc" (the stack's end-to-end test found it there).
    with tempfile.TemporaryDirectory() as tmp, settings.unset("ML_ASSETS_ONLINE_STORE"):
        booster_file = Path(tmp) / BOOSTER_FILE
        booster.save_model(str(booster_file))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PACKAGE_DIR / "serving" / "mlflow_model_entry.py"),
            artifacts={"booster": str(booster_file)},
            code_paths=[str(PACKAGE_DIR)],
            model_config=mlflow_model.model_config(lake_uri, columns),
            signature=mlflow_model.signature(),
            input_example=pd.DataFrame([mlflow_model.EXAMPLE]),
            pip_requirements=pip_requirements(),
        )
    return info.model_uri


def register(client, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
    """A new version of `name` from `model_uri`, with the contract's tags; returns its number.

    Always use this number: "the latest version" may be someone else's by the time you look.
    """
    try:
        client.get_registered_model(name)
    except Exception:  # not created yet (the store's exception type varies by backend)
        client.create_registered_model(name, description="Card fraud score (LightGBM), from ml_assets.")
    # `models:/<id>` (what log_model returns) names a logged model: a tracking server refuses it as
    # a version's source unless the version names that model too (a SQLite store doesn't check).
    logged = model_uri.removeprefix("models:/")
    model_id = logged if model_uri.startswith("models:/") and "/" not in logged else None
    mv = client.create_model_version(name, model_uri, run_id=run_id, tags=tags, model_id=model_id)
    return str(mv.version)


def model_tags(dagster_run_id: str, training_set_version: int, bronze_versions: dict, windows: dict,
               params: dict, best_iteration: int) -> dict[str, str]:  # fmt: skip
    return {
        registry.TAG_DAGSTER_RUN: dagster_run_id,
        registry.TAG_CODE_VERSION: registry.code_version(),
        registry.TAG_TRAINING_SET_VERSION: str(training_set_version),
        registry.TAG_BRONZE_VERSIONS: json.dumps(bronze_versions),
        registry.TAG_WINDOWS: json.dumps(windows),
        registry.TAG_PARAMS: json.dumps(params, sort_keys=True),
        registry.TAG_BEST_ITERATION: str(best_iteration),
        registry.TAG_VERDICT: "pending",
    }
