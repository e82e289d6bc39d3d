"""The MLflow model registry contract (README: "Training, validation, promotion"): model name, aliases,
version tags. No Dagster."""

from __future__ import annotations

import math
import subprocess
from functools import cache

from ml_assets.lib import paths
from ml_assets.lib.settings import SETTINGS

MODEL_NAME = SETTINGS["ML_ASSETS_MODEL_NAME"].default  # the default; ML_ASSETS_MODEL_NAME moves it
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
CANARY, SHADOW = "canary", "shadow"
ALIASES = (CHAMPION, PREVIOUS_CHAMPION, CHALLENGER, CANARY, SHADOW)

# Tags every model version carries.
TAG_DAGSTER_RUN = "dagster_run_id"
TAG_CODE_VERSION = "code_version"
TAG_TRAINING_SET_VERSION = "training_set_delta_version"
TAG_BRONZE_VERSIONS = "bronze_delta_versions"
TAG_WINDOWS = "training_window"
TAG_PARAMS = "lightgbm_params"
TAG_BEST_ITERATION = "best_iteration"
TAG_VERDICT = "validation_verdict"  # pending, passed, failed
TAG_VERDICT_REASONS = "validation_reasons"
# The score at or above which a transaction goes to review (ml_assets.lib.evaluation), fitted by the
# validation report on the version's holdout to meet the alert budget, and that budget (a share).
# The service, the registered pyfunc and monitoring read them.
TAG_DECISION_THRESHOLD = "decision_threshold"
TAG_ALERT_BUDGET = "decision_alert_budget"
# The version's input contract: its features in order (comma-separated), and the hash of the dbt
# feature model they were computed by (ml_assets.lib.features); the whole contract, types included,
# is the artifact CONTRACT_FILE of its run. Every consumer builds the version's input from this list.
TAG_FEATURE_COLUMNS = "feature_columns"
TAG_FEATURES_DBT_HASH = "features_dbt_hash"
CONTRACT_FILE = "input_contract.json"
# Tags of a retraining run that the retraining sensor asked for (as of the newest monitored day, and
# why), copied onto the version it registers: the record of that request that outlives the Dagster
# instance, and the sensor's cooldown counts from it.
TAG_RETRAIN_AS_OF = "retrain_as_of"
TAG_RETRAIN_REASON = "retrain_reason"
RETRAIN_TAGS = (TAG_RETRAIN_AS_OF, TAG_RETRAIN_REASON)


@cache
def code_version() -> str:
    """The git commit the code runs from ('unknown' outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=paths.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def alias_version(client, name: str, alias: str) -> str | None:
    """The version number an alias points to, or None if the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if "not found" in str(e).lower() or "RESOURCE_DOES_NOT_EXIST" in str(e):
            return None
        raise


def decision_threshold(tags: dict[str, str] | None) -> float | None:
    """A version's decision threshold (its `decision_threshold` tag), or None when it has none
    or the tag is not a finite number: such a version scores, and decides nothing."""
    try:
        value = float((tags or {})[TAG_DECISION_THRESHOLD])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def thresholds(client, name: str, versions: list[str]) -> dict[str, tuple[float, float]]:
    """Version -> (decision threshold, alert budget) from the registry's tags, for the versions
    that have both (a version from before thresholds has none: its batch rows stay undecided)."""
    out = {}
    for version in versions:
        tags = client.get_model_version(name, version).tags
        threshold = decision_threshold(tags)
        try:
            budget = float(tags[TAG_ALERT_BUDGET])
        except (KeyError, ValueError):
            continue
        if threshold is not None:
            out[version] = (threshold, budget)
    return out


def model_columns(tags: dict[str, str], booster) -> list[str]:
    """A version's own feature list, the one its input is built from: its `feature_columns` tag,
    which must be the booster's own feature names (a version from before the tag has the booster's).
    A version whose two disagree is broken, and raises rather than score the wrong columns."""
    names = list(booster.feature_name())
    tagged = tags.get(TAG_FEATURE_COLUMNS)
    if tagged is None:
        return names
    columns = tagged.split(",")
    if columns != names:
        raise ValueError(f"the {TAG_FEATURE_COLUMNS} tag {columns} is not the booster's features {names}")
    return columns


def version_columns(
    client, name: str, version: str, tracking_uri: str | None = None, tags: dict | None = None
) -> list[str]:
    """A version's own feature list from the registry: its `feature_columns` tag (a version from
    before the tag: its booster's feature names, which needs `tracking_uri` to load it)."""
    tags = client.get_model_version(name, version).tags if tags is None else tags
    if TAG_FEATURE_COLUMNS in tags:
        return tags[TAG_FEATURE_COLUMNS].split(",")
    from ml_assets.lib import tracking

    return list(tracking.load_booster(tracking_uri, name, version).feature_name())


def deployed_columns(client, name: str, tracking_uri: str) -> dict[str, tuple[str, list[str]]]:
    """alias -> (version, its feature list) for every alias set: what must stay computable, the
    rollback target (previous_champion) included. A version its validation failed is left out: it
    is never promoted (a challenger the gates blocked)."""
    out = {}
    for alias in ALIASES:
        version = alias_version(client, name, alias)
        if version is None:
            continue
        tags = client.get_model_version(name, version).tags
        if tags.get(TAG_VERDICT) != "failed":
            out[alias] = (version, version_columns(client, name, version, tracking_uri, tags))
    return out


def not_computable(needed: dict[str, tuple[str, list[str]]], computed: list[str]) -> list[str]:
    """What removing features would break: one line per alias whose version needs a feature that
    `computed` (the features after the change) lacks. Empty: nothing deployed loses an input."""
    have = set(computed)
    return [
        f"{alias} (v{version}) needs {', '.join(lost)}"
        for alias, (version, columns) in needed.items()
        if (lost := [c for c in columns if c not in have])
    ]
