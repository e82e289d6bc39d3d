"""Every kind of row the contract accepts, with the hostile rows it refuses beside them, through the
real ingestion job (landing files -> Delta) and the real dbt features build (DuckDB): the day
builds, and every accepted row has its feature row."""

from __future__ import annotations

import gzip
import json

import duckdb
import polars as pl

from ml_assets.lib import paths, tables
from ml_assets_tests.conftest import TX_COLUMNS, csv_bytes, label, load_defs, run_job, tx, write_landing
from ml_assets_tests.contract_corpus import DAY, EDGES, HOSTILE

# The hostile rows are a large share of this tiny day: let the quarantine gates pass it.
LENIENT = {
    "ops": {
        f"raw_{feed}_quarantined_share_within_limit": {"config": {"max_quarantined_share": 1}}
        for feed in ("transactions", "labels")
    }
}


def _write_day(landing) -> tuple[set[str], dict[str, list[str]]]:
    """The landing day; returns (ids that must be accepted, id -> reasons each hostile row must get)."""
    edges = [tx(i, day=DAY, **edge) for i, edge in enumerate(EDGES)]
    hostile = [tx(100 + i, day=DAY, **{f: v}) for i, (f, v, _) in enumerate(HOSTILE)]
    # Three files: LF with an unknown extra column; BOM, CRLF and columns in another order (with
    # the device_id holding quoted commas, quotes and newlines); gzip without the optional column.
    device_csv = next(i for i, e in enumerate(EDGES) if e["transaction_id"] == "e-device-csv")
    lf = [r for i, r in enumerate(edges[:10]) if i != device_csv]
    crlf, gz = [edges[device_csv], *edges[10:20]], edges[20:]
    rows = [{**r, "loyalty_tier": "gold, or not"} for r in lf + hostile]
    write_landing(landing, "transactions", DAY, "a.csv", csv_bytes(rows))
    reordered = csv_bytes(crlf, list(reversed(TX_COLUMNS)), "\r\n")
    write_landing(landing, "transactions", DAY, "b.csv", b"\xef\xbb\xbf" + reordered)
    no_device = csv_bytes(gz, [c for c in TX_COLUMNS if c != "device_id"])
    write_landing(landing, "transactions", DAY, "c.csv.gz", gzip.compress(no_device))
    labels = [
        label(transaction_id="x", labeled_at="2026-01-16T13:59:59+14:00", is_fraud="1", day=DAY),
        label(transaction_id="T" * 64, labeled_at=f"{DAY} 10:00:00Z", is_fraud="0", day=DAY),
        label(transaction_id="x", labeled_at="0000-01-15T10:00:00Z", day=DAY),  # quarantined
    ]
    write_landing(landing, "labels", DAY, "l.csv", b"\xef\xbb\xbf" + csv_bytes(labels, eol="\r\n"))
    reasons = {r["transaction_id"]: [why] for r, (_, _, why) in zip(hostile, HOSTILE, strict=True)}
    return {r["transaction_id"] for r in edges}, reasons


def test_every_accepted_kind_of_row_builds_features_and_hostile_rows_are_quarantined(data_dir):
    accepted, hostile = _write_day(data_dir / "landing")
    definitions = load_defs()
    ingestion = run_job(definitions, "ingestion_job", partition=DAY, run_config=LENIENT)
    assert ingestion.success, [e.message for e in ingestion.all_events if e.is_failure]

    lake = data_dir / "lake"
    bronze = pl.read_delta(str(lake / tables.BRONZE["transactions"]))
    assert set(bronze["transaction_id"]) == accepted
    quarantine = pl.read_delta(str(lake / tables.QUARANTINE["transactions"]))
    assert set(quarantine["level"]) == {"row"}
    rejected = quarantine.select("raw", "reasons").rows()
    by_id = {json.loads(raw)["transaction_id"]: why for raw, why in rejected}
    assert by_id == hostile
    stored = dict(bronze.select("transaction_id", "device_id").rows())
    assert stored["e-device-csv"] == 'a,b\n"c",\r\nd' and stored["e-device-64"] == "d" * 64
    assert stored["e-codes"] is None  # the gzip file has no device_id column
    labels = pl.read_delta(str(lake / tables.BRONZE["labels"]))
    assert sorted(labels["transaction_id"]) == ["T" * 64, "x"]

    features = run_job(definitions, "features_job", partition=DAY)
    assert features.success, [e.message for e in features.all_events if e.is_failure]
    with duckdb.connect(str(paths.warehouse_path()), read_only=True) as con:
        built = con.sql("select transaction_id, merchant_category_code from transaction_features").pl()
    assert sorted(built["transaction_id"]) == sorted(accepted)
    codes = dict(built.select("transaction_id", "merchant_category_code").rows())
    assert (codes["e-mcc-0"], codes["e-mcc-9"]) == (0, 9999)
