"""Online features against dbt's, row by row: the one comparison the skew test and the serving
parity check (`online_features_match_dbt`) both make, so both judge equality alike."""

from __future__ import annotations

import numpy as np
import polars as pl

from ml_assets.lib.features import FEATURE_COLUMNS

# dbt computes seconds_since_card_last_tx from epoch() as a double and sums amounts as decimals;
# the service works in integer microseconds and floats. Beyond these, a value differs.
RTOL, ATOL = 1e-9, 1e-6


def compare(
    online: pl.DataFrame, dbt: pl.DataFrame, columns: list[str] = FEATURE_COLUMNS
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the rows of both, joined on transaction_id, the online columns suffixed `_online`; every
    differing value as a row: transaction_id, feature, dbt, online). A null equals only a null
    (SQL's missing value and the service's both arrive as NaN here)."""
    both = dbt.select("transaction_id", *columns).join(
        online.select("transaction_id", *columns), on="transaction_id", suffix="_online"
    )
    differ = []
    for column in columns:
        batch = both[column].cast(pl.Float64).to_numpy()
        served = both[f"{column}_online"].cast(pl.Float64).to_numpy()
        same = np.isclose(batch, served, rtol=RTOL, atol=ATOL, equal_nan=True)
        if not same.all():
            differ.append(
                both.filter(~pl.Series(same)).select(
                    "transaction_id",
                    pl.lit(column).alias("feature"),
                    pl.col(column).cast(pl.Float64).alias("dbt"),
                    pl.col(f"{column}_online").cast(pl.Float64).alias("online"),
                )
            )
    schema = {"transaction_id": pl.String, "feature": pl.String, "dbt": pl.Float64, "online": pl.Float64}
    return both, pl.concat(differ) if differ else pl.DataFrame(schema=schema)
