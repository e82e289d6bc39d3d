"""Online store: the request path (`begin` then `record` of one transaction) at concurrency 8.

On SQLite (WAL, synchronous=FULL) and on Redis (AOF, appendfsync always), both on this machine's
disk and durable as production runs them, against an in-memory dict doing the same work in the
same process (what the service does today, and loses on kill -9). Eight threads share one store,
as requests share the service's; each card has some history first (`upsert_history`).

Then merchant risk with MERCHANTS merchants in a day's table: reading the whole table (what the
service read on each day's first request, and again at every poll, and the registered model on
every call, before requests read only their own merchants' rows with their `begin`) against a
`begin` of one new transaction, which reads its card's window, appends it and reads its merchant's
row.
"""

from __future__ import annotations

import bisect
import random
import signal
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import RESULTS, line, save

CARDS, HISTORY = 2000, 10  # transactions per card before the run
REQUESTS, WARMUP, CONCURRENCY = 3000, 200, 8
LOOKBACK_DAYS = 30
MERCHANTS = 100_000
US = 1_000_000
T0 = 1_768_478_400 * US  # 2026-01-15T12:00:00Z


class DictStore:
    """The baseline: begin and record on dicts behind a lock, no durability."""

    def __init__(self):
        self.cards: dict[str, list] = {}
        self.seen: set[str] = set()
        self.decisions: dict = {}
        self.queue: list = []
        self.lookback = LOOKBACK_DAYS * 86_400 * US
        self.lock = threading.Lock()

    def upsert_history(self, txs):
        self.begin(txs)

    def begin(self, txs):
        from ml_assets.serving.features import Past
        from ml_assets.serving.online_store import Begun

        with self.lock:
            recorded = {
                t.transaction_id: self.decisions[t.transaction_id]
                for t in txs
                if t.transaction_id in self.decisions
            }
            windows = {}
            for t in txs:
                if t.transaction_id in recorded:
                    continue
                past = self.cards.setdefault(t.card_id, [])
                if t.transaction_id not in self.seen:
                    self.seen.add(t.transaction_id)
                    p = Past(t.ts, t.amount, t.device_id, t.country, t.channel, t.transaction_id)
                    bisect.insort(past, p, key=_ts)
                lo = bisect.bisect_left(past, t.ts - self.lookback, key=_ts)
                windows[t.card_id] = past[lo : bisect.bisect_right(past, t.ts, key=_ts)]
            return Begun(recorded, windows, {})  # no risk (the engines look up a day none is written for)

    def record(self, decisions):
        with self.lock:
            for d in decisions:
                if d.transaction_id not in self.decisions:
                    self.decisions[d.transaction_id] = d
                    self.queue.append(d)
            return {d.transaction_id: self.decisions[d.transaction_id] for d in decisions}

    def close(self):
        pass


def _ts(p) -> int:
    return p.ts


def _transactions(seed: int = 7):
    from ml_assets.serving.features import Tx

    rng = random.Random(seed)
    cards = [f"card-{i}" for i in range(CARDS)]

    def one(i: int, ts: int) -> Tx:
        return Tx(
            f"tx-{i}", ts, rng.choice(cards), "m-1", "5411", round(rng.uniform(1, 200), 2), "FR", "pos", None
        )

    history = [one(i, T0 - rng.randrange(LOOKBACK_DAYS * 86_400) * US) for i in range(CARDS * HISTORY)]
    requests = [one(len(history) + i, T0 + i * 1000) for i in range(WARMUP + REQUESTS)]
    return history, requests


def _measure(store, history, requests) -> dict:
    from ml_assets.serving.online_store import Decision

    store.upsert_history(history)

    def request(t) -> float:
        t0 = time.perf_counter()
        begun = store.begin([t])
        if t.transaction_id not in begun.recorded:
            n = len(begun.windows[t.card_id])  # stands for the features: the store does no math
            store.record([Decision(t.transaction_id, "req", 0.1, "3", "champion", {"n": n}, t.ts)])
        return time.perf_counter() - t0

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(request, requests[:WARMUP]))
        t0 = time.perf_counter()
        latencies = sorted(pool.map(request, requests[WARMUP:]))
        wall = time.perf_counter() - t0
    return {
        "requests_per_s": round(REQUESTS / wall, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
    }


def _risk_reads(store) -> dict:
    """Median ms, MERCHANTS merchants in the day's table: reading it whole, and a one-transaction
    `begin` on that day."""
    from datetime import date

    day = date(2026, 1, 15)
    store.put_merchant_risk(day, {f"m-{i}": (i % 40, i % 3) for i in range(MERCHANTS)})
    noon = T0 + 3600 * US  # on `day`

    def ms(call, times: int) -> float:
        took = []
        for i in range(times):
            t0 = time.perf_counter()
            call(i)
            took.append(time.perf_counter() - t0)
        return round(statistics.median(took) * 1000, 3)

    def begin(i: int):
        from ml_assets.serving.features import Tx

        return store.begin([Tx(f"risk-{i}", noon + i, "card-risk", "m-4242", "5411", 9.5, "FR", "pos", None)])

    return {"whole_table_ms": ms(lambda _: store.merchant_risk(day), 5), "begin_ms": ms(begin, 50)}


def main() -> dict:
    from ml_assets.serving.online_store import open_store
    from ml_assets_tests.redis_support import RedisServer

    history, requests = _transactions()
    figures = {}
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:  # on disk (not tmpfs): fsync is real
        figures["dict"] = _measure(DictStore(), history, requests)
        with open_store(f"sqlite:///{tmp}/online.db", lookback_days=LOOKBACK_DAYS) as store:
            figures["sqlite"] = _measure(store, history, requests)
            figures["sqlite"]["risk"] = _risk_reads(store)
        server = RedisServer(Path(tmp))
        server.start()
        try:
            with open_store(server.url, lookback_days=LOOKBACK_DAYS) as store:
                figures["redis"] = _measure(store, history, requests)
                figures["redis"]["risk"] = _risk_reads(store)
        finally:
            server.kill(signal.SIGTERM)
    base = figures["dict"]
    setup = f"{CONCURRENCY} threads, {CARDS} cards x {HISTORY} history"
    print(f"  {REQUESTS} begin+record of one transaction, {setup}")
    for engine in ("sqlite", "redis"):
        f = figures[engine]
        print(line(f"{engine} throughput", f["requests_per_s"], "req/s", base["requests_per_s"], "dict"))
        print(line(f"{engine} p50", f["p50_ms"], "ms", base["p50_ms"], "dict"))
        print(line(f"{engine} p99", f["p99_ms"], "ms", base["p99_ms"], "dict"))
    print(f"  merchant risk of a day, {MERCHANTS} merchants in its table, median")
    for engine in ("sqlite", "redis"):
        whole, begin = figures[engine]["risk"]["whole_table_ms"], figures[engine]["risk"]["begin_ms"]
        print(line(f"{engine}: whole table", whole, "ms", begin, "a one-transaction begin"))
    save("online_store", figures)
    return figures


if __name__ == "__main__":
    main()
