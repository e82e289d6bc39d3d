"""Online features: for each transaction, the values dbt's `transaction_features` computes in batch.

`transaction_features` is the pure function of one transaction, its card's past and its
merchant's label counts; it follows dbt_project/models/features/transaction_features.sql term by
term, and the skew test holds the two to the same values. The velocity windows, the channel codes,
the lookbacks and the merchant prior come from the dbt project's vars (the feature spec,
ml_assets.lib.features), so the two can't drift apart by configuration either: a window added to
the spec is computed here too.

What the features need between requests lives outside the process, in the online store
(ml_assets.serving.online_store): each card's transactions over the lookback, and merchant risk per
event day, written by the pipeline with `merchant_risk` below. `batch_features` computes a batch's
features from the windows the store returns; nothing here keeps state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import date, timedelta
from typing import NamedTuple

import numpy as np
import polars as pl

from ml_assets.lib.features import feature_columns, project_vars

US = 1_000_000  # timestamps are integer microseconds since the epoch (UTC), as bronze stores them
HOUR = 3600 * US
DAY = 24 * HOUR
EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class FeatureParams:
    """The dbt vars the features depend on (dbt_project/dbt_project.yml, and ML_ASSETS_DBT_VARS)."""

    card_lookback_days: int
    merchant_label_window_days: int
    label_join_horizon_days: int
    merchant_prior_rate: float
    merchant_prior_weight: float
    card_velocity_windows: dict[str, int]  # name -> hours: card_tx_count_<name>, card_amount_sum_<name>
    channel_codes: dict[str, int]  # channel -> channel_code

    def __post_init__(self):
        # A window past the lookback would count only the lookback in dbt's join: refuse it here.
        for name, hours in self.card_velocity_windows.items():
            suffix = re.fullmatch(r"[a-z0-9_]+", name) is not None
            if not (suffix and isinstance(hours, int) and 0 < hours <= 24 * self.card_lookback_days):
                raise ValueError(
                    f"velocity window {name!r}: {hours!r} hours must be a whole number in "
                    f"1..{24 * self.card_lookback_days} (the card lookback) and its name a column suffix"
                )

    @classmethod
    def from_dbt_project(cls) -> FeatureParams:
        dbt_vars = project_vars()
        return cls(**{f.name: dbt_vars[f.name] for f in fields(cls)})

    @property
    def columns(self) -> list[str]:
        """What `transaction_features` computes with these params: the features the online side
        can give a model."""
        return feature_columns(self.card_velocity_windows)


class Tx(NamedTuple):
    """A validated transaction, as the features need it."""

    transaction_id: str
    ts: int  # event time, microseconds since the epoch (UTC)
    card_id: str
    merchant_id: str
    merchant_category: str
    amount: float
    country: str
    channel: str
    device_id: str | None


class Past(NamedTuple):
    """One earlier transaction of a card."""

    ts: int
    amount: float
    device_id: str | None
    country: str
    channel: str
    transaction_id: str


def event_day(ts: int) -> date:
    return EPOCH + timedelta(days=ts // DAY)


def transaction_features(
    tx: Tx, past: Iterable[Past], merchant: tuple[int, int], params: FeatureParams
) -> dict[str, float | None]:
    """The features of `tx`, as dbt computes them (None where dbt gives NULL).

    `past`: its card's transactions in any order; only those strictly before `tx` (a transaction
    at the same instant is not history) and within the lookback count. `merchant`: its merchant's
    (labels, frauds) counting on tx's event day (see `merchant_risk`).
    """
    t = tx.ts
    start = t - params.card_lookback_days * DAY
    windows = params.card_velocity_windows
    spans = [hours * HOUR for hours in windows.values()]
    counts, sums = [0] * len(spans), [0.0] * len(spans)
    n = device_seen = country_seen = channel_seen = 0
    total = 0.0
    last = None
    for p in past:
        if not start <= p.ts < t:
            continue
        n += 1
        total += p.amount
        last = p.ts if last is None or p.ts > last else last
        age = t - p.ts
        for i, span in enumerate(spans):
            if age <= span:  # p.ts >= t - span: a window includes its start, as dbt's filter does
                counts[i] += 1
                sums[i] += p.amount
        # NULL never equals NULL in SQL: a missing device matches nothing.
        device_seen += p.device_id is not None and p.device_id == tx.device_id
        country_seen += p.country == tx.country
        channel_seen += p.channel == tx.channel
    avg = total / n if n else None
    labels, frauds = merchant
    weight = params.merchant_prior_weight
    velocity = {}
    for name, count, amount in zip(windows, counts, sums, strict=True):
        velocity[f"card_tx_count_{name}"] = count
        velocity[f"card_amount_sum_{name}"] = amount
    return {
        "amount": tx.amount,
        # A channel without a code is null, as dbt's `case` gives (the contract admits none).
        "channel_code": params.channel_codes.get(tx.channel),
        "merchant_category_code": int(tx.merchant_category),
        "hour_of_day": (t // HOUR) % 24,
        "day_of_week": (t // DAY + 3) % 7 + 1,  # ISO: Monday 1 .. Sunday 7; 1970-01-01 was a Thursday
        **velocity,
        "card_amount_avg_lookback": avg,
        "amount_to_card_avg": tx.amount / avg if avg else None,
        "seconds_since_card_last_tx": (t - last) / US if last is not None else None,
        "is_new_card_device": int(device_seen == 0) if tx.device_id is not None else None,
        "is_new_card_country": int(country_seen == 0),
        "is_new_card_channel": int(channel_seen == 0),
        "merchant_labels_window": labels,
        "merchant_fraud_rate": (frauds + params.merchant_prior_rate * weight) / (labels + weight),
    }


def as_vector(features: dict[str, float | None], columns: list[str]) -> list[float]:
    """A model's input row: its `columns` (the model's own list), in order, NaN for missing."""
    return [math.nan if (v := features[c]) is None else float(v) for c in columns]


def merchant_risk(
    labels: pl.LazyFrame, transactions: pl.LazyFrame, day: date, params: FeatureParams
) -> dict[str, tuple[int, int]]:
    """Each merchant's (labels, frauds) counting on `day`, with dbt's semantics.

    A label made on day L counts for days L+1 .. L+window, until a newer label of the same
    transaction (made before `day`) replaces it; a label made more than `horizon` days after its
    transaction is not joined back to its merchant. `labels`: bronze labels
    (transaction_id, labeled_at, label_date, is_fraud); `transactions`: bronze transactions
    (transaction_id, merchant_id, event_date).
    """
    first = day - timedelta(days=params.merchant_label_window_days)
    # A newer label is made on the same day or later, so labels made before `first` can neither
    # count nor replace one that does: the latest label of each transaction within the window is
    # the one that counts.
    latest = labels.filter(pl.col("label_date").is_between(first, day - timedelta(days=1))).filter(
        pl.col("labeled_at") == pl.col("labeled_at").max().over("transaction_id")
    )
    # Only labels made within the horizon of their transaction are joined back (as dbt does).
    oldest = first - timedelta(days=params.label_join_horizon_days)  # implied below; prunes the scan
    merchants = transactions.filter(pl.col("event_date") >= oldest).select(
        "transaction_id", "merchant_id", "event_date"
    )
    counts = (
        latest.join(merchants, on="transaction_id")
        .filter(pl.col("event_date") >= pl.col("label_date") - timedelta(days=params.label_join_horizon_days))
        .group_by("merchant_id")
        .agg(pl.len().alias("labels"), pl.col("is_fraud").cast(pl.Int64).sum().alias("frauds"))
        .collect()
    )
    return {m: (n, f) for m, n, f in counts.iter_rows()}


def transactions_of(frame: pl.DataFrame) -> list[Tx]:
    """Validated transactions (bronze columns and dtypes) as `Tx`."""
    cols = frame.select(
        "transaction_id", pl.col("event_time").dt.epoch("us"), "card_id", "merchant_id",
        "merchant_category", "amount", "country", "channel", "device_id",
    )  # fmt: skip
    return [Tx(*row) for row in cols.iter_rows()]


def batch_features(
    txs: list[Tx],
    windows: dict[str, list[Past]],
    risk: Callable[[date], dict[str, tuple[int, int]]],
    params: FeatureParams,
) -> list[dict[str, float | None]]:
    """The features of each transaction of a batch, in the batch's order.

    `windows`: card_id -> its transactions around the batch (the online store's `begin` returns
    them, the batch's own included); `transaction_features` keeps only those strictly before each
    transaction, so a batch is scored as if its transactions had come one by one. `risk`: an event
    day's merchant risk (asked once per day of the batch: a batch may span midnight).
    """
    by_day: dict[date, dict[str, tuple[int, int]]] = {}
    out = []
    for tx in txs:
        day = event_day(tx.ts)
        if day not in by_day:
            by_day[day] = risk(day)
        merchant = by_day[day].get(tx.merchant_id, (0, 0))
        out.append(transaction_features(tx, windows.get(tx.card_id, ()), merchant, params))
    return out


def matrix_of(features: list[dict[str, float | None]], columns: list[str]) -> np.ndarray:
    """A model's input rows: its `columns` (the model's own list, in its order), NaN for missing.
    A column the features lack raises KeyError: check `missing_online` before serving a model."""
    out = np.empty((len(features), len(columns)))
    for i, values in enumerate(features):
        out[i] = as_vector(values, columns)
    return out


def missing_online(columns: list[str], params: FeatureParams) -> list[str]:
    """The model columns the online side can't compute with `params` (empty: it can serve it)."""
    online = set(params.columns)
    return [c for c in columns if c not in online]
