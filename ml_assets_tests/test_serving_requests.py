"""Requests: the service judges transactions exactly as ingestion does, and refuses bad requests with
a 4xx naming the reason, the row and the field."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_assets.lib.contract import TRANSACTIONS
from ml_assets.lib.ingest import ingest_partition
from ml_assets.serving import fast_path
from ml_assets.serving.features import transactions_of
from ml_assets.serving.validation import RequestError, contract_problems, read_body, validate
from ml_assets_tests.conftest import csv_bytes, tx, write_landing
from ml_assets_tests.contract_corpus import DAY, EDGES, HOSTILE

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Good and bad raw text for every contract field (each row changes one field of a valid row).
VALUES = {
    "transaction_id": [
        "tx_ok-1", " tx", "tx 1", "a" * 64, "a" * 65, "tx\n1", "tx1\n", "é", "tx,1", 'tx"1', "",
    ],
    "event_time": [
        f"{DAY}T10:00:00Z", f"{DAY}T10:00:00+02:00", f"{DAY}T10:00:00.123456Z", f"{DAY}T10:00:00",
        DAY, "yesterday", "2026-13-01T00:00:00Z", f"{DAY}T10:00:00z", f"{DAY} 10:00:00Z",
        f"{DAY}T10:00:00+0200", "",
    ],
    "card_id": ["card_9", "card 9", "c" * 65, ""],
    "merchant_id": ["m-9", "m/9", "m" * 65, ""],
    "merchant_category": ["5411", "541", "54111", "abcd", "５４１１", " 5411", ""],
    "amount": [
        "12.50", "0", "-1", "1000000", "1000000.01", "1e3", "abc", "NaN", "inf", ".5", "5.", "+3",
        " 5", "00012", "1,5", "12.50\n", "",
    ],
    "currency": ["EUR", "eur", "EURO", "E1R", ""],
    "country": ["FR", "fr", "FRA", ""],
    "channel": ["pos", "ecom", "atm", "POS", "web", "pos ", ""],
    "device_id": ["d-1", "x" * 64, "x" * 65, "weird device !", ""],
}  # fmt: skip


def _rows() -> tuple[list[dict[str, str]], list[str]]:
    """The rows, and which field each one varies."""
    rows, varied = [], []
    for field, values in VALUES.items():
        for value in values:
            rows.append(tx(len(rows), day=DAY, **{field: value}))
            varied.append(field)
    return rows, varied


def _verdicts(tmp_path, rows: list[dict]) -> dict[str, dict]:
    """Each row's sorted reasons from ingestion, from the service (a request per row) and from one
    batch request; plus the rows ingestion stored and the service accepted, by row index."""
    # Ingestion: one landing file per row, so each verdict is tied to its row by the file's name.
    for i, row in enumerate(rows):
        write_landing(tmp_path, "transactions", DAY, f"row{i:04d}.csv", csv_bytes([row]))
    folder = tmp_path / "transactions" / f"date={DAY}"
    result = ingest_partition(TRANSACTIONS, folder, date.fromisoformat(DAY))
    assert result.quarantined_files == 0
    by_ingestion = {i: [] for i in range(len(rows))}
    for source, reasons in result.quarantine.select("source_file", "reasons").iter_rows():
        by_ingestion[int(source[3:7])] = sorted(reasons)
    bronze = {int(r["_source_file"][3:7]): r for r in result.bronze.iter_rows(named=True)}

    # The service, each row as its own request (a canonical one takes the fast path)...
    by_service, accepted = {}, {}
    for i, row in enumerate(rows):
        try:
            [accepted[i]] = validate(json.dumps(row).encode(), 1)
            by_service[i] = []
        except RequestError as e:
            by_service[i] = sorted(p["reason"] for p in e.problems)
    # ... and all rows as one request (judged by the contract's rules, in one polars call).
    try:
        validate(json.dumps({"transactions": rows}).encode(), len(rows))
        problems = []
    except RequestError as e:
        problems = e.problems
    in_batch = {i: sorted(p["reason"] for p in problems if p["row"] == i) for i in range(len(rows))}
    return {
        "ingestion": by_ingestion, "service": by_service, "batch": in_batch,
        "bronze": bronze, "accepted": accepted,
    }  # fmt: skip


def _assert_read_as_stored(v: dict) -> None:
    """What the service accepts, it reads as bronze stores it."""
    accepted, bronze = v["accepted"], v["bronze"]
    assert accepted.keys() == bronze.keys()
    for i, tx_ in accepted.items():
        stored = bronze[i]
        assert tx_.ts == (stored["event_time"] - EPOCH) // timedelta(microseconds=1)
        assert (tx_.amount, tx_.device_id, tx_.transaction_id, tx_.merchant_category) == (
            stored["amount"], stored["device_id"], stored["transaction_id"], stored["merchant_category"],
        )  # fmt: skip


def test_request_validation_and_ingestion_give_the_same_verdicts(tmp_path):
    rows, varied = _rows()
    v = _verdicts(tmp_path, rows)
    assert v["service"] == v["ingestion"]
    assert v["batch"] == v["ingestion"]
    _assert_read_as_stored(v)
    # Every field had values accepted and values rejected.
    for field in VALUES:
        assert {bool(v["service"][i]) for i, f in enumerate(varied) if f == field} == {True, False}, field


def test_every_edge_the_contract_allows_is_accepted_alike_and_read_as_stored(tmp_path):
    rows = [tx(i, day=DAY, **edge) for i, edge in enumerate(EDGES)]
    v = _verdicts(tmp_path, rows)
    assert v["ingestion"] == v["service"] == v["batch"] == {i: [] for i in range(len(rows))}
    _assert_read_as_stored(v)


def test_hostile_values_are_refused_alike_by_ingestion_and_requests(tmp_path):
    """Same verdict, same single reason, on every path: ingestion, a request, a batch."""
    rows = [tx(i, day=DAY, **{field: value}) for i, (field, value, _) in enumerate(HOSTILE)]
    v = _verdicts(tmp_path, rows)
    expected = {i: [reason] for i, (_, _, reason) in enumerate(HOSTILE)}
    assert v["ingestion"] == expected
    assert v["service"] == expected
    assert v["batch"] == expected
    assert v["bronze"] == v["accepted"] == {}


def test_hostile_values_get_a_422_with_the_reason_from_a_real_server():
    """Through uvicorn: none of them is a 5xx, each names its field and reason, and the service
    still scores afterwards."""
    import tempfile

    from ml_assets_tests.serving_support import service_and_server, shared_registry

    registry = shared_registry()
    name = registry.register(aliases={"champion": 1})
    with tempfile.TemporaryDirectory() as lake:
        _, server = service_and_server(registry, name, lake)
        with server, httpx.Client(base_url=server.url) as http:
            for i, (field, value, reason) in enumerate(HOSTILE):
                response = http.post("/predict", json=tx(i, **{field: value}))
                assert response.status_code == 422, (field, value, response.text)
                assert _problems(response) == {(0, field, reason)}, (field, value)
            assert http.post("/predict", json=tx(999)).status_code == 200


def test_the_fast_path_is_written_for_the_contract_as_it_is():
    """A contract rule changed under a shortcut switches the fast path off: review fast_path.py."""
    assert fast_path.ACTIVE is not None


def _chars(alphabet: str, lo: int, hi: int):
    return st.text(alphabet, min_size=lo, max_size=hi)


def _canonical_or_near(pattern: str, near):
    return st.one_of(st.from_regex(pattern, fullmatch=True), near)


_id = _canonical_or_near(r"[A-Za-z0-9_-]{1,64}", _chars("aZ09_-é /\n٣\u00a0\u0445", 0, 66))
_two = _chars("0123456789", 2, 2)
# Per field: values in the canonical form, and near misses (invalid, or valid but unusual).
NEAR = {
    "transaction_id": _id,
    "event_time": st.one_of(
        st.builds(
            lambda m, frac, zone: f"{m.year:04d}-{m:%m-%dT%H:%M:%S}{frac}{zone}",
            st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)),  # offsets push some out
            st.sampled_from(["", ".5", ".000001", ".", ".1234567"]),
            st.sampled_from(["Z", "+00:00", "-23:59", "+05:30", "z", "", "+0200", "+24:00", "+05:60"]),
        ),
        st.builds(
            lambda *p: "{}-{}-{}T{}:{}:{}{}{}:{}".format(*p),
            _chars("0123456789", 4, 4), _two, _two, _two, _two, _two, st.sampled_from("+-"), _two, _two,
        ),
    ),
    "card_id": _id,
    "merchant_id": _id,
    "merchant_category": _canonical_or_near(r"[0-9]{4}", _chars("0123456789５a٥²\u00a0", 3, 5)),
    "amount": st.one_of(
        st.decimals("0", "1000001", places=4).map(str),
        st.from_regex(r"[0-9]{1,8}(\.[0-9]{0,13})?", fullmatch=True),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
    "currency": _canonical_or_near(r"[A-Z]{3}", _chars("AEURzÉ\u0415\u212a", 2, 4)),
    "country": _canonical_or_near(r"[A-Z]{2}", _chars("FRrＲ", 1, 3)),
    "channel": st.sampled_from(["pos", "ecom", "atm", "POS", "", "web"]),
    "device_id": st.one_of(st.none(), st.text(max_size=66)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(NEAR))
def test_the_fast_path_accepts_only_what_the_contract_accepts_and_reads_it_alike(name):
    accepted = []

    @given(value=NEAR[name])
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(value):
        raw = read_body(json.dumps(tx(1, **{name: value})).encode(), 1)
        fast = fast_path.transactions(raw)
        if fast is not None:
            accepted.append(value)
            typed, problems = contract_problems(raw)
            assert problems == []
            assert transactions_of(typed) == fast

    check()
    assert len(accepted) >= 3  # the shortcut was put to the test (channel has only three values)


# -- JSON-specific values and the HTTP answers -------------------------------------------------


@pytest.fixture(scope="module")
def client():
    """The app over a real registry (one champion), with an empty online store."""
    import tempfile

    from fastapi.testclient import TestClient

    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import shared_registry

    registry = shared_registry()
    name = registry.register(aliases={"champion": 1})
    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{folder}/online.db"
        service = Service(ServingSettings(registry.tracking_uri, store, model_name=name, max_batch=50))
        with TestClient(create_app(service)) as c:
            yield c


def _problems(response) -> set[tuple]:
    return {(p["row"], p["field"], p["reason"]) for p in response.json()["problems"]}


def test_a_single_transaction_and_a_batch_are_scored(client):
    one = client.post("/predict", json=tx(1))
    assert one.status_code == 200
    [prediction] = one.json()["predictions"]
    assert prediction["transaction_id"] == "tx-1" and 0 < prediction["score"] < 1
    served_by = (prediction["model_version"], prediction["alias"], prediction["arm"])
    assert served_by == ("1", "champion", "champion")
    assert one.headers["x-request-id"] == one.json()["request_id"]
    batch = client.post("/predict", json={"transactions": [tx(2), tx(3)]})
    assert [p["transaction_id"] for p in batch.json()["predictions"]] == ["tx-2", "tx-3"]


def test_json_numbers_are_amounts_as_decimal_text(client):
    numbers = [tx(10, amount=12.5), tx(11, amount=1e-05), tx(12, amount=7)]
    ok = client.post("/predict", json={"transactions": numbers})
    assert ok.status_code == 200, ok.text
    bad = client.post("/predict", json={"transactions": [tx(13, amount=-2.5), tx(14, amount=1e7)]})
    assert bad.status_code == 422
    assert _problems(bad) == {
        (0, "amount", "amount must be finite, > 0 and <= 1000000"),
        (1, "amount", "amount must be finite, > 0 and <= 1000000"),
    }


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        (b"{not json", 400, None),
        (b"\xff\xfe{}", 400, None),  # not UTF-8
        (b"[" * 100_000, 400, None),  # nested too deep for the parser
        (b"[1, 2]", 422, None),
        (b'{"transactions": []}', 422, (None, "transactions")),
        (b'{"transactions": {"a": 1}}', 422, (None, "transactions")),
        (b'{"transactions": [1]}', 422, (0, None)),
        (json.dumps(tx(1, amount=True)).encode(), 422, (0, "amount")),
        (json.dumps(tx(1, card_id=123)).encode(), 422, (0, "card_id")),
        (json.dumps(tx(1, merchant_id={"x": 1})).encode(), 422, (0, "merchant_id")),
        (json.dumps(tx(1, country="\ud800")).encode(), 422, (0, "country")),  # a lone surrogate
        (json.dumps({"transactions": [tx(1), tx(2, channel=None)]}).encode(), 422, (1, "channel")),
        (json.dumps({"transactions": [tx(1), tx(1)]}).encode(), 422, (1, "transaction_id")),
        (json.dumps({"transactions": [tx(i) for i in range(51)]}).encode(), 413, None),
    ],
)
def test_bad_requests_get_a_4xx_with_the_row_and_field(client, body, status, problem):
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]
    if problem:
        assert problem in {(p["row"], p["field"]) for p in response.json()["problems"]}


def test_a_missing_required_field_is_reported_as_required(client):
    body = tx(1)
    del body["channel"]
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert _problems(response) == {(0, "channel", "channel is required")}
    # Fields whose rules test the parsed value also report that rule, exactly as ingestion does.
    del body["event_time"]
    assert (0, "event_time", "event_time is required") in _problems(client.post("/predict", json=body))


def test_a_request_cannot_choose_the_model(client):
    before = client.get("/model").json()
    response = client.post("/predict", json={**tx(30), "model": "models:/other/1", "alias": "challenger"})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["model_version"] == "1"
    after = client.get("/model").json()
    assert after["arms"] == before["arms"]
    assert after["registry"]["versions_loaded"] == before["registry"]["versions_loaded"] == 1


def test_oversized_bodies_get_413_before_they_are_read_whole(data_dir):
    """Through a real server: the limit holds for a declared length and for a chunked body."""
    from ml_assets.lib import paths
    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import Server, shared_registry

    registry = shared_registry()
    settings = ServingSettings(
        registry.tracking_uri, paths.online_store_url(), model_name=registry.register(aliases={"champion": 2})
    )
    big = b'{"transactions": [' + b" " * 2_000_000 + b"]}"
    with Server(create_app(Service(settings))) as server:
        declared = httpx.post(f"{server.url}/predict", content=big)
        assert declared.status_code == 413, declared.text

        def chunks():
            for _ in range(40):
                yield b" " * 50_000

        chunked = httpx.post(f"{server.url}/predict", content=chunks())
        assert chunked.status_code == 413
        assert "larger than 1000000 bytes" in chunked.json()["error"]
        # And the service is still there.
        assert httpx.post(f"{server.url}/predict", json=tx(1)).status_code == 200


def test_no_champion_means_503_until_one_is_set(data_dir):
    from fastapi.testclient import TestClient

    from ml_assets.lib import paths
    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings
    from ml_assets_tests.serving_support import shared_registry

    registry = shared_registry()
    name = registry.register(aliases={})
    service = Service(ServingSettings(registry.tracking_uri, paths.online_store_url(), model_name=name))
    with TestClient(create_app(service)) as c:
        assert c.get("/health").status_code == 503
        assert c.post("/predict", json=tx(1)).status_code == 503
        registry.client().set_registered_model_alias(name, "champion", "3")
        service.poll()
        assert c.get("/health").json()["status"] == "ok"
        assert c.post("/predict", json=tx(1)).json()["predictions"][0]["model_version"] == "3"
