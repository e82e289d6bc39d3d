"""Names of the lake's tables: one place, so assets, checks and tests agree."""

BRONZE = {"transactions": "bronze/transactions", "labels": "bronze/labels"}
QUARANTINE = {"transactions": "quarantine/transactions", "labels": "quarantine/labels"}
# Every prediction the serving service makes (ml_assets.serving.inference_log), by scored day.
INFERENCE_LOG = "serving/inference_log"
