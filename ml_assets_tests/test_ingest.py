"""Every rule of the landing contract, through the validation that feeds bronze and quarantine."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime

import polars as pl
import pytest

from ml_assets.lib.contract import LABELS, TRANSACTIONS
from ml_assets.lib.ingest import ingest_partition
from ml_assets_tests.conftest import TX_COLUMNS, csv_bytes, label, tx, write_landing

DAY = "2026-01-15"


def _ingest(tmp_path, rows, feed=TRANSACTIONS, name="part-0.csv", day=DAY, **kw):
    write_landing(tmp_path, feed.name, day, name, csv_bytes(rows, **kw) if isinstance(rows, list) else rows)
    return ingest_partition(feed, tmp_path / feed.name / f"date={day}", date.fromisoformat(day))


def _reasons(result) -> list[list[str]]:
    return result.quarantine.sort("line")["reasons"].to_list()


def test_valid_rows_are_typed_and_traced(tmp_path):
    r = _ingest(tmp_path, [tx(1), tx(2, event_time="2026-01-16T00:30:00+01:00", device_id="dev-9")])
    assert r.stats()["rows_ingested"] == 2 and r.quarantine.height == 0
    row = r.bronze.sort("transaction_id").row(1, named=True)
    assert row["event_time"] == datetime(2026, 1, 15, 23, 30, tzinfo=UTC)  # stored as UTC
    assert row["amount"] == 12.5 and row["device_id"] == "dev-9"
    assert row["event_date"] == date(2026, 1, 15)
    assert (row["_source_file"], row["_source_line"]) == ("part-0.csv", 3)
    assert r.bronze.sort("transaction_id")["device_id"][0] is None  # empty optional means null


@pytest.mark.parametrize(
    "override, reason",
    [
        ({"transaction_id": "tx 1"}, "transaction_id must be 1-64 chars of [A-Za-z0-9_-]"),
        ({"transaction_id": "x" * 65}, "transaction_id must be 1-64 chars of [A-Za-z0-9_-]"),
        ({"transaction_id": ""}, "transaction_id is required"),
        (
            {"event_time": "2026-01-15T10:00:00"},
            "event_time must be ISO-8601 with a Z or an offset",
        ),
        ({"event_time": "yesterday"}, "event_time must be ISO-8601 with a Z or an offset"),
        (
            {"event_time": "2026-01-16T10:00:00Z"},
            "event_time UTC date must equal the folder's date 2026-01-15",
        ),
        (
            {"event_time": "2026-01-15T23:30:00-02:00"},
            "event_time UTC date must equal the folder's date",
        ),
        ({"card_id": ""}, "card_id is required"),
        ({"card_id": "card#1"}, "card_id must be 1-64 chars of [A-Za-z0-9_-]"),
        ({"merchant_id": "m/1"}, "merchant_id must be 1-64 chars of [A-Za-z0-9_-]"),
        ({"merchant_category": "541"}, "merchant_category must be exactly 4 digits (MCC)"),
        ({"merchant_category": "54a1"}, "merchant_category must be exactly 4 digits (MCC)"),
        ({"amount": "0"}, "amount must be finite, > 0 and <= 1000000"),
        ({"amount": "-3.10"}, "amount must be finite, > 0 and <= 1000000"),
        ({"amount": "1000000.01"}, "amount must be finite, > 0 and <= 1000000"),
        ({"amount": "inf"}, "amount must be a decimal number"),
        ({"amount": "NaN"}, "amount must be a decimal number"),
        ({"amount": "12,5"}, "amount must be a decimal number"),
        ({"amount": ""}, "amount is required"),
        ({"currency": "eur"}, "currency must be 3 uppercase letters"),
        ({"currency": "EURO"}, "currency must be 3 uppercase letters"),
        ({"country": "FRA"}, "country must be 2 uppercase letters"),
        ({"channel": "POS"}, "channel must be one of pos, ecom, atm"),
        ({"channel": " pos"}, "channel must be one of pos, ecom, atm"),
        ({"device_id": "d" * 65}, "device_id must be at most 64 chars"),
        # ASCII where the contract means ASCII: digits, letters and spaces of other scripts.
        ({"merchant_category": "٥٤١١"}, "merchant_category must be exactly 4 digits (MCC)"),
        ({"merchant_category": "５４１１"}, "merchant_category must be exactly 4 digits (MCC)"),
        ({"transaction_id": "tx\u00a01"}, "transaction_id must be 1-64 chars of [A-Za-z0-9_-]"),
        ({"currency": "ÉUR"}, "currency must be 3 uppercase letters"),
        ({"amount": "١٢.٥"}, "amount must be a decimal number"),
        ({"event_time": "2026-01-15T10:00:00\u00a0Z"}, "event_time must be ISO-8601 with a Z or an offset"),
        ({"event_time": " 2026-01-15T10:00:00Z"}, "event_time must be ISO-8601 with a Z or an offset"),
        # Instants no later stage can hold, reported once (not also as the wrong folder date).
        ({"event_time": "0000-01-15T10:00:00Z"}, "event_time must be within years 0001-9999 in UTC"),
        ({"event_time": "9999-12-31T23:59:59-01:00"}, "event_time must be within years 0001-9999 in UTC"),
    ],
)
def test_each_rule_quarantines_with_its_reason(tmp_path, override, reason):
    r = _ingest(tmp_path, [tx(1), tx(2, **override), tx(3)])
    assert r.bronze["transaction_id"].to_list() == ["tx-1", "tx-3"]  # the good rows go on
    q = r.quarantine.row(0, named=True)
    assert (q["level"], q["source_file"], q["line"]) == ("row", "part-0.csv", 3)
    assert any(reason in x for x in q["reasons"]), q["reasons"]
    raw = json.loads(q["raw"])
    assert raw == {c: (tx(2, **override)[c] or None) for c in TX_COLUMNS}  # raw values kept


def test_a_time_outside_years_1_to_9999_has_that_one_reason(tmp_path):
    r = _ingest(tmp_path, [tx(1, event_time="+12026-01-15T10:00:00Z")])
    assert _reasons(r) == [["event_time must be within years 0001-9999 in UTC"]]
    r = _ingest(tmp_path, [label(1, labeled_at="-0001-01-18T09:00:00Z")], feed=LABELS, day="2026-01-18")
    assert _reasons(r) == [["labeled_at must be within years 0001-9999 in UTC"]]


def test_a_header_name_with_a_unicode_space_is_not_the_contract_column(tmp_path):
    rows = [{("amount\u00a0" if c == "amount" else c): v for c, v in tx(1).items()}]
    r = _ingest(tmp_path, rows)
    assert r.bronze.height == 0
    assert r.quarantine["reasons"].to_list() == [["missing required column(s): amount"]]


def test_every_reason_of_a_row_is_recorded(tmp_path):
    r = _ingest(tmp_path, [tx(1, channel="bus", amount="-1", currency="eu", card_id="")])
    assert sorted(_reasons(r)[0]) == [
        "amount must be finite, > 0 and <= 1000000",
        "card_id is required",
        "channel must be one of pos, ecom, atm",
        "currency must be 3 uppercase letters",
    ]


def test_column_order_is_free_and_unknown_columns_are_reported(tmp_path):
    rows = [dict(reversed(list(tx(1).items())), loyalty_tier="gold")]
    r = _ingest(tmp_path, rows)
    assert r.stats()["rows_ingested"] == 1
    assert r.unknown_columns == {"loyalty_tier": ["part-0.csv"]}
    assert "loyalty_tier" not in r.bronze.columns


def test_optional_column_may_be_absent(tmp_path):
    r = _ingest(tmp_path, [tx(1)], columns=[c for c in TX_COLUMNS if c != "device_id"])
    assert r.stats()["rows_ingested"] == 1 and r.bronze["device_id"].to_list() == [None]


def test_missing_required_column_rejects_the_file_but_not_the_partition(tmp_path):
    write_landing(tmp_path, "transactions", DAY, "a.csv", csv_bytes([tx(1)]))
    r = _ingest(tmp_path, [tx(2)], name="b.csv", columns=[c for c in TX_COLUMNS if c != "amount"])
    assert r.bronze["transaction_id"].to_list() == ["tx-1"]
    q = r.quarantine.row(0, named=True)
    assert (q["level"], q["source_file"], q["line"], q["reasons"]) == (
        "file", "b.csv", None, ["missing required column(s): amount"],
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("bad.csv", b"transaction_id,amount\n\xff\xfe,1\n", "not UTF-8"),
        ("bad.csv", b"\x00\x01\x02 binary", "not CSV"),
        ("bad.csv.gz", b"not gzip at all", "gzip content is corrupt"),
        ("bad.csv", b"a,b\n1,2,3\n", "ragged rows"),
    ],
)
def test_unreadable_file_is_one_quarantine_record(tmp_path, name, data, reason):
    write_landing(tmp_path, "transactions", DAY, "good.csv.gz", gzip.compress(csv_bytes([tx(1), tx(2)])))
    r = _ingest(tmp_path, data, name=name)
    assert r.stats()["rows_ingested"] == 2 and r.quarantined_files == 1
    assert reason in r.quarantine["reasons"][0][0]


def test_identical_redelivery_is_dropped_and_counted(tmp_path):
    write_landing(tmp_path, "transactions", DAY, "a.csv", csv_bytes([tx(1), tx(2)]))
    r = _ingest(tmp_path, [tx(2), tx(3)], name="b.csv")
    assert sorted(r.bronze["transaction_id"]) == ["tx-1", "tx-2", "tx-3"]
    assert r.duplicates_dropped == 1 and r.quarantine.height == 0
    assert r.bronze.filter(pl.col("transaction_id") == "tx-2")["_source_file"].to_list() == ["a.csv"]


def test_conflicting_copies_are_all_quarantined(tmp_path):
    write_landing(tmp_path, "transactions", DAY, "a.csv", csv_bytes([tx(1), tx(2)]))
    r = _ingest(tmp_path, [tx(2, amount="99.00"), tx(2, amount="99.00")], name="b.csv")
    assert r.bronze["transaction_id"].to_list() == ["tx-1"]
    assert r.quarantine.height == 3
    assert all("conflicting duplicate: 3 copies" in rs[0] for rs in r.quarantine["reasons"])


def test_key_already_ingested_for_another_day_conflicts(tmp_path):
    write_landing(tmp_path, "transactions", DAY, "a.csv", csv_bytes([tx(1), tx(2)]))
    elsewhere = pl.DataFrame({"transaction_id": ["tx-2"], "event_date": [date(2026, 1, 14)]})
    r = ingest_partition(
        TRANSACTIONS, tmp_path / "transactions" / f"date={DAY}", date(2026, 1, 15), elsewhere
    )
    assert r.bronze["transaction_id"].to_list() == ["tx-1"]
    assert "already ingested for event_date 2026-01-14" in r.quarantine["reasons"][0][0]


def test_labels_may_be_revised_but_not_contradicted(tmp_path):
    rows = [
        label(1, is_fraud="0"),
        label(1, labeled_at="2026-01-18T15:00:00Z", is_fraud="1"),  # a later revision: kept
        label(2, is_fraud="1"),
        label(2, is_fraud="0"),  # same instant, different verdict: conflict
        label(3, is_fraud="2"),
    ]
    r = _ingest(tmp_path, rows, feed=LABELS, day="2026-01-18")
    assert r.bronze.select("transaction_id", "is_fraud").rows() == [("tx-1", 0), ("tx-1", 1)]
    reasons = sorted(x for rs in r.quarantine["reasons"] for x in rs)
    assert reasons == ["conflicting duplicate: 2 copies of this transaction_id/labeled_at disagree"] * 2 + [
        "is_fraud must be 0 or 1"
    ]


def test_empty_partition_is_not_an_error(tmp_path):
    r = ingest_partition(TRANSACTIONS, tmp_path / "nothing", date(2026, 1, 15))
    assert r.bronze.height == 0 and r.quarantine.height == 0
    assert r.bronze.schema == pl.Schema(TRANSACTIONS.bronze_schema())
