"""The registered model through plain `mlflow.pyfunc`: landing-contract rows in, scores and reasons
out (ml_assets.serving.mlflow_model), on the shared registry's real models. These models were
logged without a lake, so a card's history is its earlier rows in the batch; test_real_clients
scores a pipeline's champion against its lake."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import polars as pl
import pytest

from ml_assets.lib import tracking
from ml_assets.serving.mlflow_model import EXAMPLE
from ml_assets_tests.serving_support import shared_registry


@pytest.fixture(scope="module")
def model():
    import mlflow

    shared = shared_registry()
    name = shared.register(aliases={"champion": 2})
    tracking.use_store(shared.tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{name}@champion")


def _rows(n: int) -> pd.DataFrame:
    """n valid transactions of one card, an hour apart, as the feed's text."""
    return pd.DataFrame(
        [
            EXAMPLE
            | {
                "transaction_id": f"tx-{i}",
                "event_time": f"2026-01-15T{i:02d}:00:00Z",
                "amount": f"{10 + i}.00",
            }
            for i in range(n)
        ]
    )


def test_valid_rows_get_scores_and_broken_rows_get_the_contracts_reasons(model):
    rows = _rows(4)
    rows.loc[1, "amount"] = "-3"
    rows.loc[2, "channel"] = "teleport"
    rows.loc[2, "event_time"] = "yesterday"
    out = model.predict(rows)

    assert out["transaction_id"].tolist() == rows["transaction_id"].tolist()
    assert out["problems"].tolist() == [
        "",
        "amount must be finite, > 0 and <= 1000000",
        "event_time must be ISO-8601 with a Z or an offset; channel must be one of pos, ecom, atm",
        "",
    ]
    scores = out["score"].to_numpy()
    assert np.isnan(scores[[1, 2]]).all() and ((scores[[0, 3]] > 0) & (scores[[0, 3]] < 1)).all()


def test_a_row_scores_the_same_in_any_batch_that_holds_its_history(model):
    """Stateless: the same batch twice gives the same scores, whatever was scored in between."""
    rows = _rows(5)
    first = model.predict(rows)["score"]
    model.predict(_rows(3).assign(transaction_id=lambda f: "other-" + f["transaction_id"]))
    second = model.predict(rows.iloc[::-1].reset_index(drop=True))["score"]
    np.testing.assert_array_equal(first.to_numpy(), second.iloc[::-1].to_numpy())


def test_device_id_may_be_absent_and_a_missing_required_column_is_named(model):
    out = model.predict(_rows(2).drop(columns=["device_id"]))
    assert out["problems"].tolist() == ["", ""]
    with pytest.raises(Exception, match="amount"):
        model.predict(_rows(2).drop(columns=["amount"]))


def test_loaded_with_an_online_store_it_scores_with_the_live_history_and_records(data_dir):
    """model_config={"online_store": ...}: each call's rows become their cards' history for the
    next call (as one batch would have had them), the decisions are recorded for the inference log,
    and rows scored before get their recorded scores back."""
    import mlflow

    from ml_assets.serving.online_store import open_store
    from ml_assets_tests.serving_support import drain

    shared = shared_registry()
    name = shared.register(aliases={"champion": 2})
    tracking.use_store(shared.tracking_uri)
    url = f"sqlite:///{data_dir / 'online' / 'online.db'}"
    live = mlflow.pyfunc.load_model(
        f"models:/{name}@champion", model_config={"online_store": url, "model_version": "2"}
    )
    stateless = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    rows = _rows(4)
    one_batch = stateless.predict(rows)["score"].to_numpy()
    one_by_one = np.concatenate([live.predict(rows.iloc[[i]])["score"].to_numpy() for i in range(4)])
    np.testing.assert_array_equal(one_by_one, one_batch)  # the store held each call's history
    again = live.predict(rows.iloc[::-1].reset_index(drop=True))["score"].to_numpy()
    np.testing.assert_array_equal(again[::-1], one_batch)  # recorded: the same answers
    with open_store(url, lookback_days=30) as store:
        queued, _ = store.read_decisions(None, 100)
    assert [(d.transaction_id, d.arm, d.model_version) for d in queued] == [
        (f"tx-{i}", "pyfunc", "2") for i in range(4)
    ]
    # Each call saw the calls before it (rows an hour apart on one card), as features, not only as
    # scores (these test models hardly use the history features).
    assert [d.features["card_tx_count_24h"] for d in queued] == [0, 1, 2, 3]
    drain(str(data_dir / "lake"), url)
    log = pl.read_delta(str(data_dir / "lake" / "serving" / "inference_log"))
    assert sorted(log["transaction_id"]) == [f"tx-{i}" for i in range(4)]


def test_it_decides_by_its_registered_versions_threshold(data_dir):
    """decision is review exactly when the score is >= the version's decision_threshold tag, found
    in the registry at load; none before the version has a tag; a threshold given at load wins.
    A model logged for this test alone: the shared ones are registered under many names, whose
    tags other tests set."""
    import mlflow

    from ml_assets.lib.registry import TAG_DECISION_THRESHOLD
    from ml_assets_tests.serving_support import log_booster, train_booster

    shared = shared_registry()
    tracking.use_store(shared.tracking_uri)
    mlflow.set_experiment("serving-tests")
    name = f"thresholds_{data_dir.parent.name}"
    version = mlflow.register_model(log_booster(train_booster(4)[0]), name).version
    uri = f"models:/{name}/{version}"
    rows = _rows(12).assign(amount=[f"{0.1 * (i + 1):.2f}" for i in range(12)])  # where its scores vary
    rows.loc[3, "amount"] = "-1"  # refused: no score, no decision

    untagged = mlflow.pyfunc.load_model(uri).predict(rows)
    assert untagged["decision"].isna().all()
    scores = untagged["score"].to_numpy()
    threshold = float(np.nanmedian(scores))
    shared.client().set_model_version_tag(name, version, TAG_DECISION_THRESHOLD, repr(threshold))
    out = mlflow.pyfunc.load_model(uri).predict(rows)
    np.testing.assert_array_equal(out["score"].to_numpy(), scores)
    expected = [None if np.isnan(s) else "review" if s >= threshold else "approve" for s in scores]
    assert out["decision"].tolist() == expected and {"review", "approve"} <= set(expected)
    given = mlflow.pyfunc.load_model(uri, model_config={"decision_threshold": 0.0}).predict(rows)
    assert given["decision"].tolist() == [None if np.isnan(s) else "review" for s in scores]


def test_logging_a_model_records_nothing_in_the_online_store_the_environment_names(data_dir, monkeypatch):
    """MLflow scores a model's input example when it logs it: where ML_ASSETS_ONLINE_STORE is set
    (a run pod, the stack's runs), the example must not be scored through the live store (it
    would be recorded as a decision, and drained into the inference log)."""
    import mlflow

    from ml_assets.serving.online_store import open_store
    from ml_assets_tests.serving_support import log_booster, train_booster

    url = f"sqlite:///{data_dir / 'online' / 'online.db'}"
    tracking.use_store(f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}")
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("log", artifact_location=str(data_dir / "a"))
    )
    monkeypatch.setenv("ML_ASSETS_ONLINE_STORE", url)
    assert log_booster(train_booster(1)[0]).startswith("models:/")
    assert os.environ["ML_ASSETS_ONLINE_STORE"] == url  # set again after the log
    with open_store(url, lookback_days=30) as store:
        assert store.read_decisions(None, 10)[0] == []
