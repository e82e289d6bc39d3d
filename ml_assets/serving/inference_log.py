"""The inference log: every decision the service recorded, as rows of a Delta table.

The request path writes nothing to the lake: it records each decision in the online store's
durable queue before it answers (ml_assets.serving.online_store). The Dagster asset
`inference_log` (ml_assets/defs/serving_state) drains that queue into the Delta table
`tables.INFERENCE_LOG`, partitioned by the UTC day a decision was scored, which monitoring reads.
This module says what a row is.

The store keeps one decision per transaction_id. A shadow arm's scores ride in that decision
(`extra["shadow"]`: arm, alias, version, score), and so does an arm that failed to score it
(`extra["failed"]`: arm, alias, version, error; the champion answered instead). Each becomes a
row of its own here (`returned` false; a failed arm's score null, its `error` set), so the table
has one row per (transaction_id, arm): the key the drain dedupes by.

Each row also carries the feature values computed for it, one Float64 column per feature, in
the order the decisions carry them: every feature the online side computed, whichever subset the
model that scored it takes. A feature added to the spec is a new column (the drain appends with
schema merge, older rows read null in it); nothing in SCHEMA depends on the features.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

PARTITION_COLUMN = "scored_date"
KEY = ("transaction_id", "arm")  # one row per transaction and arm
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
    # review or approve, by the arm's version's own threshold; null where it had none, and in rows
    # drained before decisions were logged (the column joined the table by schema merge).
    "decision": pl.String(),
    "returned": pl.Boolean(),  # False for a shadow score: logged, never returned to the caller
    # Merchant risk came from an earlier day's table (the day's was not written yet).
    "stale_risk": pl.Boolean(),
    # The request's milliseconds until this arm's scores (the store, the features, its model):
    # what a canary's p99 guard holds to the champion's. Null in rows drained before it was logged.
    "latency_ms": pl.Float64(),
    # Why this arm failed to score the transaction (its score is then null, and the champion's row
    # is what was returned); null when it scored.
    "error": pl.String(),
}
_ROW = [c for c in SCHEMA if c != PARTITION_COLUMN]


def rows_of(decisions: Iterable) -> pl.DataFrame:
    """Log rows of online-store decisions: one per decision and one per shadow score it carries.

    The columns are SCHEMA's, then the features the decisions carry (Float64; null where missing),
    in the order they first appear: a new feature is a new column, and the table's schema grows.
    """
    columns: dict[str, list] = {c: [] for c in _ROW}
    features: dict[str, list] = {}
    n = 0
    for d in decisions:
        x = d.extra
        answered = (d.arm, x.get("alias"), d.model_version, d.score, x.get("decision"), True)
        arms = [(*answered, x.get("latency_ms"), None)] + [
            (s["arm"], s["alias"], s["model_version"], s.get("score"), s.get("decision"), False,
             s.get("latency_ms"), s.get("error"))
            for s in (*x.get("shadow", ()), *x.get("failed", ()))
        ]  # fmt: skip
        for arm, alias, version, score, decision, returned, latency_ms, error in arms:
            for name, value in (
                ("request_id", d.request_id), ("transaction_id", d.transaction_id),
                ("card_id", x.get("card_id")), ("merchant_id", x.get("merchant_id")),
                ("event_time", x.get("event_time")), ("scored_at", d.scored_at),
                ("strategy", x.get("strategy")), ("arm", arm), ("alias", alias),
                ("model_name", x.get("model_name")), ("model_version", version), ("score", score),
                ("decision", decision), ("returned", returned),
                ("stale_risk", bool(x.get("stale_risk", False))), ("latency_ms", latency_ms),
                ("error", error),
            ):  # fmt: skip
                columns[name].append(value)
            for name, value in d.features.items():
                if name not in features:  # a feature earlier rows did not have: null for them
                    features[name] = [None] * n
                features[name].append(value)
            n += 1
            for values in features.values():
                if len(values) < n:  # a feature this decision did not carry
                    values.append(None)
    frame = pl.DataFrame(
        columns | features,
        # In the data's order (polars pairs a schema with the columns by position); the times are
        # microseconds until cast below.
        schema={
            **{c: pl.Int64() if c in ("event_time", "scored_at") else SCHEMA[c] for c in _ROW},
            **dict.fromkeys(features, pl.Float64()),
        },
        strict=False,  # counts and flags arrive as ints in the decisions' JSON
    )
    return (
        frame.with_columns(
            pl.col("event_time", "scored_at").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        )
        .with_columns(pl.col("scored_at").dt.date().alias(PARTITION_COLUMN))
        .select(*[c for c in SCHEMA], *[c for c in features if c not in SCHEMA])
    )
