"""The inference log: every prediction, in a Delta table partitioned by the day it was scored.

Requests hand their rows to a bounded queue and return; a background thread writes them to Delta
in batches: on an interval, when enough rows wait, and on shutdown. When the queue is full the
request's rows are dropped and counted (GET /health shows it) instead of slowing the request path.
Monitoring reads this table (`tables.INFERENCE_LOG` under the lake).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from ml_assets.lib.features import FEATURE_COLUMNS

log = logging.getLogger(__name__)

PARTITION_COLUMN = "scored_date"
SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "transaction_id": pl.String(),
    "card_id": pl.String(),
    "merchant_id": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
    "scored_at": pl.Datetime("us", "UTC"),
    PARTITION_COLUMN: pl.Date(),  # the UTC day of scored_at
    "strategy": pl.String(),
    "arm": pl.String(),
    "alias": pl.String(),
    "model_name": pl.String(),
    "model_version": pl.String(),
    "score": pl.Float64(),
    "returned": pl.Boolean(),  # False for a shadow score: logged, never returned to the caller
    **{c: pl.Float64() for c in FEATURE_COLUMNS},  # the model's input; null where it was missing
}
ROW_COLUMNS = [c for c in SCHEMA if c not in FEATURE_COLUMNS and c != PARTITION_COLUMN]


@dataclass
class Chunk:
    """The log rows of one request: `columns` holds ROW_COLUMNS (event_time and scored_at as
    microseconds since the epoch), `features` one row of FEATURE_COLUMNS per log row."""

    columns: dict[str, list]
    features: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.features)


def to_frame(chunks: list[Chunk]) -> pl.DataFrame:
    columns = {c: [v for ch in chunks for v in ch.columns[c]] for c in ROW_COLUMNS}
    features = np.vstack([ch.features for ch in chunks])
    frame = pl.DataFrame(
        {**columns, **{c: features[:, j] for j, c in enumerate(FEATURE_COLUMNS)}},
        schema_overrides={"event_time": pl.Int64, "scored_at": pl.Int64},
    )
    return (
        frame.with_columns(
            pl.col("event_time", "scored_at").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            pl.col(FEATURE_COLUMNS).fill_nan(None),
        )
        .with_columns(pl.col("scored_at").dt.date().alias(PARTITION_COLUMN))
        .select(list(SCHEMA))
    )


class InferenceLog:
    """A bounded queue of Chunks and the thread that appends them to the Delta table at `uri`."""

    _STOP = object()

    def __init__(self, uri: str, flush_seconds: float = 5.0, max_queued: int = 1000, batch_rows: int = 50000):
        self.uri = uri
        self.flush_seconds = flush_seconds
        self.batch_rows = batch_rows
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)  # in requests (<= max batch rows each)
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._pending_rows = 0
        self.rows_written = 0
        self.rows_dropped = 0
        self.writes = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, chunk: Chunk) -> bool:
        """Queue one request's rows without waiting; False (and counted) if the queue is full."""
        try:
            self._queue.put_nowait(chunk)
            return True
        except queue.Full:
            self.rows_dropped += chunk.rows
            return False

    def flush(self, timeout: float = 60.0) -> None:
        """Write everything queued so far, and wait until it is written."""
        done = threading.Event()
        self._queue.put(done, timeout=timeout)
        done.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, then stop the writer."""
        if self._thread.is_alive():
            self._queue.put(self._STOP, timeout=timeout)
            self._thread.join(timeout)

    def stats(self) -> dict:
        return {
            "table": self.uri,
            "queued_requests": self._queue.qsize(),
            "rows_written": self.rows_written,
            "rows_dropped": self.rows_dropped,
            "writes": self.writes,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        pending: list[Chunk] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if isinstance(item, Chunk):
                pending.append(item)
                self._pending_rows += item.rows
            flush_now = item is self._STOP or isinstance(item, threading.Event)
            if flush_now or time.monotonic() >= deadline or self._pending_rows >= self.batch_rows:
                pending = self._write(pending)
                deadline = time.monotonic() + self.flush_seconds
            if isinstance(item, threading.Event):
                item.set()
            elif item is self._STOP:
                return

    def _write(self, pending: list[Chunk]) -> list[Chunk]:
        """Append `pending` in one commit; return what is left to retry (nothing, unless it failed)."""
        if not pending:
            return []
        from deltalake import write_deltalake

        try:
            frame = to_frame(pending)
            if dict(frame.schema) != SCHEMA:  # delta-rs casts some mismatches silently
                raise ValueError(f"inference log schema {dict(frame.schema)} != {SCHEMA}")
            write_deltalake(
                self.uri,
                frame.to_arrow(compat_level=pl.CompatLevel.oldest()),
                mode="append",
                partition_by=[PARTITION_COLUMN],
            )
        except Exception as e:  # storage faults must not kill the writer: retry next time, bounded
            self.last_error = f"{type(e).__name__}: {e}"
            log.exception("inference log write failed (%s rows pending)", self._pending_rows)
            while pending and self._pending_rows > 10 * self.batch_rows:
                dropped = pending.pop(0).rows
                self.rows_dropped += dropped
                self._pending_rows -= dropped
            return pending
        self.rows_written += frame.height
        self.writes += 1
        self._pending_rows = 0
        return []
