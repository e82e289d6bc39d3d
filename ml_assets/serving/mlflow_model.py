"""The registered model as plain MLflow meets it: landing-contract transactions in, fraud scores out.

`mlflow.pyfunc.load_model("models:/fraud_detector@champion")` loads `LandingScorer`. Its input is
the landing feed's transaction columns as text: a landing CSV read with `dtype=str`, or the JSON a
request to the service carries. Each row is judged by the contract as ingestion and the service
judge it; the valid ones get dbt's features computed online exactly as the service computes them
(ml_assets.serving.features: each card's history and the merchants' label counts come from the
lake's bronze tables), and the LightGBM booster logged beside it scores them. A row that breaks the
contract gets no score and its reasons; the others are scored, and decided: `review` when the
score is at or above the version's decision threshold, `approve` below (see `registered_threshold`).

Where the history comes from, in this order:

- an online store, when `model_config["online_store"]` names one (load the model with
  `model_config={"online_store": "redis://..."}`) or the setting ML_ASSETS_ONLINE_STORE is set:
  the same store the service uses (ml_assets.serving.online_store), so KServe/MLServer or
  `mlflow models serve` score with the live card histories and merchant risk, append what they
  score to them, and record their decisions (arm "pyfunc", version `model_config["model_version"]`)
  in the queue the `inference_log` asset drains; a transaction scored before gets its recorded
  score back;
- otherwise the lake's bronze tables: the one the model was trained on (`model_config["lake_uri"]`;
  load it with `model_config={"lake_uri": ...}` to read another). Object-store options come from
  the environment, as for the pipeline (ML_ASSETS_LAKE_STORAGE_OPTIONS, AWS_*). Each predict reads
  only its batch's cards and days from bronze and keeps nothing between calls: the same rows get
  the same scores in any process, thread or order.

`LandingScorer` (mlflow_model_entry.py, the file MLflow runs to load the model) wraps these
functions. The pipeline itself loads only the booster file (ml_assets.lib.tracking.load_booster):
no pandas round trip. Nothing here imports mlflow or pandas at module level.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from ml_assets.lib.contract import TRANSACTIONS
from ml_assets.lib.evaluation import decisions
from ml_assets.serving.features import (
    FeatureParams,
    Past,
    Tx,
    batch_features,
    event_day,
    matrix_of,
    merchant_risk,
    transactions_of,
)
from ml_assets.serving.validation import FIELDS, batch_problems, raw_rows

# A transaction as the feed carries it: the input example logged with the model (MLflow shows it,
# and checks at logging time that the model scores it).
EXAMPLE = {
    "transaction_id": "tx-example-0001", "event_time": "2026-01-15T12:30:00.000Z", "card_id": "card-0000001",
    "merchant_id": "m-000001", "merchant_category": "5411", "amount": "42.50", "currency": "EUR",
    "country": "DE", "channel": "pos", "device_id": None,
}  # fmt: skip


def signature():
    """Landing-contract columns as text in (device_id may be absent); per row out: its
    transaction_id, its score (NaN if rejected), the contract's reasons (empty if scored) and its
    decision (review or approve; null if rejected, or when the version has no threshold)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [ColSpec("string", name, required=col.required) for name, col in TRANSACTIONS.columns.items()]
    )
    outputs = Schema(
        [
            ColSpec("string", "transaction_id"),
            ColSpec("double", "score"),
            ColSpec("string", "problems"),
            ColSpec("string", "decision", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def model_config(lake_uri: str | None, columns: list[str]) -> dict:
    """What the model reads at load: the dbt vars its features follow and its own feature list
    (`columns`, the input contract: its input is built from them, whatever the spec is now), the
    lake of its history, and
    (None when logged) the online store and the version its decisions are recorded under. MLflow
    lets a load override only keys logged here, so both are logged empty: a store's URL may carry
    credentials, and it is the serving platform's to give at load (`model_config=` or
    MLFLOW_PYFUNC_INFERENCE_CONFIG). `decision_threshold` too: the validation report fits it after
    the model is logged, so a load finds it in the registry (`registered_threshold`), or is given it."""
    return {
        "lake_uri": lake_uri,
        "feature_params": asdict(FeatureParams.from_dbt_project()),
        "feature_columns": list(columns),
        "online_store": None,
        "model_version": None,
        "decision_threshold": None,
    }


def registered_threshold(model_dir: str) -> tuple[float | None, str]:
    """(the decision threshold of the registered version this model is, how it was found).

    The model's artifacts are immutable, and the threshold is fitted after they are logged, so it
    lives in the registry: the `decision_threshold` tag of the versions registered from this logged
    model (its MLmodel's model_id). Asked only when a tracking URI is set (a `models:/` load sets
    one; nothing falls back to creating a default store), with a failure reported, not raised:
    without a threshold the model still scores, and its decisions are null.
    """
    from mlflow import MlflowClient
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    from ml_assets.lib.registry import TAG_DECISION_THRESHOLD, decision_threshold

    model_id = Model.load(model_dir).model_id
    if not model_id or not is_tracking_uri_set():
        return None, "no registry to ask (no tracking URI set) and no decision_threshold given at load"
    try:
        found = MlflowClient().search_model_versions(f"source_path = 'models:/{model_id}'")
    except Exception as e:  # the store's exceptions vary by backend
        return None, f"the registry could not be asked: {type(e).__name__}: {e}"
    values = {mv.tags[TAG_DECISION_THRESHOLD] for mv in found if TAG_DECISION_THRESHOLD in (mv.tags or {})}
    versions = ", ".join(f"{mv.name} v{mv.version}" for mv in found) or "none"
    if len(values) != 1:
        return (
            None,
            f"{len(values)} distinct {TAG_DECISION_THRESHOLD} tags on this model's versions ({versions})",
        )
    threshold = decision_threshold({TAG_DECISION_THRESHOLD: values.pop()})
    if threshold is None:
        return None, f"{TAG_DECISION_THRESHOLD} of {versions} is not a finite number"
    return threshold, f"the {TAG_DECISION_THRESHOLD} tag of {versions}"


def _items(frame) -> list[dict]:
    """The frame's rows as field -> value, with pandas' missing values (NaN, NA, NaT) as None."""
    import pandas as pd

    columns = [c for c in FIELDS if c in frame.columns]
    return [
        {c: None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v
         for c, v in zip(columns, row, strict=True)}
        for row in frame[columns].itertuples(index=False, name=None)
    ]  # fmt: skip


def bronze_windows(
    txs: list[Tx], params: FeatureParams, lake_uri: str | None, storage_options: dict | None
) -> tuple[dict[str, list[Past]], object]:
    """The batch's cards' windows from bronze (their transactions over the lookback of the batch's
    days, and the batch's own: a transaction bronze already holds counts once), and a function of
    the day giving merchant risk from bronze labels. Without a lake: the batch alone, no risk."""
    from deltalake import DeltaTable

    from ml_assets.lib import tables

    def uri(feed: str) -> str | None:
        found = f"{lake_uri.rstrip('/')}/{tables.BRONZE[feed]}" if lake_uri else None
        return found if found and DeltaTable.is_deltatable(found, storage_options=storage_options) else None

    windows: dict[str, dict[str, Past]] = {}
    if lake_uri is not None and uri("transactions") is None:
        raise LookupError(
            f"no bronze transactions table under the lake {lake_uri!r}: the features need the "
            "cards' history from it. Load the model with model_config={'lake_uri': ...} naming "
            "the pipeline's lake."
        )
    scans = {f: pl.scan_delta(u, storage_options=storage_options) for f in tables.BRONZE if (u := uri(f))}
    if "transactions" in scans:
        days = [event_day(tx.ts) for tx in txs]
        first = min(days) - timedelta(days=params.card_lookback_days + 1)
        frame = (
            scans["transactions"]
            .filter(pl.col("event_date").is_between(first, max(days)))
            .filter(pl.col("card_id").is_in(sorted({tx.card_id for tx in txs})))
            .select("card_id", pl.col("event_time").dt.epoch("us"), "amount", "device_id", "country",
                    "channel", "transaction_id")
            .collect()
        )  # fmt: skip
        for card, *past in frame.iter_rows():
            windows.setdefault(card, {})[past[-1]] = Past(*past)
    for tx in txs:
        windows.setdefault(tx.card_id, {}).setdefault(
            tx.transaction_id, Past(tx.ts, tx.amount, tx.device_id, tx.country, tx.channel, tx.transaction_id)
        )

    def risk(day: date) -> dict[str, tuple[int, int]]:
        if "labels" not in scans or "transactions" not in scans:
            return {}
        return merchant_risk(scans["labels"], scans["transactions"], day, params)

    return {card: list(past.values()) for card, past in windows.items()}, risk


def score_landing_rows(
    frame,
    booster,
    params: FeatureParams,
    columns: list[str],
    lake_uri: str | None,
    storage_options: dict | None = None,
    store=None,
    model_version: str = "unregistered",
    threshold: float | None = None,
):
    """Score landing-contract rows (a pandas frame); rows that break the contract get NaN and their
    reasons. Returns a pandas frame: transaction_id, score, problems, decision (by `threshold`,
    None without one). `columns`: the model's own features, in order. `store`: an open online store
    to read history from and record decisions in (None: bronze, nothing recorded; a retried
    transaction then gets its recorded decision)."""
    import pandas as pd

    rows, problems = raw_rows(_items(frame))
    typed, contract = batch_problems(rows)
    reasons: dict[int, list[str]] = {}
    for p in problems + contract:
        reasons.setdefault(p["row"], []).append(p["reason"])
    valid = [i for i in range(len(rows)) if i not in reasons]
    scores = np.full(len(rows), np.nan)
    decided: list[str | None] = [None] * len(rows)
    if valid:
        txs = transactions_of(typed[valid])
        if store is None:
            windows, risk = bronze_windows(txs, params, lake_uri, storage_options)
            scores[valid] = booster.predict(matrix_of(batch_features(txs, windows, risk, params), columns))
            made = decisions(scores[valid], threshold)
        else:
            scores[valid], made = _score_through_store(
                store, txs, booster, params, columns, model_version, threshold
            )
        for i, decision in zip(valid, made, strict=True):
            decided[i] = decision
    return pd.DataFrame(
        {
            "transaction_id": [row[0] for row in rows],
            "score": scores,
            "problems": ["; ".join(reasons.get(i, [])) for i in range(len(rows))],
            "decision": decided,
        }
    )


def _score_through_store(
    store,
    txs: list[Tx],
    booster,
    params: FeatureParams,
    columns: list[str],
    model_version: str,
    threshold: float | None,
) -> tuple[list[float], list[str | None]]:
    """As the service does (ml_assets.serving.service): begin, features from the windows and the
    merchant risk it returns, score and decide, record before returning; retried transactions get
    their recorded scores and decisions."""
    from ml_assets.serving.online_store import Decision

    begun = store.begin(txs)
    new = [tx for tx in txs if tx.transaction_id not in begun.recorded]
    standing = {}
    if new:
        risk = begun.risk  # its merchants' rows only: a call reads a few, however many there are
        features = batch_features(new, begun.windows, lambda day: risk[day].table, params)
        scores = booster.predict(matrix_of(features, columns))
        made = decisions(scores, threshold)
        request_id, at = uuid.uuid4().hex, int(datetime.now(UTC).timestamp() * 1_000_000)
        standing = store.record(
            [
                Decision(
                    tx.transaction_id,
                    request_id,
                    float(score),
                    model_version,
                    "pyfunc",
                    values,
                    at,
                    {
                        "alias": "",
                        "card_id": tx.card_id,
                        "merchant_id": tx.merchant_id,
                        "event_time": tx.ts,
                        "strategy": "pyfunc",
                        "model_name": "",
                        "stale_risk": risk[event_day(tx.ts)].stale_risk,
                        "decision": decision,
                    },
                )  # fmt: skip
                for tx, score, values, decision in zip(new, scores, features, made, strict=True)
            ]
        )
    decided = [begun.recorded.get(tx.transaction_id) or standing[tx.transaction_id] for tx in txs]
    return [d.score for d in decided], [d.extra.get("decision") for d in decided]
