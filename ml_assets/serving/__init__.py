"""The scoring service: `python -m ml_assets.serving` (`make serve`).

It serves the MLflow registered model by the deployment its aliases and tags describe
(ml_assets.lib.serving_config), computes dbt's features online from the online store's card
histories, and records every decision in the store before it answers (the pipeline's
`inference_log` asset drains them into the lake). Not part of the Dagster code location: nothing
here is imported when Dagster loads.
"""
