"""The MLflow model registry contract (README: "Training, validation, promotion"): model name, aliases,
version tags. No Dagster."""

from __future__ import annotations

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
