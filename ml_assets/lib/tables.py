"""Names of the lake's tables: one place, so assets, checks and tests agree."""

BRONZE = {"transactions": "bronze/transactions", "labels": "bronze/labels"}
QUARANTINE = {"transactions": "quarantine/transactions", "labels": "quarantine/labels"}
TRAINING_SET = "training/training_set"
BATCH_PREDICTIONS = "predictions/batch_predictions"
# Every prediction the serving service makes (ml_assets.serving.inference_log), by scored day.
INFERENCE_LOG = "serving/inference_log"
DRIFT = "monitoring/drift"
LIVE_PERFORMANCE = "monitoring/live_performance"
