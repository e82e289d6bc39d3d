"""The online store (ml_assets/serving/online_store), on both engines: a real SQLite file in a temp
dir, and a real redis-server this module starts on a free port (append-only, fsync always) and
stops by its PID. Processes are real too: concurrency and kill -9 run in child processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from ml_assets.serving.online_store import Decision, StoreUnavailable, open_store

LOOKBACK_DAYS = 30
US = 1_000_000
DAY = 86_400 * US
T = 1_768_478_400 * US  # 2026-01-15T12:00:00Z
ROOT = Path(__file__).resolve().parents[1]


def tx(i, ts, card="card-1", amount=10.0, device=None, country="FR", channel="pos"):
    from ml_assets.serving.features import Tx

    return Tx(f"tx-{i}", ts, card, "m-1", "5411", amount, country, channel, device)


def decision(i, score=0.5, request="req-1", version="3", scored_at=T):
    return Decision(f"tx-{i}", request, score, version, "champion", {"amount": 10.0, "avg": None}, scored_at)


@pytest.fixture
def store(engine):
    with open_store(engine[0], lookback_days=LOOKBACK_DAYS, timeout_s=2.0) as s:
        yield s


def ids(window):
    return [p.transaction_id for p in window]


# -- windows ---------------------------------------------------------------------------------


def test_window_edges_same_instant_and_out_of_order(store):
    """The window is every history row in [min_ts - lookback, max_ts], in time order, whatever
    order they arrived in; fed to transaction_features it gives the same features as the card's
    whole history would."""
    from ml_assets.serving.features import FeatureParams, Past, transaction_features

    edge = T - LOOKBACK_DAYS * DAY
    history = [
        tx(5, T + 1),  # after the transaction: not its history
        tx(1, edge - 1),  # one microsecond too old
        tx(3, T - 1, device="d-1"),
        tx(2, edge),  # exactly on the lookback's edge: counts
        tx(4, T, country="DE"),  # the same instant: in the window, not in the features
        tx(6, T - 5, card="card-2"),  # another card
    ]
    assert store.upsert_history(history) == 6
    new = tx(9, T, device="d-1", amount=30.0)
    begun = store.begin([new])
    assert begun.recorded == {}
    assert list(begun.windows) == ["card-1"]
    assert ids(begun.windows["card-1"]) in (
        ["tx-2", "tx-3", "tx-4", "tx-9"],
        ["tx-2", "tx-3", "tx-9", "tx-4"],
    )

    params = FeatureParams(LOOKBACK_DAYS, 30, 60, 0.02, 50.0, {"7d": 168}, {"pos": 0})
    whole = [Past(h.ts, h.amount, h.device_id, h.country, h.channel, h.transaction_id) for h in history]
    from_window = transaction_features(new, begun.windows["card-1"], (0, 0), params)
    assert from_window == transaction_features(
        new, [p for p, h in zip(whole, history, strict=True) if h.card_id == "card-1"], (0, 0), params
    )
    assert from_window["card_tx_count_7d"] == 1 and from_window["is_new_card_device"] == 0

    # A batch: one window per card from its earliest transaction's lookback to its latest.
    begun = store.begin([tx(10, T + 2), tx(11, edge + 1, card="card-1"), tx(12, T, card="card-3")])
    assert ids(begun.windows["card-1"])[:2] == ["tx-1", "tx-2"]  # edge + 1 - lookback reaches tx-1
    assert ids(begun.windows["card-1"])[-2:] == ["tx-5", "tx-10"]
    assert ids(begun.windows["card-3"]) == ["tx-12"]
    ts = [p.ts for p in begun.windows["card-1"]]
    assert ts == sorted(ts)


def test_windows_feed_the_same_features_as_the_whole_history(store):
    """Scoring a stream through the store (begin, features from its windows) gives exactly the
    features the pure function gives over everything the stream held until then (each card's whole
    history, in a plain list): batches, same instants, late arrivals, devices and countries."""
    import random

    import numpy as np

    from ml_assets.serving.features import FeatureParams, Past, as_vector, transaction_features

    params = FeatureParams(LOOKBACK_DAYS, 30, 60, 0.02, 50.0, {"1h": 1, "5d": 120}, {"pos": 0, "ecom": 1})
    seen: list = []  # every transaction begun so far, the reference's history
    rng = random.Random(3)
    stream, clock = [], T - 40 * DAY
    for i in range(400):
        clock += rng.choice([0, 0, 1, 60, 3600, DAY // US]) * US  # same instants, minutes, days
        late = rng.random() < 0.1  # arrives hours after later transactions
        stream.append(
            tx(i, clock - (rng.randrange(1, 48) * 3600 * US if late else 0), card=f"c{rng.randrange(6)}",
               amount=float(rng.randrange(1, 500)), device=rng.choice([None, "d1", "d2"]),
               country=rng.choice(["FR", "DE"]), channel=rng.choice(["pos", "ecom"]))
        )  # fmt: skip
    batches, i = [], 0
    while i < len(stream):
        n = rng.choice([1, 1, 1, 3, 8])
        batches.append(stream[i : i + n])
        i += n
    for batch in batches:
        seen += [
            (t.card_id, Past(t.ts, t.amount, t.device_id, t.country, t.channel, t.transaction_id))
            for t in batch
        ]
        expected = np.array(
            [
                as_vector(
                    transaction_features(t, [p for card, p in seen if card == t.card_id], (0, 0), params),
                    params.columns,
                )
                for t in batch
            ]
        )
        windows = store.begin(batch).windows
        ours = np.array(
            [
                as_vector(transaction_features(t, windows[t.card_id], (0, 0), params), params.columns)
                for t in batch
            ]
        )
        np.testing.assert_array_equal(ours, expected)


def test_long_history_window_costs_the_same(store, engine):
    """A card's window is read by the (card, ts) order: the same work with 3,000 older
    transactions as with none (SQLite: the query plan, and the VM steps the query takes; Redis:
    the commands the script runs, its window one ZRANGE BYSCORE over the lookback, which is
    O(log n + window))."""
    server = engine[1]

    def window_cost(i):
        if server is None:
            from ml_assets.serving.online_store.sqlite import windows_sql

            steps = []
            store._db.set_progress_handler(lambda: steps.append(1), 1)  # called at every VM step
            rows = store._db.execute(windows_sql(1), ("card-1", T - LOOKBACK_DAYS * DAY, T)).fetchall()
            store._db.set_progress_handler(None, 1)
            return [r[-1] for r in rows], len(steps)
        import redis

        # MONITOR shows every command a script runs, with its arguments: the query itself.
        r = redis.Redis(port=server.port, decode_responses=True, socket_timeout=10)
        with r.monitor() as monitor:
            window = ids(store.begin([tx(f"new-{i}", T)]).windows["card-1"])
            r.echo("measured")  # comes after the script's commands
            ran = []
            while (c := monitor.next_command())["command"] != "ECHO measured":
                if c["client_type"] == "lua":
                    name, key = c["command"].split()[:2]
                    ran.append(name.upper())
                    if ran[-1] == "ZRANGE" and key.startswith("{online}:card:"):
                        ran[-1] = "ZRANGE card"
                        assert c["command"] == f"ZRANGE {key} {T - LOOKBACK_DAYS * DAY} {T} BYSCORE"
                        assert key == "{online}:card:card-1"
        r.close()
        assert ran.count("ZRANGE card") == 1, ran
        return [w for w in window if not w.startswith("tx-new")], ran

    # Cards on either side in key order, so that neither measure ends at the end of the index.
    store.upsert_history([tx("recent", T - DAY), tx("a", T, card="card-0"), tx("z", T, card="card-2")])
    before = window_cost(1)
    store.upsert_history([tx(f"old-{i}", T - 2 * LOOKBACK_DAYS * DAY + i * US) for i in range(3000)])
    assert window_cost(2) == before == (["tx-recent"], before[1])
    if server is None:
        from ml_assets.serving.online_store.sqlite import windows_sql

        for cards in (1, 3):  # one transaction's card, and a batch's
            query = "EXPLAIN QUERY PLAN " + windows_sql(cards)
            plan = " ".join(row[-1] for row in store._db.execute(query, (*"abc"[:cards], 0, 1)))
            assert "SEARCH history USING PRIMARY KEY (card_id=? AND ts>? AND ts<?)" in plan, plan


# -- idempotency -----------------------------------------------------------------------------


def test_same_transaction_twice_is_history_once(store):
    """By transaction_id, not by content: a second copy that differs (a corrected time, another
    amount) is still the same transaction, and the first copy stays."""
    assert store.upsert_history([tx(1, T - DAY), tx(1, T - DAY)]) == 1
    assert store.upsert_history([tx(1, T - 2 * DAY, amount=99.0)]) == 0
    assert ids(store.begin([tx(2, T)]).windows["card-1"]) == ["tx-1", "tx-2"]
    # A transaction begun twice without a decision (the first attempt died before record) and
    # then seen again in bronze is history once.
    assert ids(store.begin([tx(2, T)]).windows["card-1"]) == ["tx-1", "tx-2"]
    assert store.upsert_history([tx(2, T)]) == 0
    # A request for a transaction bronze already holds, copied with other values: still once.
    window = store.begin([tx(1, T - DAY, amount=55.0), tx(3, T)]).windows["card-1"]
    assert ids(window) == ["tx-1", "tx-2", "tx-3"] and window[0].amount == 10.0


def test_retry_gets_its_recorded_decision(store):
    """A retried transaction's decision comes back as it was recorded (score, version, request
    id), and it is not history twice; when two replicas record the same transaction, the first
    stands and both get it."""
    assert store.begin([tx(1, T)]).recorded == {}
    first = decision(1, score=0.91, request="req-a", version="7")
    assert store.record([first]) == {"tx-1": first}

    begun = store.begin([tx(1, T), tx(2, T, card="card-2")])
    assert begun.recorded == {"tx-1": first}
    assert list(begun.windows) == ["card-2"]  # the retry's card is not read (nor appended to)
    assert ids(store.begin([tx(3, T)]).windows["card-1"]) == ["tx-1", "tx-3"]

    late = decision(1, score=0.12, request="req-b", version="8")
    assert store.record([late, decision(2)]) == {"tx-1": first, "tx-2": decision(2)}
    rows, _ = store.read_decisions()
    assert [(d.transaction_id, d.request_id) for d in rows] == [("tx-1", "req-a"), ("tx-2", "req-1")]


# -- atomicity -------------------------------------------------------------------------------


N_BEGINS = 150


def _append_worker(url, worker, ready, out, grouped):
    """Begin N_BEGINS single-transaction batches on one card, all at the same instant (so every
    window holds every transaction begun so far), each followed by its record, as a replica
    does: two thirds ids of its own, a third ids that both workers begin. `grouped`: as the
    service makes them (group commit on an event loop, four requests at a time), else one call at
    a time. Returns (worker, its windows)."""
    import asyncio

    from ml_assets.serving.online_store.group import GroupCommit

    def i_d(i):
        return f"shared-{i // 3}" if i % 3 == 0 else f"w{worker}-{i}"

    async def one_request(calls, i, windows):
        begun = await calls.begin([tx(i_d(i), T, card="hot")])
        if begun.recorded:  # a shared id the other worker already scored: its answer, no window
            return
        windows.append(ids(begun.windows["hot"]))
        await asyncio.sleep(0.001)  # scoring
        await calls.record([decision(i_d(i))])

    async def requests(s, windows):
        calls = GroupCommit(s)
        for i in range(0, N_BEGINS, 4):
            await asyncio.gather(*(one_request(calls, j, windows) for j in range(i, min(i + 4, N_BEGINS))))
        await calls.aclose()

    with open_store(url, lookback_days=LOOKBACK_DAYS) as s:
        tx(0, T)  # imports features.py now, not in the race
        ready.wait()  # both ready: they run side by side
        windows = []
        if grouped:
            asyncio.run(requests(s, windows))
        for i in range(N_BEGINS if not grouped else 0):
            begun = s.begin([tx(i_d(i), T, card="hot")])
            if begun.recorded:
                continue
            windows.append(ids(begun.windows["hot"]))
            # Scoring happens between begin and record; without a gap the writer holding SQLite's
            # lock takes it straight back, and the other (polling in SQLite's busy handler at
            # growing intervals) would wait until it is done: they would not race at all.
            time.sleep(0.001)
            s.record([decision(i_d(i))])
        out.put((worker, windows))


@pytest.mark.parametrize("grouped", [False, True], ids=["one_at_a_time", "group_commit"])
def test_concurrent_appends_to_one_card(engine, grouped):
    """Two processes appending to the same card at once lose nothing, duplicate nothing, and each
    begin is atomic: every window holds all that were begun before it, so the windows nest (a
    read-then-write lets two begins each miss the other's transaction). Also when each process
    commits the calls of several requests at once, as the service does."""
    import queue

    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_append_worker, args=(engine[0], w, ready, out, grouped)) for w in (1, 2)]
    for w in workers:
        w.start()
    windows = {}
    while len(windows) < 2:
        try:
            worker, got = out.get(timeout=1)
            windows[worker] = got
        except queue.Empty:
            assert all(w.exitcode in (None, 0) for w in workers), "a worker failed"
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    expected = {f"tx-shared-{i}" for i in range(N_BEGINS // 3)}
    expected |= {f"tx-w{w}-{i}" for w in (1, 2) for i in range(N_BEGINS) if i % 3}
    with open_store(engine[0], lookback_days=LOOKBACK_DAYS) as s:
        final = ids(s.begin([tx("last", T, card="hot")]).windows["hot"])
    assert sorted(final) == sorted(expected | {"tx-last"})  # nothing lost, nothing twice
    # Else the test proved nothing: one worker's begins all came after the other's.
    sizes = {w: [len(x) for x in ws] for w, ws in windows.items()}
    assert sizes[1][0] < sizes[2][-1] and sizes[2][0] < sizes[1][-1], "the workers did not overlap"
    chain = sorted((set(w) for ws in windows.values() for w in ws), key=len)
    for smaller, larger in zip(chain, chain[1:], strict=False):
        assert smaller <= larger, f"two begins each missed the other's transaction: {smaller ^ larger}"


def _open_at_once(urls, barrier, out):
    """Open the store at each of `urls` at the same moment as the other processes do; the
    failures, as text."""
    failures = []
    for url in urls:
        barrier.wait()
        try:
            with open_store(url, lookback_days=LOOKBACK_DAYS):
                pass
        except Exception as e:  # noqa: BLE001  (what the test reports)
            failures.append(f"{type(e).__name__}: {e}")
    out.put(failures)


def test_processes_opening_a_new_sqlite_store_at_once_all_open_it(tmp_path):
    """`make serve WORKERS=2` on a fresh data root: the workers open the new file at the same
    moment. SQLite can take their first locks for a deadlock and answer "database is locked" at
    once, without waiting (four processes: 11-18 rounds in 100 failed before). Each one opens it."""
    ctx = multiprocessing.get_context("spawn")
    urls = [f"sqlite:///{tmp_path / f'round-{r}' / 'online.db'}" for r in range(25)]
    barrier, out = ctx.Barrier(4), ctx.Queue()
    openers = [ctx.Process(target=_open_at_once, args=(urls, barrier, out)) for _ in range(4)]
    for p in openers:
        p.start()
    failures = [f for _ in openers for f in out.get(timeout=300)]
    for p in openers:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert failures == []


# -- group commit ----------------------------------------------------------------------------


def _grouped(store, requests):
    """Run `requests(calls)` (a coroutine function) on an event loop, through the service's group
    commit on `store`; returns (its result, the groups run, the calls they held)."""
    import asyncio

    from ml_assets.serving.online_store.group import GroupCommit

    async def run():
        calls = GroupCommit(store)
        try:
            return await requests(calls), calls.groups, calls.calls
        finally:
            await calls.aclose()

    return asyncio.run(run())


def test_group_commit_runs_concurrent_requests_calls_together_each_as_alone(store):
    """Requests in flight at once share commits (fewer groups than calls), and each gets what it
    would alone: its window (the group's earlier begins of its card included, as if they had come
    first), its recorded decision on a retry, and the decision that stands."""
    import asyncio

    async def requests(calls):
        first = await calls.begin([tx(1, T)])
        await calls.record([decision(1, request="req-a")])
        # Six at once: five new transactions of card-1, and a retry of tx-1.
        begun = await asyncio.gather(
            *(calls.begin([tx(i, T + i * US)]) for i in range(2, 7)), calls.begin([tx(1, T)])
        )
        standing = await asyncio.gather(
            *(calls.record([decision(i, request=f"req-{i}")]) for i in range(2, 7)),
            calls.record([decision(1, request="late")]),  # tx-1 was recorded first: req-a stands
        )
        return first, begun, standing

    (first, begun, standing), groups, calls = _grouped(store, requests)
    assert ids(first.windows["card-1"]) == ["tx-1"]
    windows = [ids(b.windows["card-1"]) for b in begun[:5]]
    assert windows == [[f"tx-{j}" for j in range(1, i + 1)] for i in range(2, 7)]
    assert begun[5].recorded == {"tx-1": decision(1, request="req-a")} and begun[5].windows == {}
    assert [s[f"tx-{i}"].request_id for i, s in zip(range(2, 7), standing, strict=False)] == [
        f"req-{i}" for i in range(2, 7)
    ]
    assert standing[5] == {"tx-1": decision(1, request="req-a")}
    assert (groups, calls) == (4, 14)  # begin, record, then the six begins as one and six records as one
    queued = [d.transaction_id for d in store.read_decisions()[0]]
    assert sorted(queued) == [f"tx-{i}" for i in range(1, 7)]  # each once: the late one was not queued


async def _deciding_until(calls, release):
    """A request between its begin and its record (scoring, on the loop) until `release` is set."""
    with calls.deciding():
        await release.wait()


def test_records_wait_for_the_records_of_requests_still_deciding(store, monkeypatch):
    """Records made on different turns of the loop commit as one while other requests are still
    deciding (between their begin and their record). A request that keeps deciding holds the
    others' records no longer than RECORD_WAIT: they are answered while it still decides."""
    import asyncio

    from ml_assets.serving.online_store import group

    async def request(calls, i, turns):
        with calls.deciding():
            await calls.begin([tx(i, T + i * US)])
            for _ in range(turns):  # scoring that ends on a later turn of the loop
                await asyncio.sleep(0)
        return await calls.record([decision(i)])

    async def together(calls):
        await asyncio.gather(*(request(calls, i, turns) for i, turns in [(1, 0), (2, 3), (3, 6)]))
        return calls.groups, calls.calls

    # A wait no slow machine outlasts: what is held is released by the last request, not the timer.
    monkeypatch.setattr(group, "RECORD_WAIT", 600.0)
    (groups, calls), _, _ = _grouped(store, together)
    assert (groups, calls) == (2, 6)  # the three begins, then the three records (one at a time: 4)
    monkeypatch.undo()

    async def beside_a_long_one(calls):
        release = asyncio.Event()
        task = asyncio.create_task(_deciding_until(calls, release))  # as long as the test says
        await asyncio.sleep(0)  # it is deciding now
        # If records waited for every request to finish deciding, this would never return.
        standing = await asyncio.wait_for(request(calls, 4, 0), timeout=60)
        still_deciding = not task.done()
        release.set()
        await task
        return standing, still_deciding

    (standing, still_deciding), _, _ = _grouped(store, beside_a_long_one)
    assert standing == {"tx-4": decision(4)} and still_deciding
    queued = sorted(d.transaction_id for d in store.read_decisions()[0])
    assert queued == [f"tx-{i}" for i in range(1, 5)]


@pytest.mark.parametrize(
    "beside", [False, True], ids=["alone_the_loop_syncs", "beside_another_a_thread_syncs"]
)
def test_a_decision_is_not_returned_until_the_sqlite_wal_is_synced(tmp_path, beside):
    """The service's SQLite path commits without waiting for the disk and then syncs the WAL once
    for all: in the loop when no other request has work there, else in a thread. When that sync
    fails, the record fails (the service answers 503), though its commit went through; a begin
    that recorded nothing is not held up by it."""
    import asyncio
    import os

    url = f"sqlite:///{tmp_path / 'online.db'}"

    async def requests(calls):
        wal_sync = calls._calls._sync
        wal, (unsyncable, w) = wal_sync._wal, os.pipe()
        wal_sync._wal = unsyncable  # fdatasync of a pipe fails (EINVAL), as a failing disk's would
        release = asyncio.Event()  # another request with work on the loop meanwhile
        other = asyncio.create_task(_deciding_until(calls, release)) if beside else None
        await asyncio.sleep(0)
        try:
            begun = await calls.begin([tx(1, T)])
            with pytest.raises(StoreUnavailable, match="syncing its WAL"):
                await calls.record([decision(1)])
        finally:
            wal_sync._wal = wal
            os.close(unsyncable)
            os.close(w)
            release.set()
            if other:
                await other
        return begun, await calls.begin([tx(1, T)])

    with open_store(url, lookback_days=LOOKBACK_DAYS) as s:
        (begun, retried), _, _ = _grouped(s, requests)
    assert ids(begun.windows["card-1"]) == ["tx-1"]
    assert retried.recorded == {"tx-1": decision(1)}  # committed, and now synced before it is answered


def test_the_sqlite_wal_starts_again_under_steady_writes(tmp_path, monkeypatch):
    """Past WAL_RESTART_FRAMES the checkpoint makes the next writer start the WAL from its
    beginning, so steady traffic doesn't grow it without bound; a reader in the way makes it give
    up after RESTART_WAIT_S (writers are blocked meanwhile) and try again later."""
    import sqlite3

    from ml_assets.serving.online_store import sqlite as engine

    monkeypatch.setattr(engine, "WAL_RESTART_FRAMES", 20)
    url = f"sqlite:///{tmp_path / 'online.db'}"

    def frames(db):  # frames in the WAL now (a passive checkpoint changes nothing for writers)
        return db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]

    async def requests(calls):
        wal_sync, db = calls._calls._sync, calls._calls._db
        await calls.record([decision(100)])
        assert not wal_sync.checkpoint()  # a few frames: nothing to restart
        for i in range(20):  # a commit each: more than 20 frames
            await calls.record([decision(i)])
        reader = sqlite3.connect(tmp_path / "online.db", isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM decisions").fetchone()  # a snapshot in the WAL
        held_up = wal_sync.checkpoint()
        reader.execute("COMMIT")
        reader.close()
        before = frames(db)
        restarted = wal_sync.checkpoint()
        await calls.record([decision(99)])
        return held_up, before, restarted, frames(db)

    with open_store(url, lookback_days=LOOKBACK_DAYS) as s:
        (held_up, before, restarted, after), _, _ = _grouped(s, requests)
        assert len(s.read_decisions()[0]) == 22  # nothing lost to it
    assert not held_up and before > 20
    assert restarted and after < before  # the WAL began again: only the last commit's frames


# -- durability ------------------------------------------------------------------------------

CHILD = """
import sys
from ml_assets.serving.online_store import Decision, open_store
store = open_store(sys.argv[1], lookback_days=30)
for i in range(100000):
    d = Decision(f"tx-{i}", f"req-{i}", i / 1000, "3", "champion", {"amount": float(i)}, 1)
    store.record([d])
    print("acked", i, flush=True)
"""


def test_acked_decisions_survive_kill_9(engine, tmp_path):
    """A decision record() returned for is there after the process (and, on Redis, the server)
    is killed with SIGKILL mid-stream: every acked one, once."""
    url, server = engine
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    acked = []
    for line in child.stdout:
        acked.append(f"tx-{line.split()[1]}")
        if len(acked) == 60:
            break
    os.kill(child.pid, signal.SIGKILL)
    if server:
        server.kill(signal.SIGKILL)
    # Whatever the pipe still held was acked too (printed after record returned).
    acked += [f"tx-{line.split()[1]}" for line in child.stdout if line.startswith("acked")]
    child.wait()
    if server:
        server.start()  # the same dir: it replays its AOF
    with open_store(url, lookback_days=LOOKBACK_DAYS) as s:
        rows, cursor = [], None
        while batch := s.read_decisions(cursor, 500):
            if not batch[0]:
                break
            rows += batch[0]
            cursor = batch[1]
        queued = [d.transaction_id for d in rows]
        assert len(queued) == len(set(queued))
        assert set(acked) <= set(queued), sorted(set(acked) - set(queued))[:5]
        assert s.begin([tx(acked[-1].removeprefix("tx-"), T)]).recorded[acked[-1]].request_id == (
            "req-" + acked[-1].removeprefix("tx-")
        )


def test_durable_settings(store, engine):
    """What kill -9 can't show (a power cut): the log is fsynced at every commit. SQLite: WAL and
    synchronous=FULL on the store's connection; Redis: the server this module runs is configured
    as production must be (the store warns otherwise)."""
    if engine[1] is None:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    else:
        config = store._r.config_get("append*")
        assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")


# -- merchant risk ---------------------------------------------------------------------------


def test_merchant_risk_of_the_day_and_stale_fallback(store):
    day = date(2026, 1, 15)
    assert store.merchant_risk(day) == (None, {}, True)
    store.put_merchant_risk(day - timedelta(days=2), {"m-1": (1, 0)})
    store.put_merchant_risk(day, {"m-1": (10, 2), "m-2": (3, 0)})
    assert store.merchant_risk(day) == (day, {"m-1": (10, 2), "m-2": (3, 0)}, False)
    # Not written yet: the latest earlier day's, flagged.
    assert store.merchant_risk(day + timedelta(days=1)) == (day, {"m-1": (10, 2), "m-2": (3, 0)}, True)
    assert store.merchant_risk(day - timedelta(days=1)) == (day - timedelta(days=2), {"m-1": (1, 0)}, True)
    # Rewritten whole (a merchant with no labels left is gone); an empty table is still written.
    store.put_merchant_risk(day, {"m-2": (4, 1)})
    assert store.merchant_risk(day) == (day, {"m-2": (4, 1)}, False)
    store.put_merchant_risk(day + timedelta(days=1), {})
    assert store.merchant_risk(day + timedelta(days=1)) == (day + timedelta(days=1), {}, False)


def test_begin_gives_the_merchant_risk_of_its_days_and_merchants_only(store):
    """What a request reads of merchant risk, with its begin: per event day of its transactions,
    the rows of that day's merchants only, from the table (and with the stale flag)
    `merchant_risk` gives for the day. Retries' days and merchants too: nothing depends on which
    transactions are new."""
    from ml_assets.serving.features import Tx

    def at(i, day: date, merchant: str) -> Tx:
        ts = (day - date(1970, 1, 1)).days * DAY + 9 * 3600 * US + i
        return Tx(f"r-{i}", ts, f"card-{i % 3}", merchant, "5411", 10.0, "FR", "pos", None)

    day = date(2026, 1, 15)
    assert store.begin([at(0, day, "m-1")]).risk == {day: (None, {}, True)}
    table = {f"m-{i}": (i, i % 3) for i in range(1, 1501)}  # more than a chunk of SQLite parameters
    store.put_merchant_risk(day, table)
    store.put_merchant_risk(day + timedelta(days=2), {"m-7": (70, 7)})
    batch = [at(1, day, "m-7"), at(2, day, "m-no-such"), at(3, day, "m-7"), at(4, day, "m-1500")]
    batch += [at(5 + i, day, m) for i, m in enumerate(list(table)[:1200])]  # one day, many merchants
    batch += [at(2000, day + timedelta(days=1), "m-3"), at(2001, day + timedelta(days=3), "m-7")]
    batch += [at(2002, day - timedelta(days=1), "m-3")]  # before any written day
    store.begin([batch[0]])
    store.record([dataclasses.replace(decision(0), transaction_id="r-1")])  # r-1 is a retry now
    begun = store.begin(batch)
    assert set(begun.recorded) == {"r-1"}
    for asked, expected_day in (
        (day, day), (day + timedelta(days=1), day), (day + timedelta(days=3), day + timedelta(days=2)),
        (day - timedelta(days=1), None),
    ):  # fmt: skip
        whole = store.merchant_risk(asked)
        merchants = {tx.merchant_id for tx in batch if tx.ts // DAY == (asked - date(1970, 1, 1)).days}
        assert begun.risk[asked] == (
            expected_day, {m: whole.table[m] for m in merchants if m in whole.table}, whole.stale_risk,
        ), asked  # fmt: skip
    assert len(begun.risk) == 4 and len(begun.risk[day].table) == 1201  # m-1..m-1200, m-1500
    # Names Lua or SQL could take for something else are only names.
    odd = {"all": (1, 1), "%": (3, 1), "'": (4, 2), "ARGV": (5, 0)}
    store.put_merchant_risk(day, odd)
    begun = store.begin([at(3000 + i, day, m) for i, m in enumerate([*odd, "_"])])
    assert begun.risk == {day: (day, odd, False)}


# -- the drain -------------------------------------------------------------------------------


def test_drain_is_repeatable_from_a_cursor_and_ack_drops(store):
    store.record([decision(i) for i in range(5)])
    first, c1 = store.read_decisions(None, 2)
    second, c2 = store.read_decisions(c1, 2)
    assert [d.transaction_id for d in first + second] == ["tx-0", "tx-1", "tx-2", "tx-3"]
    # A retried drain (its Delta write failed after reading) reads the same rows again.
    assert store.read_decisions(c1, 2) == (second, c2)
    assert store.read_decisions(None, 2) == (first, c1)
    assert store.read_decisions(c2, 10)[0] == [decision(4)]

    store.ack(c2)
    rest, c3 = store.read_decisions(None, 10)
    assert rest == [decision(4)]
    assert store.read_decisions(c1, 10) == (rest, c3)  # acked rows are gone, from any cursor
    assert store.read_decisions(c3, 10) == ([], c3)
    store.ack(c3)  # the queue is empty now: a new decision must still come after the cursor
    store.record([decision(5)])
    assert store.read_decisions(c3, 10)[0] == [decision(5)]
    # Acked is not forgotten: a retry still gets its decision.
    assert store.begin([tx(0, T)]).recorded == {"tx-0": decision(0)}


def test_forget_before_expires_history_and_old_decisions(store):
    store.upsert_history(
        [tx(i, T - (40 - i) * DAY) for i in range(10)] + [tx("x", T - 35 * DAY, card="other")]
    )
    store.record([decision("old", scored_at=T - 40 * DAY), decision("new", scored_at=T)])
    assert store.forget_before(T - 34 * DAY) == 7  # tx-0..tx-5 and tx-x
    assert ids(store.begin([tx("now", T - 25 * DAY)]).windows["card-1"]) == [
        f"tx-{i}" for i in range(6, 10)
    ] + ["tx-now"]
    assert store.begin([tx("x", T)]).windows["card-1"][-1].transaction_id == "tx-x"  # expired: appendable
    recorded = store.begin([tx("old", T), tx("new", T)]).recorded
    assert list(recorded) == ["tx-new"]
    assert len(store.read_decisions()[0]) == 2  # the queue keeps what is not drained yet


# -- unavailability and configuration --------------------------------------------------------


@pytest.mark.timeout(60)
def test_redis_down_raises_store_unavailable_and_recovers(redis_server):
    """Redis only (an embedded file has no server to lose): with the server gone, every call
    raises StoreUnavailable, without the URL's credentials; once it is back, the same store
    object works again."""
    server, url = redis_server, redis_server.url
    secret_url = url.replace("redis://", "redis://fraud:s3cret-pw@")
    with open_store(url, lookback_days=LOOKBACK_DAYS, timeout_s=0.5) as s:
        s.record([decision(1)])
        server.kill(signal.SIGKILL)
        for op in (lambda: s.begin([tx(2, T)]), lambda: s.record([decision(2)]), lambda: s.read_decisions()):
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{server.port}"):
                op()
        with open_store(secret_url, lookback_days=LOOKBACK_DAYS, timeout_s=0.5) as locked:
            with pytest.raises(StoreUnavailable) as e:
                locked.merchant_risk(date(2026, 1, 15))
            assert "s3cret" not in str(e.value) and "fraud" not in str(e.value)
            assert "s3cret" not in repr(e.value.__cause__) + repr(e.value.__context__)
        server.start()
        assert s.begin([tx(1, T)]).recorded == {"tx-1": decision(1)}  # the same store object recovers
        assert s.record([decision(2)]) == {"tx-2": decision(2)}
        # A restart nobody saw (no call while it was down): the pooled connection is dead, and
        # the call still succeeds (the pool reconnects it).
        server.kill(signal.SIGKILL)
        server.start()
        assert s.read_decisions()[0] == [decision(1), decision(2)]


def test_the_event_loops_redis_commands_are_packed_byte_for_byte_as_redis_py_packs_them():
    """The loop's connection packs with hiredis, redis-py's asyncio one in Python: the same bytes
    for what the store sends (text in any script, ints past 64 bits, floats, a command of two
    words such as SCRIPT LOAD, which the NOSCRIPT reload sends) and for a pipeline of them."""
    from redis.asyncio.connection import Connection

    from ml_assets.serving.online_store.redis import _HiredisPackedConnection

    commands = [
        ("EVALSHA", "a" * 40, 2, "{online}:card:é€𝟘", "k", "ü\r\n", -5, 2**63, 0.30000000000000004, 1e20),
        ("SCRIPT LOAD", "return redis.call('PING')"),
        ("XADD", "{online}:queue", "*", "d", '{"score": 0.1}'),
        ("HSET", b"\x00\xff", bytearray(b"x"), memoryview(b"yz")),
    ]
    for command in [*([c] for c in commands), commands]:
        packed = b"".join(_HiredisPackedConnection().pack_commands(command))
        assert packed == b"".join(Connection().pack_commands(command)), command


def test_default_url_and_factory(data_dir, monkeypatch):
    from ml_assets.lib import paths

    assert paths.online_store_url() == f"sqlite:///{data_dir / 'online' / 'online.db'}"
    with open_store(lookback_days=LOOKBACK_DAYS) as s:
        s.put_merchant_risk(date(2026, 1, 1), {})
    assert (data_dir / "online" / "online.db").exists()
    monkeypatch.setenv("ML_ASSETS_ONLINE_STORE", "redis://127.0.0.1:6379/0")
    assert paths.online_store_url() == "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="sqlite:// or redis://"):
        open_store("postgres://x/y", lookback_days=LOOKBACK_DAYS)
