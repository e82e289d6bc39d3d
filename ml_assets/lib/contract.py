"""The landing contract (DESIGN.md), as pandera schemas over the raw text of each row.

This is the seam where a user plugs in their own feed: describe each column once, with the rules
its raw text must follow and the type it is stored as. Validation runs on the raw strings so that
a bad value is reported as it arrived, and every rule a row breaks is named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import polars as pl

Expr = Callable[[pl.Expr], pl.Expr]
TYPED = "__typed__"  # prefix of the parsed twin of each raw column while validating

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DECIMAL_PATTERN = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$"
MAX_AMOUNT = 1_000_000


def parse_timestamp(col: pl.Expr) -> pl.Expr:
    """ISO-8601 with a `Z` or an offset, as UTC; null when the text is not one."""
    return col.str.to_datetime("%+", strict=False, time_zone="UTC", time_unit="us")


def parse_decimal(col: pl.Expr) -> pl.Expr:
    return pl.when(col.str.contains(DECIMAL_PATTERN)).then(col.cast(pl.Float64, strict=False))


@dataclass(frozen=True)
class Rule:
    """One rule a column must follow: `test(raw, parsed)` is True where the value is valid.

    `raw` is the text as it arrived, `parsed` the column's parsed value (parsed once, shared by
    every rule and by the stored value).
    """

    name: str
    test: Callable[[pl.Expr, pl.Expr], pl.Expr]


@dataclass(frozen=True)
class Column:
    dtype: pl.DataType
    required: bool
    rules: tuple[Rule, ...]
    parse: Expr = lambda c: c  # raw text -> stored value


@dataclass(frozen=True)
class Feed:
    """One upstream feed: its columns, the column it is partitioned by, and its row identity."""

    name: str
    partition_column: str  # stored in bronze; the landing folder's date
    time_column: str  # its UTC date must equal the folder's date
    key: tuple[str, ...]  # rows with the same key must be identical, or they conflict
    columns: dict[str, Column] = field(default_factory=dict)

    @property
    def required(self) -> list[str]:
        return [n for n, c in self.columns.items() if c.required]

    def bronze_schema(self) -> dict[str, pl.DataType]:
        return {
            **{n: c.dtype for n, c in self.columns.items()},
            self.partition_column: pl.Date(),
            "_source_file": pl.String(),
            "_source_line": pl.Int64(),
        }


def _matches(pattern: str, what: str) -> Rule:
    return Rule(what, lambda raw, _: raw.str.contains(pattern))


_TIMESTAMP = (Rule("must be ISO-8601 with a Z or an offset", lambda _, parsed: parsed.is_not_null()),)


_ID = _matches(ID_PATTERN, "must be 1-64 chars of [A-Za-z0-9_-]")

TRANSACTIONS = Feed(
    name="transactions",
    partition_column="event_date",
    time_column="event_time",
    key=("transaction_id",),
    columns={
        "transaction_id": Column(pl.String(), True, (_ID,)),
        "event_time": Column(pl.Datetime("us", "UTC"), True, _TIMESTAMP, parse_timestamp),
        "card_id": Column(pl.String(), True, (_ID,)),
        "merchant_id": Column(pl.String(), True, (_ID,)),
        "merchant_category": Column(
            pl.String(), True, (_matches(r"^\d{4}$", "must be exactly 4 digits (MCC)"),)
        ),
        "amount": Column(
            pl.Float64(),
            True,
            (
                Rule("must be a decimal number", lambda _, parsed: parsed.is_not_null()),
                Rule(
                    f"must be finite, > 0 and <= {MAX_AMOUNT}",
                    lambda _, parsed: parsed.is_between(0, MAX_AMOUNT, closed="right"),
                ),
            ),
            parse_decimal,
        ),
        "currency": Column(pl.String(), True, (_matches(r"^[A-Z]{3}$", "must be 3 uppercase letters"),)),
        "country": Column(pl.String(), True, (_matches(r"^[A-Z]{2}$", "must be 2 uppercase letters"),)),
        "channel": Column(
            pl.String(),
            True,
            (
                Rule(
                    "must be one of pos, ecom, atm",
                    lambda raw, _: raw.is_in(["pos", "ecom", "atm"]),
                ),
            ),
        ),
        "device_id": Column(
            pl.String(),
            False,
            (Rule("must be at most 64 chars", lambda raw, _: raw.str.len_chars() <= 64),),
        ),
    },
)

LABELS = Feed(
    name="labels",
    partition_column="label_date",
    time_column="labeled_at",
    # A transaction may be labelled again later; only copies made at the same instant must agree.
    key=("transaction_id", "labeled_at"),
    columns={
        "transaction_id": Column(pl.String(), True, (_ID,)),
        "labeled_at": Column(pl.Datetime("us", "UTC"), True, _TIMESTAMP, parse_timestamp),
        "is_fraud": Column(
            pl.Int8(),
            True,
            (Rule("must be 0 or 1", lambda raw, _: raw.is_in(["0", "1"])),),
            lambda c: c.cast(pl.Int8, strict=False),
        ),
    },
)

FEEDS = {f.name: f for f in (TRANSACTIONS, LABELS)}


def with_parsed(feed: Feed, raw: pl.DataFrame) -> pl.DataFrame:
    """`raw` plus the parsed twin of every contract column (prefixed TYPED)."""
    return raw.with_columns(col.parse(pl.col(n)).alias(TYPED + n) for n, col in feed.columns.items())


def pandera_schema(feed: Feed, folder_date: date):
    """The pandera (polars backend) schema of one landing partition, for `with_parsed` frames.

    Checks run on the raw strings (empty field = null) and their parsed twins. Rules skip nulls
    (`fill_null(True)`), so a missing required value is reported once, as `not_nullable`.
    """
    import pandera.polars as pa  # costs seconds: only when validating

    def check(rule: Rule, column: str) -> pa.Check:
        def test(data):
            raw, parsed = pl.col(data.key), pl.col(TYPED + data.key)
            return data.lazyframe.select(rule.test(raw, parsed).fill_null(True).alias(data.key))

        return pa.Check(test, name=f"{column} {rule.name}")

    columns = {}
    for name, col in feed.columns.items():
        rules = list(col.rules)
        if name == feed.time_column:
            rules.append(
                Rule(
                    f"UTC date must equal the folder's date {folder_date}",
                    lambda _, parsed: parsed.dt.date() == folder_date,
                )
            )
        checks = [check(r, name) for r in rules]
        columns[name] = pa.Column(pl.String, checks=checks, nullable=not col.required, required=True)
    return pa.DataFrameSchema(columns, name=feed.name, strict=False)
