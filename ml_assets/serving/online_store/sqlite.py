"""The embedded engine: one SQLite file (by default `<data root>/online/online.db`).

WAL mode with synchronous=FULL: a committed `record` is in the fsynced log before it returns, so it
survives kill -9 (and a power cut); readers never block the writer. Every write is one
`BEGIN IMMEDIATE` transaction, which takes the file's write lock up front: two processes on the
same file serialize instead of reading the same window and both appending. Within a process one
connection serves every thread, behind a lock (SQLite writes one at a time anyway).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from ml_assets.serving.online_store import (
    Begun,
    Decision,
    OnlineStore,
    RiskTable,
    StoreUnavailable,
    past_of,
    windows_bounds,
)

SCHEMA = """
-- Clustered by (card_id, ts): a card's window is one contiguous range of the primary key, so it
-- costs the same however many older rows the card has. transaction_id makes appends idempotent.
CREATE TABLE IF NOT EXISTS history (
    card_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    transaction_id TEXT NOT NULL,
    amount REAL NOT NULL,
    device_id TEXT,
    country TEXT NOT NULL,
    channel TEXT NOT NULL,
    PRIMARY KEY (card_id, ts, transaction_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS history_transaction ON history (transaction_id);
CREATE INDEX IF NOT EXISTS history_ts ON history (ts);  -- forget_before

-- The recorded decision per transaction (what a retry gets back) and the queue the drain reads:
-- apart, so that acking the queue keeps retries answered, and expiring old decisions never
-- drops one not yet drained. AUTOINCREMENT: a cursor's seq is never reused after an ack.
CREATE TABLE IF NOT EXISTS decisions (
    transaction_id TEXT PRIMARY KEY,
    scored_at INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_scored_at ON decisions (scored_at);
CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL);

-- A day is written even when its table is empty: risk_days says which days are.
CREATE TABLE IF NOT EXISTS risk_days (day TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS merchant_risk (
    day TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    labels INTEGER NOT NULL,
    frauds INTEGER NOT NULL,
    PRIMARY KEY (day, merchant_id)
) WITHOUT ROWID;
"""
WINDOW = (
    "SELECT ts, amount, device_id, country, channel, transaction_id FROM history"
    " WHERE card_id = ? AND ts >= ? AND ts <= ? ORDER BY ts"
)
APPEND = "INSERT OR IGNORE INTO history VALUES (?, ?, ?, ?, ?, ?, ?)"


class SqliteStore(OnlineStore):
    def __init__(self, url: str, *, lookback_days: int, timeout_s: float = 30.0):
        super().__init__(lookback_days)
        # sqlite:///relative.db, sqlite:////absolute.db (SQLAlchemy's and MLflow's convention)
        if not url.startswith("sqlite:///"):
            raise ValueError(f"expected sqlite:///path, got {url!r}")
        self.path = Path(url.removeprefix("sqlite:///"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._errors():
            # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE.
            # timeout: how long a writer waits for another process's write lock.
            self._db = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        # One exception type for the service to answer 503 with, whichever engine.
        try:
            yield
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"online store sqlite:///{self.path}: {e}") from e

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # One snapshot for the statements of a read (WAL: it doesn't block writers).
        with self._lock, self._errors():
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    @staticmethod
    def _recorded(db: sqlite3.Connection, transaction_id: str) -> Decision | None:
        row = db.execute(
            "SELECT payload FROM decisions WHERE transaction_id = ?", (transaction_id,)
        ).fetchone()
        return Decision.from_json(row[0]) if row else None

    # -- the request path ---------------------------------------------------------------------

    def begin(self, txs):
        from ml_assets.serving.features import Past

        with self._write() as db:
            recorded = {}
            for tx in txs:
                if (decision := self._recorded(db, tx.transaction_id)) is not None:
                    recorded[tx.transaction_id] = decision
            new = [tx for tx in txs if tx.transaction_id not in recorded]
            db.executemany(APPEND, [(tx.card_id, *_row(tx)) for tx in new])
            windows = {
                card: [Past(*row) for row in db.execute(WINDOW, (card, lo, hi))]
                for card, (lo, hi) in windows_bounds(new, self.lookback).items()
            }
        return Begun(recorded, windows)

    def record(self, decisions):
        out = {}
        with self._write() as db:
            for d in decisions:
                payload = d.to_json()
                inserted = db.execute(
                    "INSERT OR IGNORE INTO decisions VALUES (?, ?, ?)",
                    (d.transaction_id, d.scored_at, payload),
                ).rowcount
                if inserted:
                    db.execute("INSERT INTO queue (payload) VALUES (?)", (payload,))
                    out[d.transaction_id] = d
                else:  # recorded first by another replica (or earlier in this batch): it stands
                    out[d.transaction_id] = self._recorded(db, d.transaction_id)
        return out

    # -- merchant risk ------------------------------------------------------------------------

    def put_merchant_risk(self, day, table):
        with self._write() as db:
            db.execute("DELETE FROM merchant_risk WHERE day = ?", (day.isoformat(),))
            db.executemany(
                "INSERT INTO merchant_risk VALUES (?, ?, ?, ?)",
                [(day.isoformat(), m, labels, frauds) for m, (labels, frauds) in table.items()],
            )
            db.execute("INSERT OR IGNORE INTO risk_days VALUES (?)", (day.isoformat(),))

    def merchant_risk(self, day):
        with self._read() as db:
            (found,) = db.execute(
                "SELECT max(day) FROM risk_days WHERE day <= ?", (day.isoformat(),)
            ).fetchone()
            if found is None:
                return RiskTable(None, {}, True)
            rows = db.execute("SELECT merchant_id, labels, frauds FROM merchant_risk WHERE day = ?", (found,))
            table = {m: (labels, frauds) for m, labels, frauds in rows}
        found = date.fromisoformat(found)
        return RiskTable(found, table, found != day)

    # -- the drain ----------------------------------------------------------------------------

    def read_decisions(self, after=None, limit=1000):
        with self._read() as db:
            rows = db.execute(
                "SELECT seq, payload FROM queue WHERE seq > ? ORDER BY seq LIMIT ?", (int(after or 0), limit)
            ).fetchall()
        return [Decision.from_json(p) for _, p in rows], str(rows[-1][0]) if rows else after

    def ack(self, cursor):
        with self._write() as db:
            db.execute("DELETE FROM queue WHERE seq <= ?", (int(cursor),))

    # -- the pipeline feed --------------------------------------------------------------------

    def upsert_history(self, txs: Iterable):
        with self._write() as db:
            before = db.total_changes
            db.executemany(APPEND, [(tx.card_id, *_row(tx)) for tx in txs])
            return db.total_changes - before

    def forget_before(self, ts):
        with self._write() as db:
            n = db.execute("DELETE FROM history WHERE ts < ?", (ts,)).rowcount
            db.execute("DELETE FROM decisions WHERE scored_at < ?", (ts,))
        return n

    def close(self):
        with self._lock:
            self._db.close()


def _row(tx) -> tuple:
    """A transaction's history columns after card_id: (ts, transaction_id, amount, device_id,
    country, channel), the table's order."""
    ts, amount, device_id, country, channel, transaction_id = past_of(tx)
    return ts, transaction_id, amount, device_id, country, channel
