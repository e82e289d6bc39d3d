"""The scoring service without HTTP: registry watcher, online features, routing, inference log.

`Service.predict` takes validated transactions and returns what the endpoint returns. It runs on
one thread (the server's event loop): card history is updated there only. A poller thread swaps
in a new `Deployment` when the registry's aliases or tags change, and refreshes merchant risk
when bronze labels change; the writer thread of the inference log writes what predict queued.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from datetime import UTC, datetime

import numpy as np

from ml_assets.lib import paths, tables
from ml_assets.serving.features import FeatureParams, FeatureState, Tx
from ml_assets.serving.inference_log import Chunk, InferenceLog
from ml_assets.serving.registry import Deployment, Registry
from ml_assets.serving.settings import ServingSettings
from ml_assets.serving.validation import RequestError

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: ServingSettings):
        self.settings = settings
        self.registry = Registry(settings.tracking_uri, settings.model_name)
        self.features = FeatureState(
            FeatureParams.from_dbt_project(), settings.lake_uri, paths.lake_storage_options()
        )
        self.inference_log = InferenceLog(
            f"{settings.lake_uri.rstrip('/')}/{tables.INFERENCE_LOG}",
            flush_seconds=settings.log_flush_seconds,
            max_rows=settings.log_max_rows,
        )
        self.deployment: Deployment | None = None
        self.last_poll: dict = {"at": None, "error": None}
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._poller = threading.Thread(target=self._poll_loop, name="registry-poller", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the models and the card history, then start the poller and the log writer. A
        registry that can't be read yet is not fatal: the service reports it, and keeps polling."""
        self.poll()
        loaded = self.features.load_history(self.settings.history_until)
        log.info("card history: %s transactions up to %s", loaded, self.features.history_until)
        # What startup loaded (modules, models, card history) lives as long as the process: keep
        # the garbage collector from walking it again and again (long pauses = slow requests).
        gc.freeze()
        self.inference_log.start()
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(timeout=30)
        self.inference_log.close()

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
            error = f"{type(e).__name__}: {e}"
            if error != self.last_poll["error"]:  # once, not every poll
                log.warning("registry poll failed: %s", error)
            self.last_poll = {"at": time.time(), "error": error}

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            self.poll()
            try:
                self.features.refresh()
            except Exception as e:
                log.warning("merchant risk refresh failed: %s", e)

    # -- requests ----------------------------------------------------------------------------

    def predict(self, txs: list[Tx]) -> dict:
        """Score validated transactions with the current deployment."""
        deployment = self.deployment  # read once: the whole request uses one deployment
        if deployment is None:
            raise RequestError(503, f"no model to serve: {self.settings.model_name!r} has no champion yet")
        features = self.features.features(txs)
        n = len(txs)
        split = deployment.split_key
        route = deployment.route([getattr(tx, split) for tx in txs] if split else [""] * n)
        scores = np.empty(n)
        serving = deployment.serving_arms
        parts = []  # (arm, row indices, scores) for the log
        for k, arm in enumerate(serving):
            rows = np.flatnonzero(route == k)
            if rows.size:
                scores[rows] = arm.booster.predict(features[rows], num_threads=self.settings.num_threads)
                parts.append((arm, rows, scores[rows]))
        for arm in deployment.shadow_arms:
            shadow_scores = arm.booster.predict(features, num_threads=self.settings.num_threads)
            parts.append((arm, np.arange(n), shadow_scores))

        request_id = uuid.uuid4().hex
        scored_at = datetime.now(UTC)
        self._log(deployment, request_id, scored_at, txs, features, parts)
        return {
            "request_id": request_id,
            "model_name": deployment.model_name,
            "strategy": deployment.config.strategy.value,
            "predictions": [
                {
                    "transaction_id": tx.transaction_id,
                    "score": float(score),
                    "model_version": arm.version,
                    "alias": arm.spec.alias,
                    "arm": arm.spec.name,
                }
                for tx, score, arm in zip(txs, scores, (serving[k] for k in route), strict=True)
            ],
        }

    def _log(self, deployment, request_id, scored_at, txs, features, parts) -> None:
        at = int(scored_at.timestamp() * 1_000_000)
        columns: dict[str, list] = {c: [] for c in ("transaction_id", "card_id", "merchant_id", "event_time")}
        columns |= {c: [] for c in ("arm", "alias", "model_version", "score", "returned")}
        for arm, rows, arm_scores in parts:
            for r in rows:
                tx = txs[r]
                columns["transaction_id"].append(tx.transaction_id)
                columns["card_id"].append(tx.card_id)
                columns["merchant_id"].append(tx.merchant_id)
                columns["event_time"].append(tx.ts)
            m = len(rows)
            columns["arm"] += [arm.spec.name] * m
            columns["alias"] += [arm.spec.alias] * m
            columns["model_version"] += [arm.version] * m
            columns["score"] += arm_scores.tolist()
            columns["returned"] += [arm.spec.returned] * m
        rows_logged = len(columns["score"])
        columns |= {
            "request_id": [request_id] * rows_logged,
            "scored_at": [at] * rows_logged,
            "strategy": [deployment.config.strategy.value] * rows_logged,
            "model_name": [deployment.model_name] * rows_logged,
        }
        self.inference_log.submit(Chunk.of(columns, np.vstack([features[rows] for _, rows, _ in parts])))

    # -- reports -----------------------------------------------------------------------------

    def model(self) -> dict:
        d = self.deployment
        return {
            "model_name": self.settings.model_name,
            "serving": d is not None,
            **(d.describe() if d else {}),
            "registry": {
                "tracking_uri": self.settings.tracking_uri,
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
            "features": {
                "cards": len(self.features.cards),
                "history_until": str(self.features.history_until) if self.features.history_until else None,
            },
            "inference_log": self.inference_log.stats(),
        }
        return (200 if d else 503), body
