"""The embedded engine: one SQLite file (by default `<data root>/online/online.db`).

WAL mode; readers never block the writer. Every write is one `BEGIN IMMEDIATE` transaction, which
takes the file's write lock up front: two processes on the same file serialize instead of reading
the same window and both appending.

Two ways in, equally durable. The store's own connection (`begin`, `record`, the drain, the feed)
runs synchronous=FULL: a committed `record` is in the fsynced log before it returns, so it
survives kill -9 and a power cut; within a process it serves every thread, behind a lock. The
service's request path (`loop_calls`) runs the calls of concurrent requests on its event loop as
one transaction with synchronous=NORMAL, so that no fsync holds the write lock, and then
fdatasyncs the WAL once for every commit made before (the sync FULL makes inside each commit, made
once for all of them): in a thread while other requests have work on the loop, so that the loop
doesn't wait for the disk then; in the loop itself when no other has, since a hand-off to the
thread would only add its wake-ups. No request is answered before that sync covers what it
recorded or was answered from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from ml_assets.serving.online_store import (
    Begun,
    Call,
    Decision,
    OnlineStore,
    RiskTable,
    StoreUnavailable,
    merchants_by_day,
    past_of,
    windows_bounds,
)

SCHEMA = """
-- Clustered by (card_id, ts): a card's window is one contiguous range of the primary key, so it
-- costs the same however many older rows the card has. transaction_id makes appends idempotent.
-- No other index: each is one more page every request's commit writes, and forget_before (the
-- daily expiry) scans instead. (Stores made before drop theirs.)
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
DROP INDEX IF EXISTS history_ts;

-- The recorded decision per transaction (what a retry gets back) and the queue the drain reads:
-- apart, so that acking the queue keeps retries answered, and expiring old decisions never
-- drops one not yet drained. AUTOINCREMENT: a cursor's seq is never reused after an ack.
CREATE TABLE IF NOT EXISTS decisions (
    transaction_id TEXT PRIMARY KEY,
    scored_at INTEGER NOT NULL,
    payload TEXT NOT NULL
);
DROP INDEX IF EXISTS decisions_scored_at;
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


def windows_sql(cards: int) -> str:
    """The windows of `cards` cards over one ts range (parameters: the cards, then the range), in
    (card, ts) order: each card one range of the primary key, however long its history."""
    return (
        "SELECT card_id, ts, amount, device_id, country, channel, transaction_id FROM history"
        f" WHERE card_id IN ({','.join('?' * cards)}) AND ts >= ? AND ts <= ? ORDER BY card_id, ts"
    )


APPEND = "INSERT OR IGNORE INTO history VALUES (?, ?, ?, ?, ?, ?, ?)"
RECORDED = "SELECT transaction_id, payload FROM decisions WHERE transaction_id IN"
# Host parameters per statement (SQLite's limit is 32766): a batch's ids or cards, in chunks.
CHUNK = 500
# The service's loop waits for another process's write lock by trying again on each of its turns
# for BUSY_SPIN seconds (a replica holds it for tens of microseconds: nothing waits for the disk
# inside a transaction), then in sleeps from BUSY_FIRST_WAIT to BUSY_MAX_WAIT (a long write, such
# as the daily feed's, holds it for longer). Seconds; the event loop's timers count whole ms.
BUSY_SPIN, BUSY_FIRST_WAIT, BUSY_MAX_WAIT = 0.002, 0.001, 0.005
# How often the WAL-sync thread checkpoints the WAL into the database.
CHECKPOINT_SECONDS = 0.5
# The WAL starts again from its beginning only when a checkpoint has copied every frame and no
# writer came since; under steady traffic that never happens, and the file grows without bound
# (197 MB after 8,000 requests in one bench run). Past this many frames (64 MB of 4 KB pages) the
# checkpoint thread makes it happen: a RESTART checkpoint blocks writers while it copies what the
# passive one left (milliseconds) and waits for readers at most RESTART_WAIT_S, else tries later.
WAL_RESTART_FRAMES = 16384
RESTART_WAIT_S = 0.01

log = logging.getLogger(__name__)


class SqliteStore(OnlineStore):
    def __init__(self, url: str, *, lookback_days: int, timeout_s: float = 30.0):
        super().__init__(lookback_days)
        # sqlite:///relative.db, sqlite:////absolute.db (SQLAlchemy's and MLflow's convention)
        if not url.startswith("sqlite:///"):
            raise ValueError(f"expected sqlite:///path, got {url!r}")
        self.path = Path(url.removeprefix("sqlite:///"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        with self._errors():
            # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE.
            # timeout: how long a writer waits for another process's write lock.
            self._db = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._set_up()

    def _set_up(self) -> None:
        """WAL mode and the schema. Processes that open a new file at the same moment (`make serve
        WORKERS=2` on a fresh data root) can take its first locks in an order SQLite sees as a
        deadlock: it then answers "database is locked" at once, without waiting. So try again,
        for as long as a writer would wait (4 processes opening a new file at once: 11-18 rounds
        in 100 failed before)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)  # each statement IF (NOT) EXISTS: again is harmless
                return
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(BUSY_FIRST_WAIT)

    def _unavailable(self, e: Exception, doing: str = "") -> StoreUnavailable:
        return StoreUnavailable(f"online store sqlite:///{self.path}: {doing}{e}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        # One exception type for the service to answer 503 with, whichever engine.
        try:
            yield
        except sqlite3.OperationalError as e:
            raise self._unavailable(e) from e

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(), _transaction(self._db):
            yield self._db

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
    def _recorded(db: sqlite3.Connection, transaction_ids: list[str]) -> dict[str, str]:
        """transaction_id -> its recorded decision's payload, for those of `transaction_ids` that
        have one."""
        return dict(_rows_in(db, RECORDED, transaction_ids))

    # -- the request path ---------------------------------------------------------------------

    def begin(self, txs):
        with self._write() as db:
            return self._begin(db, txs)

    def record(self, decisions):
        with self._write() as db:
            return self._record(db, decisions)

    def merchant_risk(self, day):
        with self._read() as db:
            return self._merchant_risk(db, day)

    def loop_calls(self) -> _LoopCalls:
        return _LoopCalls(self)

    def _run_group(self, db: sqlite3.Connection, calls: list[Call]) -> list:
        """`calls` in one transaction on `db` (one commit for the lot): each one's result, or the
        exception it raised. First without savepoints (two statements a call); if a call fails
        on its own, that is rolled back and the group runs again with a savepoint for each call,
        so that only the failing one's writes are undone. A fault of the database itself
        (OperationalError) fails the whole group."""
        run = self._IN_TRANSACTION
        try:
            with _transaction(db):
                return [run[method](self, db, arg) for method, arg in calls]
        except sqlite3.OperationalError:
            raise
        except Exception:
            pass
        out = []
        with _transaction(db):
            for method, arg in calls:
                db.execute("SAVEPOINT call")
                try:
                    out.append(run[method](self, db, arg))
                except sqlite3.OperationalError:
                    raise
                except Exception as e:
                    db.execute("ROLLBACK TO call")
                    out.append(e)
                db.execute("RELEASE call")
        return out

    # Each statement over the whole call (a batch is a few statements, not a few per transaction).

    def _begin(self, db: sqlite3.Connection, txs) -> Begun:
        from ml_assets.serving.features import Past

        recorded = {
            i: Decision.from_json(p) for i, p in self._recorded(db, [tx.transaction_id for tx in txs]).items()
        }
        new = [tx for tx in txs if tx.transaction_id not in recorded]
        db.executemany(APPEND, [(tx.card_id, *_row(tx)) for tx in new])
        bounds = windows_bounds(new, self.lookback)
        windows: dict[str, list] = {card: [] for card in bounds}
        cards = list(bounds)
        for i in range(0, len(cards), CHUNK):
            chunk = cards[i : i + CHUNK]
            lo, hi = min(bounds[c][0] for c in chunk), max(bounds[c][1] for c in chunk)
            for card, *past in db.execute(windows_sql(len(chunk)), (*chunk, lo, hi)):
                lo_card, hi_card = bounds[card]
                if lo_card <= past[0] <= hi_card:  # the chunk's range is wider than this card's
                    windows[card].append(Past(*past))
        risk = {
            day: self._merchant_risk(db, day, merchants) for day, merchants in merchants_by_day(txs).items()
        }
        return Begun(recorded, windows, risk)

    def _record(self, db: sqlite3.Connection, decisions) -> dict[str, Decision]:
        payloads = [d.to_json() for d in decisions]
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO decisions VALUES (?, ?, ?)",
            [(d.transaction_id, d.scored_at, p) for d, p in zip(decisions, payloads, strict=True)],
        )
        if db.total_changes - before == len(decisions):  # every one new: the usual case
            db.executemany("INSERT INTO queue (payload) VALUES (?)", [(p,) for p in payloads])
            return {d.transaction_id: d for d in decisions}
        # Some were recorded first (by another replica, or earlier in this group): theirs stand.
        stored = self._recorded(db, [d.transaction_id for d in decisions])
        out, queued = {}, []
        for d, p in zip(decisions, payloads, strict=True):
            if stored[d.transaction_id] == p and d.transaction_id not in out:
                out[d.transaction_id] = d
                queued.append((p,))
            else:
                out[d.transaction_id] = Decision.from_json(stored[d.transaction_id])
        db.executemany("INSERT INTO queue (payload) VALUES (?)", queued)
        return out

    def _merchant_risk(
        self, db: sqlite3.Connection, day: date, merchants: list[str] | None = None
    ) -> RiskTable:
        """`day`'s table (with `merchants`, only their rows), or the latest earlier day's, stale."""
        (found,) = db.execute("SELECT max(day) FROM risk_days WHERE day <= ?", (day.isoformat(),)).fetchone()
        if found is None:
            return RiskTable(None, {}, True)
        select = "SELECT merchant_id, labels, frauds FROM merchant_risk WHERE day = ?"
        if merchants is None:
            rows = db.execute(select, (found,))
        else:
            rows = _rows_in(db, f"{select} AND merchant_id IN", merchants, found)
        table = {m: (labels, frauds) for m, labels, frauds in rows}
        found = date.fromisoformat(found)
        return RiskTable(found, table, found != day)

    _IN_TRANSACTION = {"begin": _begin, "record": _record}

    # -- merchant risk ------------------------------------------------------------------------

    def put_merchant_risk(self, day, table):
        with self._write() as db:
            db.execute("DELETE FROM merchant_risk WHERE day = ?", (day.isoformat(),))
            db.executemany(
                "INSERT INTO merchant_risk VALUES (?, ?, ?, ?)",
                [(day.isoformat(), m, labels, frauds) for m, (labels, frauds) in table.items()],
            )
            db.execute("INSERT OR IGNORE INTO risk_days (day) VALUES (?)", (day.isoformat(),))

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


def _rows_in(db: sqlite3.Connection, sql: str, values: list, *before) -> Iterator[tuple]:
    """The rows of `sql`, which ends in `IN`, for every one of `values` (after the parameters
    `before`), in statements of at most CHUNK of them."""
    for i in range(0, len(values), CHUNK):
        chunk = values[i : i + CHUNK]
        yield from db.execute(f"{sql} ({','.join('?' * len(chunk))})", (*before, *chunk))


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (an I/O error, a lock it waited too long for) can leave the transaction
        # open: every later BEGIN would fail with it.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class _LoopCalls:
    """The service's request path (`SqliteStore.loop_calls`), on its event loop: a group of calls
    is one transaction on a connection of its own, synchronous=NORMAL, so that it takes
    microseconds; then `_WalSync` makes it durable."""

    def __init__(self, store: SqliteStore):
        self.store = store
        with store._errors():
            # timeout=0: a write lock held by another process is waited for by the loop's own
            # sleeps (run_calls), never by SQLite's sleeping in the loop's thread.
            self._db = sqlite3.connect(store.path, timeout=0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # _WalSync checkpoints, off the loop
            self._sync = _WalSync(store)

    async def run_calls(self, calls: list[Call], alone: bool = False) -> list:
        first_busy, wait = None, BUSY_FIRST_WAIT
        while True:
            try:
                results = self.store._run_group(self._db, calls)
                break
            except sqlite3.OperationalError as e:
                now = time.monotonic()
                first_busy = first_busy or now
                if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or now - first_busy > self.store.timeout_s:
                    raise self.store._unavailable(e) from e
            # Another process holds the write lock: try again soon, serving other requests meanwhile.
            if now - first_busy < BUSY_SPIN:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(wait)
                wait = min(2 * wait, BUSY_MAX_WAIT)
        # A decision recorded, or read back for a retry (maybe another request's, committed but
        # not synced yet): durable before anyone is answered with it.
        if any(
            (call.method == "record" or (call.method == "begin" and result.recorded))
            for call, result in zip(calls, results, strict=True)
            if not isinstance(result, Exception)
        ):
            if alone:
                # No other request has work on this loop: waiting here costs nobody anything, and
                # the thread's hand-off cost 0.2-0.3 ms of wake-ups a sync (1 request at a time:
                # p50 0.76 against 0.89 ms, p99 1.3 against 2.2). A request arriving meanwhile
                # waits for the disk too; under load other requests are deciding, and the thread
                # syncs while the loop serves them.
                self._sync.sync_now()
            else:
                await self._sync.synced()
        return results

    async def aclose(self) -> None:
        self._sync.close()
        self._db.close()


class _WalSync:
    """fdatasync of the WAL file, in a thread (`synced`) or here and now (`sync_now`), once for
    every commit made before it (whoever made it: the file is one for every process). A second
    thread checkpoints the WAL into the database every CHECKPOINT_SECONDS (the event loop's
    connection never does): a checkpoint copies pages and syncs twice, for as long as the disk
    takes, and no sync waits for it."""

    def __init__(self, store: SqliteStore):
        self.store = store
        self._db = sqlite3.connect(store.path, timeout=store.timeout_s, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")  # a checkpoint syncs the WAL, then the database
        self._db.execute("SELECT count(*) FROM risk_days").fetchone()  # the WAL file exists after a read
        # From now on, how long a RESTART checkpoint waits for readers (writers wait for it meanwhile).
        self._db.execute(f"PRAGMA busy_timeout={round(RESTART_WAIT_S * 1000)}")
        # The WAL stays this file while any connection is open (ours are, until close).
        self._wal = os.open(f"{store.path}-wal", os.O_RDONLY)
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._sync, name="online-store-wal-sync", daemon=True),
            threading.Thread(target=self._checkpoint, name="online-store-checkpoint", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    async def synced(self) -> None:
        """Return once the WAL is synced past every commit made before the call."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.put((loop, future))
        await future

    def close(self) -> None:
        self._waiting.put(None)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            # Still in an fdatasync or a checkpoint: closing under it would let it sync or write
            # whatever file takes the descriptor's number next. Both go with the process instead.
            log.warning("online store: %s did not stop in 60 s; its WAL handle stays open", stuck)
            return
        os.close(self._wal)
        self._db.close()

    def _sync(self) -> None:
        while True:
            waiting = [self._waiting.get()]
            while True:  # every commit waiting now is covered by the one sync
                try:
                    waiting.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            if any(w is not None for w in waiting):
                error = None
                try:
                    self.sync_now()
                except StoreUnavailable as e:
                    error = e
                settled = defaultdict(list)
                for w in waiting:
                    if w is not None:
                        settled[w[0]].append(w[1])
                for loop, futures in settled.items():
                    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                        loop.call_soon_threadsafe(_settle, futures, error)
            if None in waiting:
                return

    def sync_now(self) -> None:
        """fdatasync of the WAL, here and now: every commit made before is durable after it."""
        try:
            os.fdatasync(self._wal)
        except OSError as e:
            raise self.store._unavailable(e, "syncing its WAL: ") from e

    def _checkpoint(self) -> None:
        while not self._stop.wait(CHECKPOINT_SECONDS):
            try:
                self.checkpoint()
            except sqlite3.Error as e:
                log.warning("online store sqlite:///%s: checkpoint failed: %s", self.store.path, e)

    def checkpoint(self) -> bool:
        """Copy the WAL into the database; past WAL_RESTART_FRAMES, make the next writer start the
        WAL again from its beginning. Whether it did."""
        _, frames, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # blocks no one
        if frames <= WAL_RESTART_FRAMES:
            return False
        busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        return not busy


def _settle(futures: list[asyncio.Future], error: Exception | None) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None) if error is None else future.set_exception(error)


def _row(tx) -> tuple:
    """A transaction's history columns after card_id: (ts, transaction_id, amount, device_id,
    country, channel), the table's order."""
    ts, amount, device_id, country, channel, transaction_id = past_of(tx)
    return ts, transaction_id, amount, device_id, country, channel
