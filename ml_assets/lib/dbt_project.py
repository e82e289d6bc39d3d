"""Where the dbt project is. Dagster-free, so the serving code and tests can find it too."""

from pathlib import Path

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
FEATURES_MODEL = "transaction_features"
