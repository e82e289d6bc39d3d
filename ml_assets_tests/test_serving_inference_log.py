"""The inference log lands in Delta: every prediction, with its features, partitioned by scored day,
written in batches off the request path."""

from __future__ import annotations

import httpx
import numpy as np
import polars as pl

from ml_assets.lib import paths, tables
from ml_assets.lib.features import FEATURE_COLUMNS
from ml_assets.serving.inference_log import SCHEMA, Chunk, InferenceLog
from ml_assets_tests.conftest import tx
from ml_assets_tests.serving_support import service_and_server, shared_registry


def test_every_prediction_lands_in_the_delta_table_with_its_features(data_dir):
    from deltalake import DeltaTable

    registry = shared_registry()
    name = registry.register(aliases={"champion": 2})
    service, server = service_and_server(registry, name, paths.lake_uri(), log_flush_seconds=3600)
    responses = []
    with server, httpx.Client(base_url=server.url) as client:
        for i in range(30):
            responses.append(client.post("/predict", json=tx(i, amount=f"{10 + i}.25")).json())
        responses.append(client.post("/predict", json={"transactions": [tx(100), tx(101)]}).json())
        # Nothing was written on the request path; then all of it in one commit.
        assert client.get("/health").json()["inference_log"]["rows_written"] == 0
        service.inference_log.flush()
        assert client.get("/health").json()["inference_log"]["rows_written"] == 32
        assert service.inference_log.writes == 1

    uri = f"{paths.lake_uri()}/{tables.INFERENCE_LOG}"
    assert DeltaTable(uri).metadata().partition_columns == ["scored_date"]
    log = pl.read_delta(uri)
    assert dict(log.schema) == SCHEMA
    assert log.height == 32
    expected = {
        (r["request_id"], p["transaction_id"], p["model_version"], p["score"])
        for r in responses
        for p in r["predictions"]
    }
    logged = set(log.select("request_id", "transaction_id", "model_version", "score").iter_rows())
    assert logged == expected
    assert log["returned"].all() and set(log["strategy"]) == {"single"} and set(log["model_name"]) == {name}
    assert (log["scored_date"] == log["scored_at"].dt.date()).all()
    first = log.filter(pl.col("transaction_id") == "tx-3").row(0, named=True)
    assert first["amount"] == 13.25 and first["card_id"] == "card-3" and first["channel_code"] == 0
    assert str(first["event_time"]) == "2026-01-15 10:03:00+00:00"
    # A card's first transaction has no history: a null, as dbt has it (not a NaN).
    assert log["seconds_since_card_last_tx"].null_count() == 7  # one per card of tx(): 7 cards
    assert log.select(pl.col(FEATURE_COLUMNS).is_nan().any()).row(0) == (False,) * len(FEATURE_COLUMNS)


def test_the_log_is_written_on_its_interval_without_being_asked(tmp_path):
    import time

    log = InferenceLog(str(tmp_path / "log"), flush_seconds=0.2)
    log.start()
    log.submit(_chunk(4))
    deadline = time.monotonic() + 30
    while log.rows_written < 4:
        assert time.monotonic() < deadline, log.stats()
        time.sleep(0.05)
    assert pl.read_delta(str(tmp_path / "log")).height == 4
    log.close()


def test_the_log_is_written_on_shutdown_even_before_its_interval(data_dir):
    registry = shared_registry()
    name = registry.register(aliases={"champion": 1})
    service, server = service_and_server(registry, name, paths.lake_uri(), log_flush_seconds=3600)
    with server, httpx.Client(base_url=server.url) as client:
        for i in range(5):
            assert client.post("/predict", json=tx(i)).status_code == 200
        assert service.inference_log.rows_written == 0
    assert pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}").height == 5


def _chunk(rows: int) -> Chunk:
    columns = {
        "request_id": ["r"] * rows, "transaction_id": [f"t{i}" for i in range(rows)], "card_id": ["c"] * rows,
        "merchant_id": ["m"] * rows, "event_time": [0] * rows, "scored_at": [0] * rows,
        "strategy": ["single"] * rows, "arm": ["champion"] * rows, "alias": ["champion"] * rows,
        "model_name": ["x"] * rows, "model_version": ["1"] * rows, "score": [0.5] * rows,
        "returned": [True] * rows,
    }  # fmt: skip
    return Chunk.of(columns, np.zeros((rows, len(FEATURE_COLUMNS))))


def test_a_full_buffer_drops_and_counts_instead_of_blocking(tmp_path):
    log = InferenceLog(str(tmp_path / "log"), max_rows=6)  # the writer is not started: nothing drains
    assert log.submit(_chunk(3)) and log.submit(_chunk(3))
    assert not log.submit(_chunk(4))
    assert log.stats()["rows_dropped"] == 4
    log.start()
    log.close()
    assert pl.read_delta(str(tmp_path / "log")).height == 6


def test_a_failed_write_is_retried_and_reported(tmp_path):
    target = tmp_path / "log"
    target.write_text("a file where the table should be")
    log = InferenceLog(str(target), flush_seconds=0.05)
    log.start()
    log.submit(_chunk(2))
    log.flush()
    assert log.stats()["last_error"] and log.rows_written == 0
    target.unlink()
    log.close()  # the pending rows are written now
    assert log.rows_written == 2 and pl.read_delta(str(target)).height == 2
