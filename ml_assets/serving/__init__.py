"""The scoring service: `python -m ml_assets.serving` (`make serve`).

It serves the MLflow registered model by the deployment its aliases and tags describe
(ml_assets.lib.serving_config), computes dbt's features online, and logs every prediction to the
lake. Not part of the Dagster code location: nothing here is imported when Dagster loads.
"""
