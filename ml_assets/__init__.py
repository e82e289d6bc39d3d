"""ml_assets: a Dagster-native MLOps pipeline for a card-fraud model."""
