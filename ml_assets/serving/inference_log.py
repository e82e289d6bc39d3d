"""The inference log: every prediction, in a Delta table partitioned by the day it was scored.

Requests hand their rows to a bounded buffer and return; a background thread writes them to Delta
in batches: on an interval, when enough rows wait, and on shutdown. When the buffer is full (the
lake is slow or down) a request's rows are dropped and counted (GET /health shows it) instead of
slowing the request path.
Monitoring reads this table (`tables.INFERENCE_LOG` under the lake).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

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
    """Log rows: `columns` holds ROW_COLUMNS (event_time and scored_at as microseconds since the
    epoch), `features` one row of FEATURE_COLUMNS per log row. One request's rows, or (as the
    writer's buffer) many requests' rows appended together."""

    columns: dict[str, list] = field(default_factory=lambda: {c: [] for c in ROW_COLUMNS})
    features: list[np.ndarray] = field(default_factory=list)
    rows: int = 0

    @classmethod
    def of(cls, columns: dict[str, list], features: np.ndarray) -> Chunk:
        return cls(columns, [features], len(features))

    def extend(self, other: Chunk) -> None:
        # list.extend per column: appending a request costs ~1 us, and the writer gets flat
        # columns (flattening thousands of small chunks in Python held the GIL for tens of ms).
        for c in ROW_COLUMNS:
            self.columns[c].extend(other.columns[c])
        self.features.extend(other.features)
        self.rows += other.rows


def to_frame(chunk: Chunk) -> pl.DataFrame:
    features = np.concatenate(chunk.features)
    frame = pl.DataFrame(
        {**chunk.columns, **{c: features[:, j] for j, c in enumerate(FEATURE_COLUMNS)}},
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
    """A bounded buffer of Chunks and the thread that appends them to the Delta table at `uri`.

    A request only appends to the buffer under a lock: the writer is not woken per request (that
    costs a thread switch each time), only when a batch is full, on flush and on close.
    """

    def __init__(
        self, uri: str, flush_seconds: float = 5.0, max_rows: int = 200_000, batch_rows: int = 50_000
    ):
        self.uri = uri
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows  # waiting to be written (queued, or failed and to be retried)
        self.batch_rows = batch_rows
        self._lock = threading.Lock()
        self._buffer = Chunk()
        self._writing = 0  # rows of the batch being written (they count against max_rows too)
        self._waiters: list[threading.Event] = []  # flush() calls waiting for the next write
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self.rows_written = 0
        self.rows_dropped = 0
        self.writes = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, chunk: Chunk) -> bool:
        """Buffer one request's rows without waiting; False (and counted) if the buffer is full."""
        with self._lock:
            if self._buffer.rows + self._writing + chunk.rows > self.max_rows:
                self.rows_dropped += chunk.rows
                return False
            self._buffer.extend(chunk)
            full = self._buffer.rows >= self.batch_rows
        if full:
            self._wake.set()
        return True

    def flush(self, timeout: float = 60.0) -> None:
        """Write everything buffered so far, and wait until the writer has tried."""
        done = threading.Event()
        with self._lock:
            self._waiters.append(done)
        self._wake.set()
        done.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write everything buffered, then stop the writer."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict:
        return {
            "table": self.uri,
            "buffered_rows": self._buffer.rows + self._writing,
            "rows_written": self.rows_written,
            "rows_dropped": self.rows_dropped,
            "writes": self.writes,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stop.is_set()
            with self._lock:
                batch, self._buffer = self._buffer, Chunk()
                waiters, self._waiters = self._waiters, []
                self._writing = batch.rows
            written = self._write(batch)
            with self._lock:
                if not written:  # keep the rows, ahead of what came meanwhile
                    batch.extend(self._buffer)
                    self._buffer = batch
                self._writing = 0
            for waiter in waiters:
                waiter.set()
            if stopping:
                return
            if not written:
                self._stop.wait(self.flush_seconds)  # a storage fault: don't retry in a tight loop

    def _write(self, batch: Chunk) -> bool:
        """Append `batch` in one commit; False if that failed (its rows are kept for the next try)."""
        if not batch.rows:
            return True
        from deltalake import write_deltalake

        try:
            frame = to_frame(batch)
            if dict(frame.schema) != SCHEMA:  # delta-rs casts some mismatches silently
                raise ValueError(f"inference log schema {dict(frame.schema)} != {SCHEMA}")
            write_deltalake(
                self.uri,
                frame.to_arrow(compat_level=pl.CompatLevel.oldest()),
                mode="append",
                partition_by=[PARTITION_COLUMN],
            )
        except Exception as e:  # storage faults must not kill the writer: keep the rows, retry later
            self.last_error = f"{type(e).__name__}: {e}"
            log.exception("inference log write failed (%s rows to retry)", batch.rows)
            return False
        self.rows_written += frame.height
        self.writes += 1
        return True
