"""A deterministic card-payments world that writes the landing contract, day by day.

Legitimate behaviour has daily and weekly seasonality and card-specific spending levels. Fraud
comes in patterns that a model can only catch through history:

- card_testing: a burst of small ecom amounts on one card from a fraudster's device, sometimes
  followed by a large purchase;
- account_takeover: a new device and a new country, then amounts far above the card's habit;
- compromised_merchant: cards that shopped at a breached merchant are cashed out days later at a
  few electronics and jewellery merchants;
- atm_cashout (the drift pattern, from `drift_day` on): skimmed cards drain ATMs at night.

Each transaction carries a true fraud probability; the label is drawn from it, so the oracle that
knows it is the ceiling any model can reach. The oracle goes to `simulator/truth/`, never to
landing. Labels land `label_delay_days` later in the folder of the day they were made.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "SE", "BR", "IN", "JP"]
COUNTRY_WEIGHTS = np.array([30, 12, 10, 9, 7, 7, 5, 5, 3, 5, 4, 3], dtype=float)
CURRENCY = {
    "US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "ES": "EUR", "IT": "EUR", "NL": "EUR",
    "PL": "PLN", "SE": "SEK", "BR": "BRL", "IN": "INR", "JP": "JPY",
}  # fmt: skip
FRAUD_COUNTRIES = ["NG", "RO", "VN", "UA", "ID"]
# (MCC, weight among shops, amount multiplier)
SHOP_MCCS = [
    ("5411", 25, 1.0), ("5812", 18, 0.8), ("5541", 12, 1.2), ("5912", 8, 0.7),
    ("5311", 8, 1.5), ("5999", 8, 1.0), ("4121", 6, 0.6), ("5814", 10, 0.4),
    ("7011", 3, 4.0), ("4511", 2, 6.0),
]  # fmt: skip
ECOM_MCCS = [("5969", 40, 1.0), ("5817", 30, 0.5), ("5732", 15, 3.0), ("4899", 15, 0.8)]
CASHOUT_MCCS = ["5732", "5944"]  # electronics, jewellery
ATM_MCC = "6011"
# Relative volume per hour of day (UTC), and per weekday (Monday first).
HOUR_CURVE = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4, 5, 5.5, 6, 6.5, 6, 5.5, 5.5, 6, 6.5, 7, 6.5, 5.5,
     4, 3, 1.8]
)  # fmt: skip
WEEKDAY_CURVE = np.array([0.95, 0.97, 1.0, 1.02, 1.12, 1.15, 0.79])
PATTERN_SHARES = {"card_testing": 0.35, "account_takeover": 0.35, "compromised_merchant": 0.30}
DRIFT_SHARE = 3.0  # the drift pattern adds this many times the base fraud rate


@dataclass(frozen=True)
class SimulatorConfig:
    start: date = date(2026, 1, 1)
    days: int = 45
    transactions_per_day: int = 10_000
    base_fraud_rate: float = 0.01
    label_delay_days: int = 3
    # Day index (0 = start) from which atm_cashout appears. The demo's 45 days end with three
    # drifted days whose labels have not arrived yet: the model trains on the world before the
    # drift, and monitoring sees the drift first.
    drift_day: int | None = 42
    relabel_rate: float = 0.002  # share of labels corrected by a later label
    bad_row_rate: float = 0.001  # share of rows made invalid, to show the quarantine at work
    files_per_day: int = 2
    seed: int = 7


@dataclass
class _World:
    """Cards and merchants, plus state that carries across days."""

    rng: np.random.Generator
    card_country: np.ndarray
    card_spend: np.ndarray  # log of the card's typical amount
    card_rate: np.ndarray  # relative activity
    card_channel_p: np.ndarray  # (n_cards, 3) pos / ecom / atm
    card_devices: np.ndarray  # (n_cards, 2)
    merchant_mcc: np.ndarray
    merchant_country: np.ndarray
    merchant_kind: np.ndarray  # 0 shop, 1 ecom, 2 atm
    merchant_mult: np.ndarray
    cashout_merchants: np.ndarray
    fraud_devices: np.ndarray
    compromised_until: dict[int, int] = field(default_factory=dict)  # card -> day of cash-out
    pending_labels: list[pl.DataFrame] = field(default_factory=list)


def build_world(cfg: SimulatorConfig) -> _World:
    rng = np.random.default_rng(cfg.seed)
    n_cards = max(2_000, cfg.transactions_per_day * 3)
    n_merchants = max(400, cfg.transactions_per_day // 4)
    countries = np.array(COUNTRIES)
    card_country = rng.choice(countries, n_cards, p=COUNTRY_WEIGHTS / COUNTRY_WEIGHTS.sum())
    card_channel_p = rng.dirichlet([6.0, 3.5, 0.6], n_cards)
    card_devices = np.array([f"dev-{x:012x}" for x in rng.integers(0, 2**48, n_cards * 2)])
    kinds = rng.choice([0, 1, 2], n_merchants, p=[0.72, 0.2, 0.08])
    mcc = np.empty(n_merchants, dtype=object)
    mult = np.ones(n_merchants)
    for kind, table in ((0, SHOP_MCCS), (1, ECOM_MCCS)):
        idx = np.flatnonzero(kinds == kind)
        w = np.array([t[1] for t in table], dtype=float)
        pick = rng.choice(len(table), idx.size, p=w / w.sum())
        mcc[idx] = [table[i][0] for i in pick]
        mult[idx] = [table[i][2] for i in pick]
    mcc[kinds == 2] = ATM_MCC
    cashout = rng.choice(np.flatnonzero(kinds == 0), 12, replace=False)
    mcc[cashout] = rng.choice(CASHOUT_MCCS, cashout.size)
    mult[cashout] = 5.0
    return _World(
        rng=rng,
        card_country=card_country,
        card_spend=rng.normal(3.4, 0.7, n_cards),
        card_rate=rng.gamma(2.0, 0.5, n_cards),
        card_channel_p=card_channel_p,
        card_devices=card_devices.reshape(n_cards, 2),
        merchant_mcc=mcc.astype(str),
        merchant_country=rng.choice(countries, n_merchants, p=COUNTRY_WEIGHTS / COUNTRY_WEIGHTS.sum()),
        merchant_kind=kinds,
        merchant_mult=mult,
        cashout_merchants=cashout,
        fraud_devices=np.array([f"dev-{x:012x}" for x in rng.integers(0, 2**48, 40)]),
    )


def _times(rng: np.random.Generator, day: date, n: int, hour_p: np.ndarray | None = None) -> np.ndarray:
    """n event times on `day`, in microseconds since the epoch, following an hourly curve."""
    p = HOUR_CURVE if hour_p is None else hour_p
    hours = rng.choice(24, n, p=p / p.sum())
    midnight = int(datetime(day.year, day.month, day.day).timestamp()) * 1_000_000
    return midnight + hours * 3_600_000_000 + rng.integers(0, 3_600_000_000, n)


def _pick_merchant(w: _World, kind: int, country: np.ndarray) -> np.ndarray:
    """A merchant of `kind` for each row: in the row's country where one exists (ecom: anywhere)."""
    rng = w.rng
    pool = np.flatnonzero(w.merchant_kind == kind)
    if kind == 1:
        # Popularity is skewed: a few big online shops take most of the traffic.
        weights = 1.0 / np.arange(1, pool.size + 1) ** 0.8
        return rng.choice(pool, country.size, p=weights / weights.sum())
    out = rng.choice(pool, country.size)
    for c in np.unique(country):
        local = pool[w.merchant_country[pool] == c]
        rows = np.flatnonzero(country == c)
        if local.size:
            out[rows] = rng.choice(local, rows.size)
    return out


def _frame(w: _World, cards, times, merchants, amounts, country, device, channel, p, pattern):
    channel_names = np.array(["pos", "ecom", "atm"])
    return pl.DataFrame(
        {
            "card": cards.astype(np.int64),
            "time_us": times.astype(np.int64),
            "merchant": merchants.astype(np.int64),
            "amount": np.round(amounts, 2),
            "country": country.astype(str),
            # An empty device is a missing one: written as an empty field, not as "".
            "device_id": pl.Series(device.astype(str)).replace("", None),
            "channel": channel_names[channel],
            "p_fraud": p.astype(float),
            "pattern": np.full(cards.size, pattern) if isinstance(pattern, str) else pattern,
        }
    )


def _legit(w: _World, day: date, n: int) -> pl.DataFrame:
    rng = w.rng
    cards = rng.choice(w.card_rate.size, n, p=w.card_rate / w.card_rate.sum())
    u = rng.random(n)[:, None]
    channel = (u > np.cumsum(w.card_channel_p[cards], axis=1)).sum(axis=1).clip(0, 2)
    travelling = rng.random(n) < 0.03
    country = np.where(travelling, rng.choice(COUNTRIES, n), w.card_country[cards])
    merchants = np.empty(n, dtype=np.int64)
    for kind in (0, 1, 2):
        rows = np.flatnonzero(channel == kind)
        merchants[rows] = _pick_merchant(w, kind, country[rows])
    amounts = np.exp(w.card_spend[cards] + rng.normal(0, 0.6, n)) * w.merchant_mult[merchants]
    atm = channel == 2
    amounts[atm] = np.maximum(20, np.round(amounts[atm] * 2 / 20) * 20)
    device = np.where(rng.random(n) < 0.9, w.card_devices[cards, 0], w.card_devices[cards, 1])
    new_phone = rng.random(n) < 0.01  # a legitimately new device now and then
    device = np.where(new_phone, [f"dev-{x:012x}" for x in rng.integers(0, 2**48, n)], device)
    device = np.where(channel == 1, device, "")
    # Background fraud that no pattern explains: the part of fraud no model can catch.
    p = np.full(n, 0.0004) * np.where(amounts > 500, 3.0, 1.0)
    return _frame(w, cards, _times(rng, day, n), merchants, amounts, country, device, channel, p, "legit")


def _card_testing(w: _World, day: date, n_target: int) -> pl.DataFrame:
    rng = w.rng
    frames = []
    testing_merchants = np.flatnonzero(w.merchant_kind == 1)[-25:]  # obscure online shops
    made = 0
    while made < n_target:
        card = rng.integers(w.card_rate.size)
        burst = int(rng.integers(3, 9))
        start = _times(rng, day, 1)[0]
        times = start + np.sort(rng.integers(0, 20 * 60_000_000, burst))
        amounts = rng.uniform(0.5, 5.0, burst)
        if rng.random() < 0.5:  # the card works: cash it in
            times = np.append(times, times[-1] + rng.integers(60_000_000, 3_600_000_000))
            amounts = np.append(amounts, rng.uniform(300, 1500))
        k = times.size
        country = np.full(k, rng.choice(FRAUD_COUNTRIES))
        merchants = rng.choice(testing_merchants, k)
        device = np.full(k, rng.choice(w.fraud_devices))
        p = rng.uniform(0.85, 0.97, k)
        frames.append(
            _frame(
                w,
                np.full(k, card),
                times,
                merchants,
                amounts,
                country,
                device,
                np.ones(k, dtype=int),
                p,
                "card_testing",
            )  # fmt: skip
        )
        made += k
    return pl.concat(frames)


def _account_takeover(w: _World, day: date, n_target: int) -> pl.DataFrame:
    rng = w.rng
    frames = []
    made = 0
    while made < n_target:
        card = rng.integers(w.card_rate.size)
        k = int(rng.integers(1, 5))
        times = _times(rng, day, 1)[0] + np.sort(rng.integers(0, 4 * 3_600_000_000, k))
        amounts = np.exp(w.card_spend[card]) * rng.uniform(4, 15, k)
        foreign = [c for c in COUNTRIES + FRAUD_COUNTRIES if c != w.card_country[card]]
        country = np.full(k, rng.choice(foreign))
        merchants = _pick_merchant(w, 1, country)
        device = np.full(k, f"dev-{rng.integers(0, 2**48):012x}")
        p = rng.uniform(0.8, 0.95, k)
        frames.append(
            _frame(
                w,
                np.full(k, card),
                times,
                merchants,
                amounts,
                country,
                device,
                np.ones(k, dtype=int),
                p,
                "account_takeover",
            )  # fmt: skip
        )
        made += k
    return pl.concat(frames)


def _compromised_merchant(w: _World, day_index: int, day: date, legit: pl.DataFrame, n_target: int):
    """Breach a few merchants today; cash out cards breached earlier whose turn has come."""
    rng = w.rng
    shops = np.flatnonzero(w.merchant_kind == 0)
    breached = rng.choice(shops, min(shops.size, max(1, n_target // 3)), replace=False)
    victims = legit.filter(pl.col("merchant").is_in(breached.tolist()))["card"].to_numpy()
    for card in victims[rng.random(victims.size) < 0.35]:
        w.compromised_until.setdefault(int(card), day_index + int(rng.integers(2, 10)))
    due = [c for c, d in w.compromised_until.items() if d == day_index]
    if not due:
        return None
    due = np.array(due)
    for c in due:
        w.compromised_until.pop(int(c), None)
    k = rng.integers(1, 4, due.size)
    cards = np.repeat(due, k)
    n = cards.size
    times = _times(rng, day, n)
    merchants = rng.choice(w.cashout_merchants, n)
    amounts = np.exp(w.card_spend[cards]) * rng.uniform(5, 20, n)
    country = w.merchant_country[merchants]
    p = rng.uniform(0.8, 0.95, n)
    return _frame(w, cards, times, merchants, amounts, country, np.full(n, ""),
                  np.zeros(n, dtype=int), p, "compromised_merchant")  # fmt: skip


def _atm_cashout(w: _World, day: date, n_target: int) -> pl.DataFrame:
    rng = w.rng
    cards = np.repeat(rng.integers(0, w.card_rate.size, max(1, n_target // 3)), 3)[:n_target]
    n = cards.size
    night = np.zeros(24)
    night[[0, 1, 2, 3, 4]] = 1
    base = _times(rng, day, n, night)
    # Withdrawals of one card come minutes apart.
    times = np.where(np.arange(n) % 3 == 0, base, 0)
    times = np.maximum.accumulate(times) + (np.arange(n) % 3) * rng.integers(60_000_000, 900_000_000, n)
    country = w.card_country[cards]
    merchants = _pick_merchant(w, 2, country)
    # Ordinary amounts for the card's ATM habit: only the hour, the channel and the burst give it away.
    amounts = np.maximum(20, np.round(np.exp(w.card_spend[cards]) * 2 * rng.uniform(1.0, 2.5, n) / 20) * 20)
    p = rng.uniform(0.85, 0.97, n)
    return _frame(w, cards, times, merchants, amounts, country, np.full(n, ""),
                  np.full(n, 2), p, "atm_cashout")  # fmt: skip


def simulate_day(w: _World, cfg: SimulatorConfig, day_index: int) -> pl.DataFrame:
    """All transactions of one day, with their truth, sorted by event time."""
    rng = w.rng
    day = cfg.start + timedelta(days=day_index)
    volume = cfg.transactions_per_day * WEEKDAY_CURVE[day.weekday()] / WEEKDAY_CURVE.mean()
    n_fraud = {k: int(volume * cfg.base_fraud_rate * s) for k, s in PATTERN_SHARES.items()}
    n_legit = int(volume) - sum(n_fraud.values())
    legit = _legit(w, day, n_legit)
    parts = [legit]
    if n_fraud["card_testing"]:
        parts.append(_card_testing(w, day, n_fraud["card_testing"]))
    if n_fraud["account_takeover"]:
        parts.append(_account_takeover(w, day, n_fraud["account_takeover"]))
    cm = _compromised_merchant(w, day_index, day, legit, n_fraud["compromised_merchant"])
    if cm is not None:
        parts.append(cm)
    if cfg.drift_day is not None and day_index >= cfg.drift_day:
        parts.append(_atm_cashout(w, day, int(volume * cfg.base_fraud_rate * DRIFT_SHARE)))
    df = pl.concat(parts).sort("time_us")
    # Keep every event on its day (bursts that run past midnight are clipped to 23:59:59).
    midnight = int(datetime(day.year, day.month, day.day).timestamp()) * 1_000_000
    df = df.with_columns(pl.col("time_us").clip(midnight, midnight + 86_400_000_000 - 1))
    n = df.height
    ids = rng.permutation(n)
    is_fraud = (rng.random(n) < df["p_fraud"].to_numpy()).astype(np.int8)
    return df.with_columns(
        transaction_id=pl.Series([f"tx-{day:%Y%m%d}-{i:08d}" for i in ids]),
        card_id=pl.format("card-{}", pl.col("card").cast(pl.String).str.zfill(7)),
        merchant_id=pl.format("m-{}", pl.col("merchant").cast(pl.String).str.zfill(6)),
        merchant_category=pl.Series(w.merchant_mcc[df["merchant"].to_numpy()]),
        currency=pl.col("country").replace_strict(CURRENCY, default="USD"),
        event_time=pl.from_epoch(pl.col("time_us"), time_unit="us").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
        is_fraud=pl.Series(is_fraud),
    )


TRANSACTION_COLUMNS = [
    "transaction_id", "event_time", "card_id", "merchant_id", "merchant_category", "amount",
    "currency", "country", "channel", "device_id",
]  # fmt: skip


def _labels_for(w: _World, cfg: SimulatorConfig, day_index: int, tx: pl.DataFrame) -> pl.DataFrame:
    """Labels for one day's transactions, each stamped with the day it will be made."""
    rng = w.rng
    n = tx.height
    label_day = day_index + cfg.label_delay_days
    relabel = rng.random(n) < cfg.relabel_rate
    first = tx.select(
        "transaction_id",
        label_day=pl.lit(label_day, dtype=pl.Int64),
        # A corrected label first says the opposite; the later one tells the truth.
        is_fraud=pl.when(pl.Series(relabel)).then(1 - pl.col("is_fraud")).otherwise("is_fraud"),
    )
    later = tx.filter(pl.Series(relabel)).select(
        "transaction_id",
        label_day=pl.lit(label_day, dtype=pl.Int64) + pl.Series(rng.integers(1, 6, int(relabel.sum()))),
        is_fraud="is_fraud",
    )
    return pl.concat([first, later]).with_columns(pl.col("is_fraud").cast(pl.Int8))


# How upstream feeds break rows: (column, expression that breaks it).
_BREAKERS = [
    ("channel", pl.col("channel").str.to_uppercase()),
    ("amount", pl.lit("-") + pl.col("amount")),
    ("currency", pl.col("currency").str.to_lowercase()),
    ("merchant_category", pl.col("merchant_category").str.slice(0, 3)),
    ("card_id", pl.lit("")),
    ("event_time", pl.col("event_time").str.replace("T", " ").str.replace("Z", "")),
]


def _corrupt(rng: np.random.Generator, tx: pl.DataFrame, rate: float) -> tuple[pl.DataFrame, int]:
    """Break a few rows the way upstream feeds do, so the quarantine has something to show."""
    broken = np.where(rng.random(tx.height) < rate, rng.integers(0, len(_BREAKERS), tx.height), -1)
    which = pl.Series(broken)
    tx = tx.with_columns(
        pl.when(which == i).then(expr).otherwise(pl.col(col)).alias(col)
        for i, (col, expr) in enumerate(_BREAKERS)
    )
    return tx, int((broken >= 0).sum())


def _write_partition(folder: Path, df: pl.DataFrame, files: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*"):
        old.unlink()
    order = rng.permutation(df.height)
    for i, chunk in enumerate(np.array_split(order, max(1, files))):
        data = df[chunk].write_csv().encode()
        # Upstream writes *.tmp and renames it; we do the same so readers never see half a file.
        name = f"part-{i:03d}.csv" + (".gz" if i % 2 else "")
        tmp = folder / (name + ".tmp")
        tmp.write_bytes(gzip.compress(data, compresslevel=1) if name.endswith(".gz") else data)
        tmp.rename(folder / name)


def simulate(cfg: SimulatorConfig, landing: Path, truth: Path, log=print) -> dict:
    """Write `cfg.days` days of transactions and labels to `landing`, and the oracle to `truth`."""
    w = build_world(cfg)
    end_day = cfg.days - 1
    labels_by_day: dict[int, list[pl.DataFrame]] = {}
    totals = {"transactions": 0, "frauds": 0, "labels": 0, "corrupted": 0}
    for d in range(cfg.days):
        day = cfg.start + timedelta(days=d)
        tx = simulate_day(w, cfg, d)
        landing_tx = tx.select(TRANSACTION_COLUMNS).with_columns(pl.col("amount").cast(pl.String))
        corrupted, n_broken = _corrupt(w.rng, landing_tx, cfg.bad_row_rate)
        totals["corrupted"] += n_broken
        _write_partition(landing / "transactions" / f"date={day}", corrupted, cfg.files_per_day, w.rng)
        tdir = truth / f"date={day}"
        tdir.mkdir(parents=True, exist_ok=True)
        tx.select("transaction_id", "p_fraud", "is_fraud", "pattern", "card_id").write_parquet(
            tdir / "truth.parquet"
        )
        for label_day, part in _labels_for(w, cfg, d, tx).partition_by("label_day", as_dict=True).items():
            labels_by_day.setdefault(label_day[0], []).append(part)
        # Labels made today (for earlier days' transactions) are now known: write them.
        made = labels_by_day.pop(d, [])
        if made:
            lab = pl.concat(made)
            lab = lab.with_columns(
                labeled_at=pl.from_epoch(
                    pl.Series(_times(w.rng, day, lab.height)), time_unit="us"
                ).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            ).select("transaction_id", "labeled_at", "is_fraud")
            _write_partition(landing / "labels" / f"date={day}", lab, 1, w.rng)
            totals["labels"] += lab.height
        totals["transactions"] += tx.height
        totals["frauds"] += int(tx["is_fraud"].sum())
        if d % 10 == 0 or d == end_day:
            log(f"simulated {day}: {tx.height:,} transactions, {int(tx['is_fraud'].sum())} frauds")
    return totals
