"""Deployment strategies, driven by registry aliases and tags, through a real HTTP server."""

from __future__ import annotations

import threading
import time

import httpx
import polars as pl
import pytest

from ml_assets.lib import paths, tables
from ml_assets.lib.serving_config import (
    AB_SHARE_TAG,
    CANARY_SHARE_TAG,
    STRATEGY_TAG,
    ServingConfig,
    Strategy,
)
from ml_assets_tests.conftest import tx
from ml_assets_tests.serving_support import drain, service_and_server, shared_registry


@pytest.fixture
def registry():
    return shared_registry()


def _arms(model: dict) -> dict[str, tuple]:
    return {a["arm"]: (a["alias"], a["version"], a["traffic_share"], a["role"]) for a in model["arms"]}


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_tags_are_read_leniently_and_every_problem_is_named():
    config, problems = ServingConfig.from_tags({STRATEGY_TAG: "canary", CANARY_SHARE_TAG: "0.25"})
    assert (config.strategy, config.canary_share, problems) == (Strategy.CANARY, 0.25, [])
    assert ServingConfig.from_tags(config.to_tags()) == (config, [])
    config, problems = ServingConfig.from_tags({STRATEGY_TAG: "rainbow", AB_SHARE_TAG: "1.5"})
    assert config == ServingConfig()  # single, default shares
    assert len(problems) == 2 and "rainbow" in problems[0] and AB_SHARE_TAG in problems[1]


def test_canary_takes_its_share_of_transactions(data_dir, registry):
    name = registry.register(
        aliases={"champion": 1, "canary": 2}, tags={STRATEGY_TAG: "canary", CANARY_SHARE_TAG: "0.3"}
    )
    _, server = service_and_server(registry, name, paths.online_store_url())
    with server, httpx.Client(base_url=server.url) as client:
        assert _arms(client.get("/model").json()) == {
            "champion": ("champion", "1", 0.7, "serving"),
            "canary": ("canary", "2", 0.3, "serving"),
        }
        arms = {}
        for i in range(800):
            [p] = client.post("/predict", json=tx(i)).json()["predictions"]
            arms[p["transaction_id"]] = (p["arm"], p["model_version"])
        assert set(arms.values()) == {("champion", "1"), ("canary", "2")}
        share = sum(arm == "canary" for arm, _ in arms.values()) / len(arms)
        assert abs(share - 0.3) < 0.05, share
        # A retried transaction goes to the same arm.
        retried = client.post("/predict", json={"transactions": [tx(i) for i in range(20)]}).json()
        assert [(p["arm"], p["model_version"]) for p in retried["predictions"]] == [
            arms[f"tx-{i}"] for i in range(20)
        ]


def test_ab_split_is_sticky_per_card(data_dir, registry):
    name = registry.register(
        aliases={"champion": 1, "challenger": 2}, tags={STRATEGY_TAG: "ab", AB_SHARE_TAG: "0.5"}
    )
    _, server = service_and_server(registry, name, paths.online_store_url())
    cards: dict[str, set] = {}
    with server, httpx.Client(base_url=server.url) as client:
        for round_ in range(3):
            batch = [tx(round_ * 1000 + c, card_id=f"card-{c}") for c in range(200)]
            predictions = client.post("/predict", json={"transactions": batch}).json()["predictions"]
            for p, sent in zip(predictions, batch, strict=True):
                cards.setdefault(sent["card_id"], set()).add((p["arm"], p["alias"], p["model_version"]))
    assert all(len(arms) == 1 for arms in cards.values())  # sticky
    on_b = [c for c, arms in cards.items() if arms == {("B", "challenger", "2")}]
    on_a = [c for c, arms in cards.items() if arms == {("A", "champion", "1")}]
    assert len(on_a) + len(on_b) == 200
    assert 0.4 < len(on_b) / 200 < 0.6


def test_shadow_scores_everything_and_returns_nothing_of_it(data_dir, registry):
    name = registry.register(aliases={"champion": 1, "shadow": 2}, tags={STRATEGY_TAG: "shadow"})
    service, server = service_and_server(registry, name, paths.online_store_url())
    with server, httpx.Client(base_url=server.url) as client:
        assert _arms(client.get("/model").json())["shadow"] == ("shadow", "2", 1.0, "shadow")
        returned = {}
        for start in range(0, 60, 10):
            body = {"transactions": [tx(i) for i in range(start, start + 10)]}
            for p in client.post("/predict", json=body).json()["predictions"]:
                assert (p["arm"], p["model_version"]) == ("champion", "1")
                returned[p["transaction_id"]] = p["score"]
    drain(paths.lake_uri(), paths.online_store_url())
    log = pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}")
    assert log.height == 2 * len(returned)
    champion = log.filter(pl.col("returned"))
    shadow = log.filter(~pl.col("returned"))
    assert set(champion["arm"]) == {"champion"} and set(champion["model_version"]) == {"1"}
    assert set(shadow["arm"]) == {"shadow"} and set(shadow["model_version"]) == {"2"}
    assert dict(champion.select("transaction_id", "score").iter_rows()) == returned
    assert sorted(shadow["transaction_id"]) == sorted(returned)
    both = champion.join(shadow, on="transaction_id", suffix="_shadow")
    assert (both["score"] != both["score_shadow"]).all()  # a different model scored them


def test_blue_green_switches_to_the_warm_previous_champion_without_a_load(data_dir, registry):
    name = registry.register(
        aliases={"champion": 2, "previous_champion": 1}, tags={STRATEGY_TAG: "blue_green"}
    )
    service, server = service_and_server(registry, name, paths.online_store_url())
    with server, httpx.Client(base_url=server.url) as client:
        assert _arms(client.get("/model").json()) == {
            "champion": ("champion", "2", 1.0, "serving"),
            "previous_champion": ("previous_champion", "1", 0.0, "standby"),
        }
        assert client.post("/predict", json=tx(1)).json()["predictions"][0]["model_version"] == "2"
        loads = service.registry.loads
        assert loads == 2  # both loaded: the standby is warm
        # Roll back: the promotion job swaps the aliases.
        registry.client().set_registered_model_alias(name, "champion", "1")
        registry.client().set_registered_model_alias(name, "previous_champion", "2")
        _wait_for(lambda: client.get("/model").json()["arms"][0]["version"] == "1")
        assert client.post("/predict", json=tx(2)).json()["predictions"][0]["model_version"] == "1"
        assert service.registry.loads == loads  # the switch loaded nothing


def test_an_alias_change_is_served_without_a_failed_request(data_dir, registry):
    name = registry.register(aliases={"champion": 1})
    service, server = service_and_server(registry, name, paths.online_store_url())
    outcomes: list = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=server.url) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = client.post("/predict", json=tx(i))
                    outcomes.append((r.status_code, r.json()["predictions"][0]["model_version"]))
                except Exception as e:  # a failed request is what this test looks for
                    outcomes.append((None, repr(e)))

    with server:
        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            _wait_for(lambda: len(outcomes) > 50)
            registry.client().set_registered_model_alias(name, "champion", "3")  # not loaded yet
            _wait_for(lambda: outcomes[-1][1] == "3")
            seen_new = len(outcomes)
            _wait_for(lambda: len(outcomes) > seen_new + 50)
        finally:  # a failed wait must not leave the sender running (pytest would never exit)
            stop.set()
            sender.join()
    assert all(status == 200 for status, _ in outcomes), [o for o in outcomes if o[0] != 200][:3]
    versions = [v for _, v in outcomes]
    switch = versions.index("3")
    assert switch > 50 and set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"3"}
    assert service.registry.loads == 2


def test_a_strategy_whose_alias_is_missing_serves_the_champion_and_says_so(data_dir, registry):
    name = registry.register(aliases={"champion": 1}, tags={STRATEGY_TAG: "canary", CANARY_SHARE_TAG: "0.5"})
    _, server = service_and_server(registry, name, paths.online_store_url())
    with server, httpx.Client(base_url=server.url) as client:
        health = client.get("/health/details").json()
        assert [(a["arm"], a["traffic_share"]) for a in health["arms"]] == [("champion", 1.0)]
        assert any("'canary' is not set" in p for p in health["problems"])
        body = {"transactions": [tx(i) for i in range(40)]}
        assert {p["arm"] for p in client.post("/predict", json=body).json()["predictions"]} == {"champion"}


def test_each_arm_decides_by_its_own_versions_threshold_and_the_log_keeps_it(data_dir, registry):
    """decision is review exactly when the score is >= the serving version's decision_threshold
    tag, for the returned arm and for the shadow (in the log); a version without the tag decides
    nothing and says so; a tag set later is followed, and a retry keeps its first decision."""
    from ml_assets.lib.registry import TAG_DECISION_THRESHOLD

    name = registry.register(aliases={"champion": 1, "shadow": 2}, tags={STRATEGY_TAG: "shadow"})
    _, server = service_and_server(registry, name, paths.online_store_url())
    log_uri = f"{paths.lake_uri()}/{tables.INFERENCE_LOG}"
    with server, httpx.Client(base_url=server.url) as client:
        # Amounts where these test models (trained on N(0, 1) features) vary their scores.
        first = {"transactions": [tx(i, amount=f"{0.05 * (i + 1):.2f}") for i in range(40)]}
        undecided = client.post("/predict", json=first).json()["predictions"]
        assert {p["decision"] for p in undecided} == {None}
        assert any(TAG_DECISION_THRESHOLD in p for p in client.get("/health/details").json()["problems"])
        drain(paths.lake_uri(), paths.online_store_url())
        # Thresholds inside each model's score range, so that both decisions occur.
        scores = pl.read_delta(log_uri).group_by("arm").agg(pl.col("score").median())
        thresholds = dict(scores.iter_rows())
        for version, arm in (("1", "champion"), ("2", "shadow")):
            registry.client().set_model_version_tag(
                name, version, TAG_DECISION_THRESHOLD, repr(thresholds[arm])
            )
        _wait_for(lambda: all(a["decision_threshold"] for a in client.get("/model").json()["arms"]))
        assert not client.get("/health/details").json()["problems"]
        # The same transactions on new cards, so the same features and scores, under new ids.
        second = {
            "transactions": [
                t | {"transaction_id": f"second-{i}", "card_id": f"second-{t['card_id']}"}
                for i, t in enumerate(first["transactions"])
            ]
        }
        decided = client.post("/predict", json=second).json()["predictions"]
        again = client.post("/predict", json=first).json()["predictions"]
    expected = ["review" if p["score"] >= thresholds["champion"] else "approve" for p in decided]
    assert [p["decision"] for p in decided] == expected and set(expected) == {"review", "approve"}
    assert [p["decision"] for p in again] == [None] * 40  # retried: the decision first recorded
    drain(paths.lake_uri(), paths.online_store_url())
    log = pl.read_delta(log_uri).filter(
        pl.col("transaction_id").is_in([t["transaction_id"] for t in second["transactions"]])
    )
    assert log.height == 80
    for arm, rows in log.group_by("arm"):
        review = (rows["score"] >= thresholds[arm[0]]).to_list()
        assert rows["decision"].to_list() == ["review" if r else "approve" for r in review], arm
        assert set(rows["decision"]) == {"review", "approve"}, (arm, thresholds)
