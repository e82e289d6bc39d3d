"""The online store: what the scoring service knows between requests, outside its process.

It holds three things, each so that any replica (or a restarted one) sees what the others did:

- each card's transactions over the lookback, once per transaction_id, in time order (so reading
  a window costs the same however long the card's life);
- merchant risk per event day, written by a pipeline asset, with a stale fallback to the latest
  earlier day while the day's table is not written yet;
- the durable queue of decisions, recorded before the service answers, drained into Delta by a
  Dagster asset, and the recorded decision per transaction_id, so that a retry gets the same answer.

The request path is two calls: `begin(txs)` returns the recorded decisions of retried
transactions and, for the others, their cards' windows, appending them to history in the same
atomic step; the caller computes features (ml_assets.serving.features, the store does no feature
math) and scores; `record(decisions)` makes the decisions durable. The service makes them through
`loop_calls`, on its event loop, the calls of several requests as one commit (group commit,
`group.GroupCommit`). Engines: an embedded SQLite file (the default, one host) and Redis (shared
by replicas), chosen by URL (`open_store`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, NamedTuple, Protocol

import orjson

if TYPE_CHECKING:  # features.py imports numpy and polars: only for the annotations here
    from ml_assets.serving.features import Past, Tx

US = 1_000_000
DAY = 24 * 3600 * US


class StoreUnavailable(RuntimeError):
    """The store can't be reached (or answered too late). The message never carries credentials."""


@dataclass(frozen=True)
class Decision:
    """One scored transaction, as recorded: what a retry gets back and what the drain writes."""

    transaction_id: str
    request_id: str
    score: float
    model_version: str
    arm: str
    features: dict[str, float | None]
    scored_at: int  # microseconds since the epoch (UTC)
    # The rest of the inference-log row (card, strategy, shadow scores...): opaque to the store,
    # carried to the drain as it was given.
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        # The instance's own dict holds the fields in their order (dataclasses.asdict deep-copies
        # every value first), and orjson writes it in a tenth of json.dumps' time: both on every
        # request. (Scores and features are finite numbers or null: JSON holds them exactly.)
        return orjson.dumps(self.__dict__, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Decision:
        return cls(**orjson.loads(text))


class RiskTable(NamedTuple):
    """Merchant risk for a day: merchant_id -> (labels, frauds)."""

    day: date | None  # the day whose table this is (None: no day written yet)
    table: dict[str, tuple[int, int]]
    stale_risk: bool  # True when `day` is earlier than the day asked for (or none is written)


class Begun(NamedTuple):
    """What `begin` found for a batch."""

    recorded: dict[str, Decision]  # transaction_id -> its decision, for the batch's retries
    # card_id -> its transactions with ts in [min_ts - lookback, max_ts] of the batch's new
    # transactions of that card, in time order, the batch's own included: `transaction_features`
    # keeps those strictly before each transaction, so a batch scores as if one by one.
    windows: dict[str, list[Past]]
    # Event day of each of the batch's transactions -> that day's merchant risk, as
    # `merchant_risk(day)` gives it but with only the rows of the batch's merchants of that day:
    # a request reads a few rows, however many merchants the table holds.
    risk: dict[date, RiskTable]


class Call(NamedTuple):
    """One request-path call, as `LoopCalls.run_calls` takes several: `begin` (its transactions)
    or `record` (its decisions)."""

    method: str
    arg: object


class LoopCalls(Protocol):
    async def run_calls(self, calls: list[Call], alone: bool = False) -> list:
        """Each call's result, or the exception it raised; a fault of the store itself
        (StoreUnavailable) raises, for all of them. Each call is as atomic as it is alone, and
        every record (and every recorded decision a begin returns) is durable when this
        returns. `alone`: no other request has work on the loop meanwhile (GroupCommit knows),
        so the engine may wait for its disk in the loop's own thread."""

    async def aclose(self) -> None: ...


class OnlineStore(ABC):
    """One interface, two engines (sqlite.py, redis.py). Cursors are opaque strings."""

    def __init__(self, lookback_days: int):
        self.lookback = lookback_days * DAY

    # -- the request path ---------------------------------------------------------------------

    @abstractmethod
    def begin(self, txs: list[Tx]) -> Begun:
        """For each transaction with a recorded decision, that decision; for the others, in one
        atomic step: their cards' windows, and the transactions appended to their cards' history
        (once per transaction_id). And the merchant risk of the batch's days and merchants."""

    @abstractmethod
    def record(self, decisions: list[Decision]) -> dict[str, Decision]:
        """Durably queue the decisions (fsynced when this returns), once per transaction_id.

        Returns transaction_id -> the decision that stands: the given one, or the one another
        replica recorded first (which the caller must answer instead)."""

    @abstractmethod
    def loop_calls(self) -> LoopCalls:
        """The request path as the service's event loop makes it: `run_calls` runs the calls of
        concurrent requests (group.GroupCommit gathers them) as one commit where the engine can
        (SQLite: one transaction; Redis: one round trip), without holding the loop while the
        store waits for its disk."""

    # -- merchant risk ------------------------------------------------------------------------

    @abstractmethod
    def put_merchant_risk(self, day: date, table: dict[str, tuple[int, int]]) -> None:
        """Replace `day`'s table whole (an empty one too: written, and no merchant has labels)."""

    @abstractmethod
    def merchant_risk(self, day: date) -> RiskTable:
        """`day`'s table, or the latest earlier day's flagged stale_risk while it is not written.
        (Every merchant's row: the request path reads only its own merchants', with `begin`.)"""

    # -- the drain ----------------------------------------------------------------------------

    @abstractmethod
    def read_decisions(
        self, after: str | None = None, limit: int = 1000
    ) -> tuple[list[Decision], str | None]:
        """Up to `limit` queued decisions after cursor `after` (None: from the start), in queue
        order, and the cursor of the last one (`after` when there are none). Reading again from
        the same cursor returns the same rows until they are acked."""

    @abstractmethod
    def ack(self, cursor: str) -> None:
        """The consumer has durably written every decision up to `cursor`: drop them from the
        queue. (Their recorded decisions stay for retries until `forget_before`.)"""

    # -- the pipeline feed --------------------------------------------------------------------

    @abstractmethod
    def upsert_history(self, txs: Iterable[Tx]) -> int:
        """Add bronze transactions to their cards' history (once per transaction_id); return how
        many were new."""

    @abstractmethod
    def forget_before(self, ts: int) -> int:
        """Expire history with ts < `ts`, and recorded decisions scored before `ts` (a retry is
        not expected after the lookback); return how many history rows went."""

    def close(self) -> None:  # noqa: B027 - an engine with nothing to close needs no override
        """Release connections."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(url: str | None = None, *, lookback_days: int, **options) -> OnlineStore:
    """The store at `url` (default `paths.online_store_url()`): sqlite:///path/online.db or
    redis://[user:password@]host:port/db. `options` go to the engine (e.g. Redis timeouts)."""
    if url is None:
        from ml_assets.lib import paths

        url = paths.online_store_url()
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from ml_assets.serving.online_store.sqlite import SqliteStore

        return SqliteStore(url, lookback_days=lookback_days, **options)
    if scheme in ("redis", "rediss", "unix"):
        from ml_assets.serving.online_store.redis import RedisStore

        return RedisStore(url, lookback_days=lookback_days, **options)
    raise ValueError(f"online store URL must start with sqlite:// or redis://, not {scheme}://")


# Query parameters that carry a credential (redis-py takes `?password=`, presigned URLs a signature).
_SECRET_QUERY = ("pass", "secret", "token", "key", "auth", "credential", "sig")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _host(hostname: str | None, port: int | None) -> str:
    host = f"[{hostname}]" if hostname and ":" in hostname else hostname or ""  # IPv6 keeps its brackets
    return f"{host}:{port}" if port else host


def redacted(url: str) -> str:
    """`url` without its user name, password and credential query parameters (as `***`): what
    messages, metadata, logs and /health/details may show."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed netloc (bad port, unclosed IPv6 bracket): show none of it
        return f"{url.split(':', 1)[0]}://***"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    hidden = [(k, "***" if any(w in k.lower() for w in _SECRET_QUERY) else v) for k, v in pairs]
    query = urlencode(hidden, safe="*") if hidden != pairs else parts.query
    netloc = f"***@{_host(parts.hostname, port)}" if "@" in parts.netloc else parts.netloc
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def address(url: str) -> str:
    """Which store `url` names, by scheme and host only (no credentials, path or query): what an
    answer may say about where the service reads and writes. A plain path is a `file://` store."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.scheme or 'file'}://{_host(parts.hostname, parts.port)}"
    except ValueError:
        return f"{url.split(':', 1)[0]}://***"


def scrubbed(text: str) -> str:
    """`text` (an error message, a log line) with every URI in it `redacted`."""
    return _URI.sub(lambda m: redacted(m.group(0)), text) if "://" in text else text


def past_of(tx: Tx) -> tuple:
    """A transaction as its card's history holds it (the fields of `Past`, in order)."""
    return (tx.ts, tx.amount, tx.device_id, tx.country, tx.channel, tx.transaction_id)


def merchants_by_day(txs: Iterable[Tx]) -> dict[date, list[str]]:
    """Event day -> the merchants of the transactions that day, each once: the merchant-risk rows
    `begin` reads for a batch."""
    from ml_assets.serving.features import event_day

    days: dict[date, dict[str, None]] = {}
    for tx in txs:
        days.setdefault(event_day(tx.ts), {})[tx.merchant_id] = None
    return {day: list(merchants) for day, merchants in days.items()}


def windows_bounds(txs: Iterable[Tx], lookback: int) -> dict[str, tuple[int, int]]:
    """card_id -> [min_ts - lookback, max_ts] over its transactions in `txs`."""
    bounds: dict[str, tuple[int, int]] = {}
    for tx in txs:
        lo, hi = bounds.get(tx.card_id, (tx.ts, tx.ts))
        bounds[tx.card_id] = (min(lo, tx.ts), max(hi, tx.ts))
    return {card: (lo - lookback, hi) for card, (lo, hi) in bounds.items()}
