"""What MLflow runs to load the registered model (models from code, no pickle): `LandingScorer`.

Only MLflow's loader runs this file (and it has imported mlflow already); nothing in the project
imports it. The scoring itself is in ml_assets.serving.mlflow_model.
"""

import mlflow.pyfunc
from mlflow.models import set_model

from ml_assets.lib import paths
from ml_assets.serving.features import FeatureParams
from ml_assets.serving.mlflow_model import score_landing_rows


class LandingScorer(mlflow.pyfunc.PythonModel):
    """The fraud model on landing-contract transactions (see the module's docstring)."""

    def load_context(self, context):
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=context.artifacts["booster"])
        config = context.model_config
        self.params = FeatureParams(**config["feature_params"])
        self.lake_uri = config.get("lake_uri")

    def predict(self, context, model_input, params: dict | None = None):
        return score_landing_rows(
            model_input, self.booster, self.params, self.lake_uri, paths.lake_storage_options()
        )


set_model(LandingScorer())
