r"""The landing contract (README, "The landing contract"), as pandera schemas over the raw text of
each row.

This is the seam where a user plugs in their own feed: describe each column once, with the rules
its raw text must follow and the type it is stored as. Validation runs on the raw strings so that
a bad value is reported as it arrived, and every rule a row breaks is named.

Every rule is written once, here, in two forms built from the same pattern, set or bounds: a polars
expression (ingestion, and serving for the requests it judges in polars) and plain Python (the
serving fast path, `ml_assets.serving.fast_path`). The contract's character classes are ASCII:
patterns spell their classes out (`[0-9]`, `[A-Z]`), never `\d`, `\w` or `\s`, which match digits,
letters and spaces of every script in both regex engines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import polars as pl

Expr = Callable[[pl.Expr], pl.Expr]
TYPED = "__typed__"  # prefix of the parsed twin of each raw column while validating

ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
DECIMAL_PATTERN = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
# ISO-8601 / RFC 3339 with a `Z` or an offset, in ASCII: what polars' `%+` parser is allowed to see.
# `%+` alone also takes leading spaces, Unicode spaces before the zone, a `UTC` suffix and
# unpadded fields. A signed year of up to 6 digits gets through here so that it is reported by the
# year range rule, not as a malformed timestamp.
TIMESTAMP_PATTERN = (
    r"(?:[0-9]{4}|[+-][0-9]{4,6})-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})"
)
MAX_AMOUNT = 1_000_000
# The instants every later stage can hold: Python's datetime (serving's features, any Python
# reader of bronze) stops at years 1 and 9999. Microseconds since the epoch, as both forms see them.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_TIME_US = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // datetime.resolution
MAX_TIME_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // datetime.resolution

_UNICODE_WIDE = re.compile(r"\\[dDwWsSbB]")  # classes that are Unicode-wide in polars and in re


def _full(pattern: str) -> str:
    """`pattern` as a polars (Rust regex) full match: `$` there is the end of the text only."""
    return f"^(?:{pattern})$"


def parse_timestamp(col: pl.Expr) -> pl.Expr:
    """ISO-8601 with a `Z` or an offset, as UTC; null when the text is not one."""
    iso = col.str.contains(_full(TIMESTAMP_PATTERN))
    return pl.when(iso).then(col.str.to_datetime("%+", strict=False, time_zone="UTC", time_unit="us"))


def parse_decimal(col: pl.Expr) -> pl.Expr:
    return pl.when(col.str.contains(_full(DECIMAL_PATTERN))).then(col.cast(pl.Float64, strict=False))


@dataclass(frozen=True)
class Rule:
    """One rule a column must follow, in its two forms.

    `test(raw, parsed)` is a polars expression, True where the value is valid: `raw` is the text as
    it arrived, `parsed` the column's parsed value (parsed once, shared by every rule and by the
    stored value). `holds(raw, parsed)` is the same rule in plain Python, for one non-null value
    and its parsed form (str for text columns, float for amounts, microseconds since the epoch for
    timestamps), or None where the rule has no Python form (then the fast path is off for it).
    """

    name: str
    test: Callable[[pl.Expr, pl.Expr], pl.Expr]
    holds: Callable[[str, object], bool] | None = None
    # What JSON Schema can say of the rule (the service's OpenAPI spec): clients and fuzzers then
    # know which values pass, not only which fail. Empty where it can't say it.
    json_schema: dict = field(default_factory=dict)


def matches(pattern: str, what: str) -> Rule:
    """The raw text must match `pattern` whole (an ASCII pattern with its classes spelt out)."""
    if not pattern.isascii() or _UNICODE_WIDE.search(pattern):
        raise ValueError(f"contract patterns spell out ASCII classes ([0-9], not \\d): {pattern!r}")
    fullmatch = re.compile(pattern).fullmatch  # fullmatch: re's "$" also matches before a final \n
    return Rule(
        what,
        lambda raw, _: raw.str.contains(_full(pattern)),
        lambda raw, _: fullmatch(raw) is not None,
        {"pattern": _full(pattern)},  # a JSON Schema pattern matches anywhere unless anchored
    )


def one_of(values: tuple[str, ...], what: str) -> Rule:
    """The raw text must be exactly one of `values`."""
    allowed = frozenset(values)
    return Rule(
        what, lambda raw, _: raw.is_in(list(values)), lambda raw, _: raw in allowed, {"enum": list(values)}
    )


def at_most_chars(n: int, what: str) -> Rule:
    """At most `n` characters (code points: polars' len_chars and Python's len agree on them)."""
    return Rule(what, lambda raw, _: raw.str.len_chars() <= n, lambda raw, _: len(raw) <= n, {"maxLength": n})


def parses(what: str, json_schema: dict | None = None) -> Rule:
    """The column's parser made a value of the text (the fast path only has parsed values).
    `json_schema`: what JSON Schema can say of the texts that parse."""
    return Rule(
        what, lambda _, parsed: parsed.is_not_null(), lambda _, parsed: parsed is not None, json_schema or {}
    )


def between(
    what: str, lo: float, hi: float, closed: str, of: Expr = lambda p: p, json_schema: dict | None = None
) -> Rule:
    """`of(parsed)` must lie in [lo, hi] (`closed`: "both" or "right", as polars' is_between).
    `json_schema`: the range as JSON Schema says it, where the value is a JSON number."""
    low_ok = (lambda x: lo < x) if closed == "right" else (lambda x: lo <= x)
    return Rule(
        what,
        lambda _, parsed: of(parsed).is_between(lo, hi, closed=closed),
        lambda _, parsed: low_ok(parsed) and parsed <= hi,
        json_schema or {},
    )


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


TIME_RANGE = between(
    "must be within years 0001-9999 in UTC", MIN_TIME_US, MAX_TIME_US, "both", lambda p: p.dt.epoch("us")
)
# RFC 3339 date-times (JSON Schema's format) are a part of what parses.
_TIMESTAMP = (parses("must be ISO-8601 with a Z or an offset", {"format": "date-time"}), TIME_RANGE)
_ID = matches(ID_PATTERN, "must be 1-64 chars of [A-Za-z0-9_-]")

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
            pl.String(), True, (matches(r"[0-9]{4}", "must be exactly 4 digits (MCC)"),)
        ),
        "amount": Column(
            pl.Float64(),
            True,
            (
                # JSON Schema applies a pattern to strings only, and a range to numbers only.
                parses("must be a decimal number", {"pattern": _full(DECIMAL_PATTERN)}),
                between(
                    f"must be finite, > 0 and <= {MAX_AMOUNT}",
                    0,
                    MAX_AMOUNT,
                    "right",
                    json_schema={"exclusiveMinimum": 0, "maximum": MAX_AMOUNT},
                ),
            ),
            parse_decimal,
        ),
        "currency": Column(pl.String(), True, (matches(r"[A-Z]{3}", "must be 3 uppercase letters"),)),
        "country": Column(pl.String(), True, (matches(r"[A-Z]{2}", "must be 2 uppercase letters"),)),
        "channel": Column(
            pl.String(), True, (one_of(("pos", "ecom", "atm"), "must be one of pos, ecom, atm"),)
        ),
        "device_id": Column(pl.String(), False, (at_most_chars(64, "must be at most 64 chars"),)),
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
            (one_of(("0", "1"), "must be 0 or 1"),),
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
            # Only for instants in range: one outside is reported once, by TIME_RANGE, as serving
            # (which has no folder) reports it.
            rules.append(
                Rule(
                    f"UTC date must equal the folder's date {folder_date}",
                    lambda raw, parsed: pl.when(TIME_RANGE.test(raw, parsed)).then(
                        parsed.dt.date() == folder_date
                    ),
                )
            )
        checks = [check(r, name) for r in rules]
        columns[name] = pa.Column(pl.String, checks=checks, nullable=not col.required, required=True)
    return pa.DataFrameSchema(columns, name=feed.name, strict=False)
