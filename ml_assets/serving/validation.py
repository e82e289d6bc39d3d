"""Request bodies to validated transactions, by the landing contract's own rules.

A request carries landing-contract fields as JSON: one transaction object, or
`{"transactions": [...]}`. Values are the text the feed would carry (JSON strings; `amount` may
also be a JSON number, `device_id` null). Each value is then judged by exactly the rules
`ml_assets.lib.contract` declares for the feed, evaluated the same way ingestion evaluates them
(raw text plus its parsed twin, empty = null, a null verdict counts as valid), so a transaction
the service accepts is one ingestion would accept, and one it refuses gets ingestion's reasons.
Canonical transactions take `fast_path`, which can only accept; everything else is judged here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal

import polars as pl

from ml_assets.lib.contract import TRANSACTIONS, Column
from ml_assets.serving import fast_path
from ml_assets.serving.features import Tx, transactions_of

FIELDS = list(TRANSACTIONS.columns)
NUMERIC_FIELDS = {"amount"}  # fields a JSON number may stand for (written as decimal text)
MAX_PROBLEMS = 100  # listed in one error response; the count says how many there were
# Up to this many rows, `fast_path` (5 us a row, value by value); past it the contract's own
# polars rules judge the batch column by column at once, which costs about 1 ms however few the
# rows and 2 us a row: the cheaper from about 300 rows on.
FAST_PATH_ROWS = 256


@dataclass
class RequestError(Exception):
    """A request the service refuses: an HTTP status, a reason, and the rows and fields at fault."""

    status: int
    reason: str
    problems: list[dict] = field(default_factory=list)  # {"row", "field", "reason"}

    def body(self) -> dict:
        return {
            "error": self.reason,
            "problem_count": len(self.problems),
            "problems": self.problems[:MAX_PROBLEMS],
        }


def _problem(row: int | None, field_name: str | None, reason: str) -> dict:
    return {"row": row, "field": field_name, "reason": reason}


def _decimal_text(value: int | float) -> str:
    """A JSON number as the decimal text a feed would carry (no exponent): 1e-05 -> 0.00001."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan" / "inf": the contract rejects them as it would in a file
    if isinstance(value, float) and "e" not in (text := repr(value)):
        return text  # already that text, as a JSON amount usually is (238.49)
    return format(Decimal(repr(value) if isinstance(value, float) else value), "f")


def _text(value: object, name: str) -> str | None:
    """The raw text of one field (None for null, missing or empty); ValueError if it can't be one."""
    if value is None:
        return None
    if isinstance(value, str):
        value.encode("utf-8")  # a lone surrogate ("\ud800") is not text: UnicodeEncodeError
        return value or None  # empty means null, as in the feed
    if name in NUMERIC_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
        return _decimal_text(value)
    raise ValueError(f"{name} must be a string" + (" or a number" if name in NUMERIC_FIELDS else ""))


def read_body(body: bytes, max_batch: int) -> list[list[str | None]]:
    """The transactions of a request body, as raw text in FIELDS order.

    Raises RequestError: 400 for a body that is not JSON, 413 for more than `max_batch`
    transactions, 422 for the wrong shape or a value that is not text.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise RequestError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RequestError(422, 'body must be a JSON object: a transaction, or {"transactions": [...]}')
    if "transactions" in doc:
        items = doc["transactions"]
        if not isinstance(items, list) or not items:
            reason = "transactions must be a non-empty list of transactions"
            raise RequestError(422, reason, [_problem(None, "transactions", reason)])
        if len(items) > max_batch:
            raise RequestError(413, f"at most {max_batch} transactions per request, got {len(items)}")
    else:
        items = [doc]
    rows, problems = raw_rows(items)
    if problems:
        raise RequestError(422, "transactions have values of the wrong type", problems)
    return rows


def raw_rows(items: list) -> tuple[list[list[str | None]], list[dict]]:
    """Transactions (mappings of field to value) as raw text in FIELDS order, one row each, and
    the values that can't be text (such a value's row holds None for it). Column by column: a
    column of text, the usual case, is checked in one step."""
    objects = [isinstance(item, dict) for item in items]
    problems = [
        _problem(i, None, "a transaction must be a JSON object") for i, ok in enumerate(objects) if not ok
    ]
    columns = []
    for name in FIELDS:
        values = [item.get(name) if ok else None for item, ok in zip(items, objects, strict=True)]
        columns.append(_texts(values, name, problems))
    problems.sort(key=lambda p: (p["row"], -1 if p["field"] is None else FIELDS.index(p["field"])))
    return [list(row) for row in zip(*columns, strict=True)], problems


def _texts(values: list, name: str, problems: list[dict]) -> list[str | None]:
    """One field's values as raw text (`_text`), noting in `problems` those that can't be."""
    if all(type(v) is str for v in values):
        try:
            "".join(values).encode("utf-8")  # a lone surrogate anywhere fails it
            return [v or None for v in values]  # empty means null, as in the feed
        except UnicodeEncodeError:
            pass  # which one: value by value
    out = []
    for i, value in enumerate(values):
        try:
            out.append(_text(value, name))
        except (ValueError, UnicodeEncodeError) as e:
            reason = f"{name} must be valid UTF-8 text" if isinstance(e, UnicodeEncodeError) else str(e)
            problems.append(_problem(i, name, reason))
            out.append(None)
    return out


def _rule_checks() -> list[tuple[str, str, pl.Expr]]:
    """(field, reason, expression that is True where valid) for every contract rule and required field."""
    checks = []
    for name, col in TRANSACTIONS.columns.items():
        col: Column
        raw, parsed = pl.col(name), col.parse(pl.col(name))
        if col.required:
            checks.append((name, f"{name} is required", raw.is_not_null()))
        for rule in col.rules:
            # As ingestion: a null verdict counts as valid. A missing value is reported as required,
            # and by a rule that tests its parsed value (is_not_null), as ingestion reports it.
            checks.append((name, f"{name} {rule.name}", rule.test(raw, parsed).fill_null(True)))
    return checks


_CHECKS = _rule_checks()  # polars expressions are plain data: built once, evaluated per request
_TYPED = [col.parse(pl.col(n)).alias(n) for n, col in TRANSACTIONS.columns.items()]
_SCHEMA = {n: pl.String for n in FIELDS}
_TYPED_SCHEMA = {n: c.dtype for n, c in TRANSACTIONS.columns.items()}


def contract_problems(rows: list[list[str | None]]) -> tuple[pl.DataFrame, list[dict]]:
    """Judge raw rows by the contract: (the rows typed as bronze stores them, every broken rule)."""
    raw = pl.DataFrame({name: [row[i] for row in rows] for i, name in enumerate(FIELDS)}, schema=_SCHEMA)
    out = raw.select(*_TYPED, *(ok.alias(f"_ok{i}") for i, (_, _, ok) in enumerate(_CHECKS)))
    problems = []
    for i, (name, reason, _) in enumerate(_CHECKS):
        ok = out[f"_ok{i}"]
        if not ok.all():
            problems += [_problem(r, name, reason) for r in ok.not_().arg_true().to_list()]
    problems.sort(key=lambda p: (p["row"], FIELDS.index(p["field"])))
    return out.select(FIELDS).cast(_TYPED_SCHEMA), problems


def batch_problems(rows: list[list[str | None]]) -> tuple[pl.DataFrame, list[dict]]:
    """`contract_problems`, and transaction_ids repeated in the batch: like the feed, a
    transaction_id is unique, and in a batch a repeat would be scored twice."""
    typed, problems = contract_problems(rows)
    dup = typed.select(pl.col("transaction_id").is_duplicated().arg_true()).to_series().to_list()
    problems += [_problem(r, "transaction_id", "transaction_id must be unique in the batch") for r in dup]
    return typed, problems


def validate(body: bytes, max_batch: int) -> list[Tx]:
    """A request body as validated transactions, or RequestError naming every problem."""
    rows = read_body(body, max_batch)
    if len(rows) <= FAST_PATH_ROWS:
        txs = fast_path.transactions(rows)
        if txs is not None and len({tx.transaction_id for tx in txs}) == len(txs):
            return txs
    typed, problems = batch_problems(rows)
    if problems:
        raise RequestError(422, "transactions break the landing contract", problems)
    return transactions_of(typed)


def request_body_schema(max_batch: int) -> dict:
    """The OpenAPI schema of a request body, from the contract's columns: each rule in the
    description, and as JSON Schema where JSON Schema can say it (a pattern, an enum, a range)."""
    props = {}
    for name, col in TRANSACTIONS.columns.items():
        types = ["string"] + (["number"] if name in NUMERIC_FIELDS else [])
        types += [] if col.required else ["null"]
        rules = "; ".join(r.name for r in col.rules)
        props[name] = {"type": types if len(types) > 1 else types[0], "description": rules}
        for rule in col.rules:
            props[name] |= rule.json_schema
    transaction = {"type": "object", "properties": props, "required": TRANSACTIONS.required}
    items = {"type": "array", "items": transaction, "minItems": 1, "maxItems": max_batch}
    batch = {"type": "object", "properties": {"transactions": items}, "required": ["transactions"]}
    return {"anyOf": [transaction, batch]}
