"""The simulator's oracle: each transaction's true fraud probability, written beside (never into)
the landing feed. Real feeds have none; then every function here returns None."""

from __future__ import annotations

from datetime import date

import polars as pl

from ml_assets.lib import paths


def truth(days: list[date]) -> pl.DataFrame | None:
    """transaction_id, p_fraud, is_fraud, pattern for the given event days (None if not simulated)."""
    folder = paths.simulator_dir() / "truth"
    files = [folder / f"date={d}" / "truth.parquet" for d in days]
    files = [f for f in files if f.exists()]
    return pl.read_parquet(files) if files else None
