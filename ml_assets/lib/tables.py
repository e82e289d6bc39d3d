"""Names of the lake's tables: one place, so assets, checks and tests agree."""

BRONZE = {"transactions": "bronze/transactions", "labels": "bronze/labels"}
QUARANTINE = {"transactions": "quarantine/transactions", "labels": "quarantine/labels"}
TRAINING_SET = "training/training_set"
