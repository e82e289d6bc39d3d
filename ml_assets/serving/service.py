"""The scoring service without HTTP: registry watcher, online features, routing, decisions.

`Service.predict` takes validated transactions and returns what the endpoint returns. What it knows
between requests lives in the online store (ml_assets.serving.online_store), not in the process,
so any number of replicas (or a restarted one) score with the same card histories:

1. `store.begin(txs)`: a transaction already decided gets its recorded decision back (same score,
   version and request id; it is neither scored nor logged again); the others are appended to
   their cards' history, and their cards' windows come back, in one atomic step, with the merchant
   risk of the request's days and merchants (only their rows: a request reads a few however many
   merchants there are; written by the pipeline's `online_store_feed`, never computed here);
2. the features of the new ones, from those windows and that risk, by the same pure function dbt
   is held to;
3. scoring, by the deployment's arms;
4. `store.record(decisions)`: durable before the response. A 200 means every transaction of it is
   in its card's history and its decision queued for the inference log (the Dagster asset
   `inference_log` drains the queue into Delta).

The store calls of concurrent requests are committed together (online_store.group.GroupCommit:
several to a commit, without holding the event loop while the store waits for its disk when other
requests have work on it; a record waits up to a millisecond for those of requests still being
scored), each request answered only after its own. A store that can't be reached makes /predict
answer 503 with the reason; nothing is scored without being recorded. A poller thread swaps in a
new `Deployment` when the registry's aliases or tags change.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from functools import partial

import numpy as np

from ml_assets.lib.evaluation import decisions
from ml_assets.serving.features import FeatureParams, Tx, batch_features, event_day, matrix_of
from ml_assets.serving.online_store import (
    Decision,
    StoreUnavailable,
    address,
    open_store,
    redacted,
    scrubbed,
)
from ml_assets.serving.online_store.group import GroupCommit
from ml_assets.serving.predict import predict
from ml_assets.serving.registry import Deployment, Registry
from ml_assets.serving.settings import ServingSettings
from ml_assets.serving.validation import RequestError

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: ServingSettings):
        self.settings = settings
        self.params = FeatureParams.from_dbt_project()
        # Only versions whose own features these params compute are deployed.
        self.registry = Registry(settings.tracking_uri, settings.model_name, self.params.columns)
        self.store_url = settings.online_store
        # The store's lookback is the features' card lookback: a window holds exactly what
        # `transaction_features` can count.
        self.store = open_store(self.store_url, lookback_days=self.params.card_lookback_days)
        self.calls = GroupCommit(self.store)
        self.deployment: Deployment | None = None
        self.last_poll: dict = {"at": None, "error": None}
        self.store_state: dict = {"last_error": None, "last_error_at": None, "unavailable_answers": 0}
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._poller = threading.Thread(target=self._poll_loop, name="registry-poller", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the models, then start the poller. A registry that can't be read yet is not fatal:
        the service reports it, and keeps polling."""
        self.poll()
        # What startup loaded (modules, models) lives as long as the process: keep the garbage
        # collector from walking it again and again (long pauses = slow requests).
        gc.freeze()
        self._poller.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(timeout=30)
        await self.calls.aclose()
        self.store.close()

    def poll(self) -> None:
        """Read the registry once and swap in what it asks for (loading new versions first)."""
        with self._poll_lock:  # the poller thread, and anyone who asks for a poll now
            self._poll()

    def _poll(self) -> None:
        try:
            deployment = self.registry.resolve(self.deployment)
            if deployment is None and self.deployment is not None:
                raise RuntimeError("the registered model has no champion alias: still serving the last one")
            if deployment is not self.deployment:
                log.info("now serving %s", deployment.describe() if deployment else None)
                self.deployment = deployment  # one reference: a request sees the old or the new
            self.last_poll = {"at": time.time(), "error": None}
        except Exception as e:  # a registry fault must not stop serving what is loaded
            error = scrubbed(f"{type(e).__name__}: {e}")  # a store's URI in it loses its credentials
            if error != self.last_poll["error"]:  # once, not every poll
                log.warning("registry poll failed: %s", error)
            self.last_poll = {"at": time.time(), "error": error}

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            self.poll()

    # -- requests ----------------------------------------------------------------------------

    async def predict(self, txs: list[Tx], offload: Callable[[Callable], Awaitable] | None = None) -> dict:
        """Score validated transactions with the current deployment, through the online store.
        With `offload` (a batch's: a worker thread), the features and scores are computed there,
        off the event loop."""
        deployment = self.deployment  # read once: the whole request uses one deployment
        if deployment is None:
            raise RequestError(503, f"no model to serve: {self.settings.model_name!r} has no champion yet")
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        # A batch decided in a thread takes milliseconds: other requests' records don't wait for it.
        with self.calls.deciding() if offload is None else nullcontext():
            with self._store_calls():
                begun = await self.calls.begin(txs)
                new = [tx for tx in txs if tx.transaction_id not in begun.recorded]
            decide = partial(self._decide, deployment, request_id, new, begun.windows, begun.risk, started)
            decisions = await offload(decide) if offload else decide()
        with self._store_calls():
            # Before the response: a 200 is a durable decision. Another replica may have recorded
            # one of these transactions first: its decision stands, and is what we answer.
            standing = await self.calls.record(decisions) if decisions else {}
        decided = [begun.recorded.get(tx.transaction_id) or standing[tx.transaction_id] for tx in txs]
        earlier = {d.request_id for d in decided}
        return {
            # A whole retry answers with the request id it was first decided under.
            "request_id": earlier.pop() if len(earlier) == 1 and not decisions else request_id,
            "model_name": deployment.model_name,
            "strategy": deployment.config.strategy.value,
            "predictions": [
                {
                    "transaction_id": d.transaction_id,
                    "score": d.score,
                    # A decision recorded before decisions were (an older service's) has none.
                    "decision": d.extra.get("decision"),
                    "model_version": d.model_version,
                    "alias": d.extra.get("alias", ""),
                    "arm": d.arm,
                    "request_id": d.request_id,
                    "stale_risk": bool(d.extra.get("stale_risk", False)),
                }
                for d in decided
            ],
        }

    def _decide(
        self, deployment: Deployment, request_id: str, txs: list[Tx], windows, risk, started: float
    ) -> list[Decision]:
        """Features, routing and scores of the transactions not decided yet, as decisions.

        Each decision records the arm's latency: the request's time until that arm's scores
        (`started` is when the request reached the service), so a canary's p99 can be held to the
        champion's. An arm other than the champion that fails to score (its model raises, or gives
        a score that is not finite) is answered for by the champion, and the failure rides in the
        decision (`extra["failed"]`): the inference log makes it a row of its own, and the canary's
        error guard counts it. A champion that fails decides nothing: a 503 with the reason.
        """
        if not txs:
            return []
        features = batch_features(txs, windows, lambda day: risk[day].table, self.params)
        # Each arm's input is its own version's feature list (a champion trained before a feature
        # was added never sees it); the decision records every feature computed.
        used = deployment.serving_arms + deployment.shadow_arms
        inputs = {a.columns: matrix_of(features, list(a.columns)) for a in used}
        shared = time.perf_counter() - started  # the store and the features: every arm waits for them
        n = len(txs)
        split = deployment.split_key
        route = deployment.route([getattr(tx, split) for tx in txs] if split else [""] * n)
        serving = deployment.serving_arms
        answering = [serving[k] for k in route]  # the arm each transaction's answer comes from
        scores, latency_ms = np.empty(n), np.empty(n)
        failed: list[list[dict]] = [[] for _ in range(n)]
        champion = deployment.arms[0]  # loaded whatever its share: it answers for a failed arm
        for k, arm in enumerate(serving):
            rows = np.flatnonzero(route == k)
            if rows.size:
                got, seconds, error = score(arm, inputs[arm.columns][rows], self.settings.num_threads)
                if arm is champion and error:
                    raise _champion_failed(champion, error)
                scores[rows], latency_ms[rows] = got, (shared + seconds) * 1000
                for row in rows[np.isnan(got)]:
                    failed[row].append(_failure(arm, error, latency_ms[row]))
        if broken := [row for row in range(n) if failed[row]]:
            x = matrix_of([features[r] for r in broken], list(champion.columns))
            got, seconds, error = score(champion, x, self.settings.num_threads)
            if error:
                raise _champion_failed(champion, error)
            for row, value in zip(broken, got, strict=True):
                scores[row], latency_ms[row] = value, latency_ms[row] + seconds * 1000
                answering[row] = champion
        decided = [None] * n  # review / approve, by each answering arm's own threshold
        for arm in {id(a): a for a in answering}.values():
            rows = [i for i in range(n) if answering[i] is arm]
            for row, decision in zip(rows, decisions(scores[rows], arm.threshold), strict=True):
                decided[row] = decision
        # The store keeps one decision per transaction: a shadow arm's scores ride in the decision
        # (`extra["shadow"]`), and the inference log's drain makes them rows of their own.
        shadows = []
        for arm in deployment.shadow_arms:
            p, seconds, error = score(arm, inputs[arm.columns], self.settings.num_threads)
            shadows.append((arm, p, decisions(p, arm.threshold), (shared + seconds) * 1000, error))
        scored_at = int(datetime.now(UTC).timestamp() * 1_000_000)
        common = {"strategy": deployment.config.strategy.value, "model_name": deployment.model_name}
        out = []
        for i, tx in enumerate(txs):
            arm = answering[i]
            stale = risk[event_day(tx.ts)].stale_risk
            extra = common | {
                "alias": arm.spec.alias,
                "card_id": tx.card_id,
                "merchant_id": tx.merchant_id,
                "event_time": tx.ts,
                "stale_risk": stale,
                "decision": decided[i],
                "latency_ms": round(float(latency_ms[i]), 3),
                "failed": failed[i],
                "shadow": [
                    _failure(a, error, ms)
                    if np.isnan(s[i])
                    else {
                        "arm": a.spec.name,
                        "alias": a.spec.alias,
                        "model_version": a.version,
                        "score": float(s[i]),
                        "decision": shadow_decided[i],
                        "latency_ms": round(ms, 3),
                    }
                    for a, s, shadow_decided, ms, error in shadows
                ],
            }
            out.append(
                Decision(tx.transaction_id, request_id, float(scores[i]), arm.version, arm.spec.name,
                         features[i], scored_at, extra)
            )  # fmt: skip
        return out

    def _store_calls(self):
        return _StoreCalls(self)

    # -- reports -----------------------------------------------------------------------------

    def model(self) -> dict:
        d = self.deployment
        return {
            "model_name": self.settings.model_name,
            "serving": d is not None,
            **(d.describe() if d else {}),
            "registry": {
                "tracking_store": address(self.settings.tracking_uri),  # scheme and host only
                "versions_loaded": self.registry.loads,
                **self.last_poll,
            },
        }

    def health(self) -> tuple[int, dict]:
        d = self.deployment
        arms = [a.describe() for a in d.arms] if d else []
        body = {
            "status": "ok" if d else "no_model",
            "model_name": self.settings.model_name,
            "strategy": d.config.strategy.value if d else None,
            "arms": arms,
            "problems": list(d.problems) if d else [],
            "registry": self.last_poll,
            "online_store": {
                "url": redacted(self.store_url),
                **self.store_state,
                # Group commit: store calls made, and the commits they took (several to one when busy).
                "calls": self.calls.calls,
                "commits": self.calls.groups,
            },
            "pid": os.getpid(),  # which worker answered (`--workers N`: N processes, one port)
        }
        return (200 if d else 503), body


def score(arm, x, num_threads: int) -> tuple[np.ndarray, float, str | None]:
    """(the arm's scores of `x`, NaN where it failed; the seconds it took; why it failed, or
    None). A model that raises fails every row; one that gives a score that is not finite, that
    row."""
    began = time.perf_counter()
    try:
        p = np.asarray(predict(arm.booster, x, num_threads), dtype=float)
        error = None if np.isfinite(p).all() else "a score that is not a finite number"
        p = np.where(np.isfinite(p), p, np.nan)
    except Exception as e:  # noqa: BLE001  (any model fault is this arm's failure, not a 500)
        why = scrubbed(f"{type(e).__name__}: {e}")
        log.warning("%s v%s failed to score: %s", arm.spec.name, arm.version, why)
        p, error = np.full(len(x), np.nan), f"the model raised {type(e).__name__}"
    return p, time.perf_counter() - began, error


def _champion_failed(champion, error: str) -> RequestError:
    return RequestError(
        503,
        f"the champion v{champion.version} failed to score: {error}. Nothing was decided; retry the request.",
    )


def _failure(arm, error: str | None, latency_ms: float) -> dict:
    """An arm that failed to score a transaction, as its decision carries it."""
    return {
        "arm": arm.spec.name,
        "alias": arm.spec.alias,
        "model_version": arm.version,
        "error": error or "a score that is not a finite number",
        "latency_ms": round(float(latency_ms), 3),
    }


class _StoreCalls:
    """Store faults become a 503 with the reason (never another 5xx): StoreUnavailable's message
    names the store without credentials; anything else the store raises is named by its type only,
    since its text is not ours to vouch for."""

    def __init__(self, service: Service):
        self.service = service

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, e, tb) -> bool:
        if e is None or not isinstance(e, Exception):
            return False
        state = self.service.store_state
        state["unavailable_answers"] += 1
        state["last_error_at"] = time.time()
        if isinstance(e, StoreUnavailable):
            reason = str(e)
        else:
            log.exception("online store call failed")
            reason = f"online store {redacted(self.service.store_url)} failed: {type(e).__name__}"
        if reason != state["last_error"]:
            log.warning("answering 503: %s", reason)
        state["last_error"] = reason
        raise RequestError(
            503, f"{reason}. Retry the request: a transaction keeps the first decision recorded for it."
        ) from None
