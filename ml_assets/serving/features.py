"""Online features: for each transaction, the values dbt's `transaction_features` computes in batch.

`transaction_features` is the pure function of one transaction, its card's past and its
merchant's label counts; it follows dbt_project/models/features/transaction_features.sql term by
term, and the skew test holds the two to the same values. The windows and the merchant prior come
from the dbt project's vars, so the two can't drift apart by configuration either.

What the features need between requests lives outside the process, in the online store
(ml_assets.serving.online_store): each card's transactions over the lookback, and merchant risk per
event day, written by the pipeline with `merchant_risk` below. `batch_features` computes a batch's
features from the windows the store returns; nothing here keeps state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import date, timedelta
from typing import NamedTuple

import numpy as np
import polars as pl

from ml_assets.lib.dbt_project import DBT_PROJECT_DIR
from ml_assets.lib.features import FEATURE_COLUMNS

US = 1_000_000  # timestamps are integer microseconds since the epoch (UTC), as bronze stores them
HOUR = 3600 * US
DAY = 24 * HOUR
EPOCH = date(1970, 1, 1)
CHANNEL_CODES = {"pos": 0, "ecom": 1, "atm": 2}


@dataclass(frozen=True)
class FeatureParams:
    """The dbt vars the features depend on (dbt_project/dbt_project.yml)."""

    card_lookback_days: int
    merchant_label_window_days: int
    label_join_horizon_days: int
    merchant_prior_rate: float
    merchant_prior_weight: float

    @classmethod
    def from_dbt_project(cls) -> FeatureParams:
        import yaml

        dbt_vars = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"]
        return cls(**{f.name: dbt_vars[f.name] for f in fields(cls)})


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
    n = n_1h = n_24h = n_7d = device_seen = country_seen = channel_seen = 0
    total = sum_1h = sum_24h = sum_7d = 0.0
    last = None
    for p in past:
        if not start <= p.ts < t:
            continue
        n += 1
        total += p.amount
        last = p.ts if last is None or p.ts > last else last
        if p.ts >= t - 7 * DAY:
            n_7d += 1
            sum_7d += p.amount
            if p.ts >= t - DAY:
                n_24h += 1
                sum_24h += p.amount
                if p.ts >= t - HOUR:
                    n_1h += 1
                    sum_1h += p.amount
        # NULL never equals NULL in SQL: a missing device matches nothing.
        device_seen += p.device_id is not None and p.device_id == tx.device_id
        country_seen += p.country == tx.country
        channel_seen += p.channel == tx.channel
    avg = total / n if n else None
    labels, frauds = merchant
    weight = params.merchant_prior_weight
    return {
        "amount": tx.amount,
        "channel_code": CHANNEL_CODES[tx.channel],
        "merchant_category_code": int(tx.merchant_category),
        "hour_of_day": (t // HOUR) % 24,
        "day_of_week": (t // DAY + 3) % 7 + 1,  # ISO: Monday 1 .. Sunday 7; 1970-01-01 was a Thursday
        "card_tx_count_1h": n_1h,
        "card_amount_sum_1h": sum_1h,
        "card_tx_count_24h": n_24h,
        "card_amount_sum_24h": sum_24h,
        "card_tx_count_7d": n_7d,
        "card_amount_sum_7d": sum_7d,
        "card_amount_avg_lookback": avg,
        "amount_to_card_avg": tx.amount / avg if avg else None,
        "seconds_since_card_last_tx": (t - last) / US if last is not None else None,
        "is_new_card_device": int(device_seen == 0) if tx.device_id is not None else None,
        "is_new_card_country": int(country_seen == 0),
        "is_new_card_channel": int(channel_seen == 0),
        "merchant_labels_window": labels,
        "merchant_fraud_rate": (frauds + params.merchant_prior_rate * weight) / (labels + weight),
    }


def as_vector(features: dict[str, float | None]) -> list[float]:
    """FEATURE_COLUMNS order, NaN for missing: the model's input row."""
    return [math.nan if (v := features[c]) is None else float(v) for c in FEATURE_COLUMNS]


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


def matrix_of(features: list[dict[str, float | None]]) -> np.ndarray:
    """The model's input rows (FEATURE_COLUMNS, NaN for missing)."""
    out = np.empty((len(features), len(FEATURE_COLUMNS)))
    for i, values in enumerate(features):
        out[i] = as_vector(values)
    return out
