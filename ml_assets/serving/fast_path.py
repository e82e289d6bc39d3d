"""A fast path through the landing contract for transactions in the usual, canonical form.

Evaluating the contract's rules in polars costs about a millisecond per call however few the
rows: several times everything else a one-transaction request costs. Most transactions arrive in
one canonical form (`YYYY-MM-DDTHH:MM:SS[.ffffff]` with `Z` or `+HH:MM`, plain decimals), and for
those plain Python can parse the values exactly as the contract does, then check every rule in
the Python form the contract itself gives it (`Rule.holds`: same pattern, set or bounds, written
once in `ml_assets.lib.contract`). The fast path only ever accepts: one value it can't parse, or
one that breaks a rule, sends the whole request to the contract's polars rules
(`validation.contract_problems`), which decide every rejection and its reason.

The parsers here were written for the contract parsers they name. If the contract changes a
column's parser, or gives it a rule without a Python form, that column's shortcut switches off,
its values always go to the contract, and test_serving_requests fails until it is reviewed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import date

from ml_assets.lib.contract import TRANSACTIONS, Column, parse_decimal, parse_timestamp
from ml_assets.serving.features import DAY, US, Tx

log = logging.getLogger(__name__)

UNSURE = object()  # the shortcut can't vouch for this value: ask the contract
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

# Canonical forms only: subsets of the contract's DECIMAL_PATTERN and TIMESTAMP_PATTERN.
_decimal = re.compile(r"[0-9]{1,7}(?:\.[0-9]{1,12})?").fullmatch
_timestamp = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
).fullmatch


def _amount(v: str) -> object:
    return float(v) if _decimal(v) else UNSURE  # correctly rounded, as polars' cast is


def _event_time(v: str) -> object:
    """Microseconds since the epoch (UTC), as the contract's parser gives them."""
    m = _timestamp(v)
    if m is None:
        return UNSURE
    y, mo, d, h, mi, s, frac, sign, oh, om = m.groups()
    try:
        day = date(int(y), int(mo), int(d))
    except ValueError:  # no such day, or year 0: the contract decides
        return UNSURE
    if int(h) > 23 or int(mi) > 59 or int(s) > 59 or (sign and (int(oh) > 23 or int(om) > 59)):
        return UNSURE  # a leap second or an odd offset: the contract decides
    offset = (int(oh) * 3600 + int(om) * 60) * (1 if sign == "+" else -1) if sign else 0
    seconds = int(h) * 3600 + int(mi) * 60 + int(s) - offset
    return (day.toordinal() - _EPOCH_ORDINAL) * DAY + seconds * US + int((frac or "").ljust(6, "0"))


# The contract's parser -> the fast parser written for it (raw text -> value, or UNSURE).
PARSERS: dict[Callable, Callable[[str], object]] = {
    Column.parse: lambda v: v,
    parse_decimal: _amount,
    parse_timestamp: _event_time,
}


def _shortcut(col: Column) -> Callable[[str | None], object]:
    parse, rules, required = PARSERS[col.parse], tuple(r.holds for r in col.rules), col.required

    def shortcut(v: str | None) -> object:
        if v is None:
            return UNSURE if required else None  # an optional null breaks no rule (fill_null(True))
        value = parse(v)
        if value is UNSURE:
            return UNSURE
        for holds in rules:  # a plain loop: all() over a generator costs more than the rules
            if not holds(v, value):
                return UNSURE
        return value

    return shortcut


def _active() -> list[Callable[[str | None], object]] | None:
    """The shortcuts in contract column order, or None if a column has a parser or a rule the
    fast path has no Python form for."""
    stale = [
        name
        for name, col in TRANSACTIONS.columns.items()
        if col.parse not in PARSERS or any(r.holds is None for r in col.rules)
    ]
    if stale:
        log.warning("the contract changed for %s: the fast path is off, every request is judged by it", stale)
        return None
    return [_shortcut(col) for col in TRANSACTIONS.columns.values()]


ACTIVE = _active()


def transactions(rows: list[list[str | None]]) -> list[Tx] | None:
    """The rows (raw text in contract column order) as transactions, if the fast path can vouch
    for every value; None if the contract's rules must judge them."""
    if ACTIVE is None:
        return None
    out = []
    for row in rows:
        values = [shortcut(v) for shortcut, v in zip(ACTIVE, row, strict=True)]
        if UNSURE in values:
            return None
        tx_id, ts, card, merchant, mcc, amount, _currency_, country, channel, device = values
        out.append(Tx(tx_id, ts, card, merchant, mcc, amount, country, channel, device))
    return out
