"""Names of the lake's tables: one place, so assets, checks and tests agree."""

BRONZE = {"transactions": "bronze/transactions", "labels": "bronze/labels"}
QUARANTINE = {"transactions": "quarantine/transactions", "labels": "quarantine/labels"}
# What ingestion has taken in: each day's landing fingerprint, written after its bronze and
# quarantine commits. The landing sensor compares landing with it (a cursor can be lost).
DELIVERED = {"transactions": "ingestion/delivered/transactions", "labels": "ingestion/delivered/labels"}
TRAINING_SET = "training/training_set"
BATCH_PREDICTIONS = "predictions/batch_predictions"
# Every prediction the serving service makes (ml_assets.serving.inference_log), by scored day:
# drained from the online store's decision queue by the `inference_log` asset, which keeps its
# consumer cursor per store beside it.
INFERENCE_LOG = "serving/inference_log"
INFERENCE_LOG_CURSOR = "serving/inference_log_cursor"
# Every change of what serves (ml_assets.lib.ledger), appended by `deployed_model`: the promotion
# history that outlives the Dagster instance (`make rollback VERSION=N` checks it).
PROMOTION_LEDGER = "serving/promotion_ledger"
DRIFT = "monitoring/drift"
LIVE_PERFORMANCE = "monitoring/live_performance"
