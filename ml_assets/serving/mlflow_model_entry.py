"""What MLflow runs to load the registered model (models from code, no pickle): `LandingScorer`.

Only MLflow's loader runs this file (and it has imported mlflow already); nothing in the project
imports it. The scoring itself is in ml_assets.serving.mlflow_model.
"""

import logging
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import set_model

from ml_assets.lib import paths
from ml_assets.lib.settings import value
from ml_assets.serving.features import FeatureParams
from ml_assets.serving.mlflow_model import registered_threshold, score_landing_rows

log = logging.getLogger(__name__)


class LandingScorer(mlflow.pyfunc.PythonModel):
    """The fraud model on landing-contract transactions (see the module's docstring)."""

    def load_context(self, context):
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=context.artifacts["booster"])
        config = context.model_config
        self.params = FeatureParams(**config["feature_params"])
        self.lake_uri = config.get("lake_uri")
        self.model_version = str(config.get("model_version") or "unregistered")
        # The version's own threshold: given at load, or its registry tag (the model's directory
        # holds `artifacts/booster.txt` and its MLmodel).
        given = config.get("decision_threshold")
        if given is not None:
            self.threshold, found = float(given), "given at load"
        else:
            self.threshold, found = registered_threshold(str(Path(context.artifacts["booster"]).parents[1]))
        if self.threshold is None:
            log.warning("no decision threshold (%s): decisions are null, scores are not", found)
        else:
            log.info("decision threshold %r (%s)", self.threshold, found)
        # The service's store when one is named (at load, or ML_ASSETS_ONLINE_STORE set explicitly:
        # its default, a file under the data root, is not a reason to leave the bronze path).
        url = config.get("online_store") or value("ML_ASSETS_ONLINE_STORE")
        self.store = None
        if url:
            from ml_assets.serving.online_store import open_store

            self.store = open_store(url, lookback_days=self.params.card_lookback_days)

    def predict(self, context, model_input, params: dict | None = None):
        return score_landing_rows(
            model_input, self.booster, self.params, self.lake_uri, paths.lake_storage_options(),
            store=self.store, model_version=self.model_version, threshold=self.threshold,
        )  # fmt: skip


set_model(LandingScorer())
