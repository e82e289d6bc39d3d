"""The promotion ledger: every change of what serves, one row each, in the lake. No Dagster.

`deployed_model` appends a row on every alias move (a promotion, a candidate's start, ramp step,
promotion or abort, a rollback) and shows the same facts in its materialization's metadata. The
lake outlives the Dagster instance, whose materializations a new DAGSTER_HOME loses: so the
ledger, not the event log, is the history `make rollback VERSION=N` is checked against.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl

from ml_assets.lib import tables

PARTITION_COLUMN = "model_name"
SCHEMA: dict[str, pl.DataType] = {
    "recorded_at": pl.Datetime("us", "UTC"),
    PARTITION_COLUMN: pl.String(),
    "action": pl.String(),  # promote, rollback, start_canary, ramp_canary, promote_candidate, ...
    "champion": pl.String(),  # the champion after the move (null: none)
    "replaced": pl.String(),  # the version the move took off (null: none)
    "previous_champion": pl.String(),  # the rollback target after the move
    "candidate_alias": pl.String(),  # canary / shadow, for a candidate's moves
    "candidate": pl.String(),
    "canary_share": pl.Float64(),  # the candidate's traffic share after the move (null: none)
    "canary_step": pl.Int64(),  # the rollout step it is at (1-based; null: none)
    "strategy": pl.String(),
    "actor": pl.String(),
    "reason": pl.String(),
    "dagster_run_id": pl.String(),
    "evidence": pl.String(),  # JSON: what the decision was taken on (guards, their figures)
}


def row(name: str, **facts) -> dict:
    """A ledger row for `name`, recorded now: `facts` are SCHEMA's columns (missing ones null)."""
    unknown = set(facts) - set(SCHEMA)
    if unknown:
        raise ValueError(f"not ledger columns: {sorted(unknown)}")
    out = dict.fromkeys(SCHEMA) | facts | {PARTITION_COLUMN: name, "recorded_at": datetime.now(UTC)}
    if isinstance(out["evidence"], dict):
        out["evidence"] = json.dumps(out["evidence"], sort_keys=True, default=str)
    return out


def append(lake, entry: dict) -> int:
    """Append one row (from `row`) to the ledger; return the Delta version of the commit."""
    frame = pl.DataFrame([entry], schema=SCHEMA)
    return lake.append(tables.PROMOTION_LEDGER, frame, partition_column=PARTITION_COLUMN)


def history(lake, name: str) -> pl.DataFrame:
    """The ledger of `name`, oldest first (empty, with SCHEMA, before the first move)."""
    if not lake.exists(tables.PROMOTION_LEDGER):
        return pl.DataFrame(schema=SCHEMA)
    return (
        lake.scan(tables.PROMOTION_LEDGER)
        .filter(pl.col(PARTITION_COLUMN) == name)
        .sort("recorded_at")
        .collect()
    )


def champions(lake, name: str) -> list[str]:
    """Every version that has been `name`'s champion, in the order each first became it."""
    served = history(lake, name)["champion"].drop_nulls()
    return list(dict.fromkeys(served.to_list()))
