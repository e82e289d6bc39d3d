"""The registered model as plain MLflow meets it: landing-contract transactions in, fraud scores out.

`mlflow.pyfunc.load_model("models:/fraud_detector@champion")` loads `LandingScorer`. Its input is
the landing feed's transaction columns as text: a landing CSV read with `dtype=str`, or the JSON a
request to the service carries. Each row is judged by the contract as ingestion and the service
judge it; the valid ones get dbt's features computed online exactly as the service computes them
(ml_assets.serving.features: each card's history and the merchants' label counts come from the
lake's bronze tables), and the LightGBM booster logged beside it scores them. A row that breaks the
contract gets no score and its reasons; the others are scored.

The lake is the one the model was trained on (`model_config["lake_uri"]`); load it with
`model_config={"lake_uri": ...}` to read another. Object-store options come from the environment,
as for the pipeline (ML_ASSETS_LAKE_STORAGE_OPTIONS, AWS_*). Each predict reads only its batch's
cards and days from bronze and keeps nothing between calls: the same rows get the same scores in
any process, thread or order. It is the registry's portable model (mlflow serve, MLServer/KServe,
batch jobs); the service (ml_assets.serving) keeps card history in memory instead, for latency.

`LandingScorer` (mlflow_model_entry.py, the file MLflow runs to load the model) wraps these
functions. The pipeline itself loads only the booster file (ml_assets.lib.tracking.load_booster):
no pandas round trip. Nothing here imports mlflow or pandas at module level.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import timedelta

import numpy as np
import polars as pl

from ml_assets.lib.contract import TRANSACTIONS
from ml_assets.serving.features import FeatureParams, FeatureState, transactions_of
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
    transaction_id, its score (NaN if rejected) and the contract's reasons (empty if scored)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [ColSpec("string", name, required=col.required) for name, col in TRANSACTIONS.columns.items()]
    )
    outputs = Schema(
        [ColSpec("string", "transaction_id"), ColSpec("double", "score"), ColSpec("string", "problems")]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def model_config(lake_uri: str | None) -> dict:
    """What the model reads at load: the dbt vars its features follow, and the lake of its history."""
    return {"lake_uri": lake_uri, "feature_params": asdict(FeatureParams.from_dbt_project())}


def _items(frame) -> list[dict]:
    """The frame's rows as field -> value, with pandas' missing values (NaN, NA, NaT) as None."""
    import pandas as pd

    columns = [c for c in FIELDS if c in frame.columns]
    return [
        {c: None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v
         for c, v in zip(columns, row, strict=True)}
        for row in frame[columns].itertuples(index=False, name=None)
    ]  # fmt: skip


def score_landing_rows(
    frame,
    booster,
    params: FeatureParams,
    lake_uri: str | None,
    storage_options: dict | None = None,
):
    """Score landing-contract rows (a pandas frame); rows that break the contract get NaN and their
    reasons. Returns a pandas frame: transaction_id, score, problems."""
    import pandas as pd

    rows, problems = raw_rows(_items(frame))
    typed, contract = batch_problems(rows)
    reasons: dict[int, list[str]] = {}
    for p in problems + contract:
        reasons.setdefault(p["row"], []).append(p["reason"])
    valid = [i for i in range(len(rows)) if i not in reasons]
    scores = np.full(len(rows), np.nan)
    if valid:
        good = typed[valid]
        txs = transactions_of(good)
        day = pl.col("event_time").dt.date()
        first, last = good.select(day.min(), day.max().alias("last")).row(0)
        state = FeatureState(params, lake_uri, storage_options)
        if lake_uri is not None and state.bronze_uri("transactions") is None:
            raise LookupError(
                f"no bronze transactions table under the lake {lake_uri!r}: the features need the "
                "cards' history from it. Load the model with model_config={'lake_uri': ...} naming "
                "the pipeline's lake."
            )
        state.load_history(
            until=last,
            cards=sorted({tx.card_id for tx in txs}),
            first=first - timedelta(days=params.card_lookback_days + 1),
        )
        scores[valid] = booster.predict(state.features(txs))
    return pd.DataFrame(
        {
            "transaction_id": [row[0] for row in rows],
            "score": scores,
            "problems": ["; ".join(reasons.get(i, [])) for i in range(len(rows))],
        }
    )
