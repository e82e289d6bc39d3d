"""A fast path through the landing contract for transactions in the usual, canonical form.

Evaluating the contract's rules in polars costs about a millisecond per call however few the
rows: several times everything else a one-transaction request costs. Most transactions arrive in
one canonical form (ASCII ids and codes, `YYYY-MM-DDTHH:MM:SS[.ffffff]` with `Z` or `+HH:MM`,
plain decimals), and for those plain Python can tell that every rule holds and parse the values
exactly as the contract does. The fast path only ever accepts: one value it is unsure of sends
the whole request to the contract's own rules (`validation.contract_problems`), which decide
every rejection and its reason.

Each shortcut was written for the contract rules (and parser) it names. If the contract changes
them for a column, that column's shortcut switches off, its values always go to the contract,
and test_serving_requests fails until the shortcut is reviewed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import date

from ml_assets.lib.contract import (
    ID_PATTERN,
    MAX_AMOUNT,
    TRANSACTIONS,
    Column,
    parse_decimal,
    parse_timestamp,
)
from ml_assets.serving.features import DAY, US, Tx

log = logging.getLogger(__name__)

UNSURE = object()  # the shortcut can't vouch for this value: ask the contract
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

_id = re.compile(ID_PATTERN).fullmatch  # fullmatch: "$" must not accept a trailing newline
_mcc = re.compile(r"[0-9]{4}").fullmatch  # ASCII digits only; the contract's \d is Unicode-wide
_decimal = re.compile(r"[0-9]{1,7}(?:\.[0-9]{1,12})?").fullmatch
_currency = re.compile(r"[A-Z]{3}").fullmatch
_country = re.compile(r"[A-Z]{2}").fullmatch
_timestamp = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
).fullmatch


def _matching(match: Callable) -> Callable[[str | None], object]:
    return lambda v: v if v is not None and match(v) else UNSURE


def _amount(v: str | None) -> object:
    if v is None or not _decimal(v):
        return UNSURE
    x = float(v)  # correctly rounded, as polars' cast is
    return x if 0 < x <= MAX_AMOUNT else UNSURE


def _event_time(v: str | None) -> object:
    """Microseconds since the epoch (UTC), as the contract's parser gives them."""
    m = _timestamp(v) if v is not None else None
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


def _device(v: str | None) -> object:
    return v if v is None or len(v) <= 64 else UNSURE


# column -> (the contract rules it was written for, the contract's parser, the shortcut)
_IDENTITY = Column.parse
SHORTCUTS: dict[str, tuple[tuple[str, ...], Callable, Callable[[str | None], object]]] = {
    "transaction_id": (("must be 1-64 chars of [A-Za-z0-9_-]",), _IDENTITY, _matching(_id)),
    "event_time": (("must be ISO-8601 with a Z or an offset",), parse_timestamp, _event_time),
    "card_id": (("must be 1-64 chars of [A-Za-z0-9_-]",), _IDENTITY, _matching(_id)),
    "merchant_id": (("must be 1-64 chars of [A-Za-z0-9_-]",), _IDENTITY, _matching(_id)),
    "merchant_category": (("must be exactly 4 digits (MCC)",), _IDENTITY, _matching(_mcc)),
    "amount": (
        ("must be a decimal number", f"must be finite, > 0 and <= {MAX_AMOUNT}"),
        parse_decimal,
        _amount,
    ),
    "currency": (("must be 3 uppercase letters",), _IDENTITY, _matching(_currency)),
    "country": (("must be 2 uppercase letters",), _IDENTITY, _matching(_country)),
    "channel": (
        ("must be one of pos, ecom, atm",),
        _IDENTITY,
        lambda v: v if v in ("pos", "ecom", "atm") else UNSURE,
    ),
    "device_id": (("must be at most 64 chars",), _IDENTITY, _device),
}


def _active() -> list[Callable[[str | None], object]] | None:
    """The shortcuts in contract column order, or None if any column's rules changed under them."""
    stale = [
        name
        for name, col in TRANSACTIONS.columns.items()
        if name not in SHORTCUTS
        or tuple(r.name for r in col.rules) != SHORTCUTS[name][0]
        or col.parse is not SHORTCUTS[name][1]
    ]
    if stale:
        log.warning("the contract changed for %s: the fast path is off, every request is judged by it", stale)
        return None
    return [SHORTCUTS[name][2] for name in TRANSACTIONS.columns]


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
