"""The model's feature columns, as dbt's transaction_features computes them.

Training, the validation report, batch scoring and the serving service all take their columns
from here, so a feature added to dbt is added to the model in one place.
"""

# Identity and context columns of transaction_features (for joins and report slices), not inputs.
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

FEATURE_COLUMNS = [
    "amount",
    "channel_code",
    "merchant_category_code",
    "hour_of_day",
    "day_of_week",
    "card_tx_count_1h",
    "card_amount_sum_1h",
    "card_tx_count_24h",
    "card_amount_sum_24h",
    "card_tx_count_7d",
    "card_amount_sum_7d",
    "card_amount_avg_lookback",
    "amount_to_card_avg",
    "seconds_since_card_last_tx",
    "is_new_card_device",
    "is_new_card_country",
    "is_new_card_channel",
    "merchant_labels_window",
    "merchant_fraud_rate",
]

# Integer codes LightGBM should treat as categories, not magnitudes.
CATEGORICAL_FEATURES = ["channel_code", "merchant_category_code"]

LABEL = "is_fraud"
