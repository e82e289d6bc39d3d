"""The model's features: which columns dbt's transaction_features computes, from the feature spec.

The spec is the dbt project's vars (dbt_project/dbt_project.yml: the velocity windows, the channel
codes, the lookbacks and the merchant prior), with what the setting ML_ASSETS_DBT_VARS overrides.
transaction_features.sql loops over it, the online features (ml_assets.serving.features) compute
from it, and `feature_columns` lists what both compute: a window is added in one place.

A trained model keeps its own list (the version's `feature_columns` tag and its input contract,
`input_contract`): every consumer builds a model's input from that list, never from today's spec,
so a feature added since leaves the champion scoring exactly as it did.
"""

from __future__ import annotations

import functools
import hashlib
import json

from ml_assets.lib import paths
from ml_assets.lib.dbt_project import DBT_PROJECT_DIR, FEATURES_MODEL

# Identity and context columns of transaction_features (for joins and report slices), not inputs.
# Every other column of the table is a feature.
KEY_COLUMNS = [
    "transaction_id",
    "event_time",
    "event_date",
    "card_id",
    "merchant_id",
    "channel",
    "country",
    "merchant_category",
]

# Integer codes LightGBM should treat as categories, not magnitudes.
CATEGORICAL_FEATURES = ["channel_code", "merchant_category_code"]

LABEL = "is_fraud"

# The vars transaction_features.sql reads: with the SQL's text, what its hash covers.
FEATURE_VARS = (
    "card_lookback_days",
    "merchant_label_window_days",
    "label_join_horizon_days",
    "merchant_prior_rate",
    "merchant_prior_weight",
    "card_velocity_windows",
    "channel_codes",
)


@functools.lru_cache(maxsize=8)
def _project_vars(overrides: str) -> dict:
    import yaml

    defaults = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"]
    return defaults | json.loads(overrides)


def project_vars() -> dict:
    """dbt_project.yml's vars with the setting's overrides: what a Dagster dbt run computes with."""
    return dict(_project_vars(json.dumps(paths.dbt_var_overrides(), sort_keys=False)))


def feature_columns(windows: dict[str, int] | None = None) -> list[str]:
    """The features transaction_features computes (and the online side with it), in its order,
    for the spec's velocity windows (`windows`: name -> hours; None: the spec's now)."""
    if windows is None:
        windows = project_vars()["card_velocity_windows"]
    velocity = [c for name in windows for c in (f"card_tx_count_{name}", f"card_amount_sum_{name}")]
    return [
        "amount",
        "channel_code",
        "merchant_category_code",
        "hour_of_day",
        "day_of_week",
        *velocity,
        "card_amount_avg_lookback",
        "amount_to_card_avg",
        "seconds_since_card_last_tx",
        "is_new_card_device",
        "is_new_card_country",
        "is_new_card_channel",
        "merchant_labels_window",
        "merchant_fraud_rate",
    ]


def features_hash(dbt_vars: dict | None = None) -> str:
    """A hash of the dbt feature model as it computes now: transaction_features.sql's text and the
    vars it reads. Two models with the same hash were trained on features of the same meaning."""
    dbt_vars = project_vars() if dbt_vars is None else dbt_vars
    sql = (DBT_PROJECT_DIR / "models" / "features" / f"{FEATURES_MODEL}.sql").read_text()
    used = json.dumps({k: dbt_vars[k] for k in FEATURE_VARS}, sort_keys=True)
    return hashlib.sha256(f"{sql}\n{used}".encode()).hexdigest()[:16]


def input_contract(columns: list[str], types: dict[str, str], dbt_vars: dict | None = None) -> dict:
    """What a model version takes: its features in order, their types as it was trained on them,
    and the hash of the dbt feature model that computed them (logged as input_contract.json)."""
    dbt_vars = project_vars() if dbt_vars is None else dbt_vars
    return {
        "feature_columns": list(columns),
        "types": {c: types[c] for c in columns},
        "features_dbt_hash": features_hash(dbt_vars),
        "feature_vars": {k: dbt_vars[k] for k in FEATURE_VARS},
    }


def categorical_indices(columns: list[str]) -> list[int]:
    return [columns.index(c) for c in CATEGORICAL_FEATURES if c in columns]
