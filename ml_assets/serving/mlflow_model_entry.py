"""What MLflow runs to load the registered model (models from code: no pickle). See mlflow_model."""

from mlflow.models import set_model

from ml_assets.serving.mlflow_model import LandingScorer

set_model(LandingScorer())
