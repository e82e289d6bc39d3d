"""The `servable` gate: before a version may be promoted, it is loaded the way serving loads it and
scores a sample of recent transactions exactly as the validation report scored them. No Dagster.

Two ways in, both from the registry, both from the transactions as bronze holds them (not the
report's feature rows):

- the service's path: `ml_assets.serving.registry.Registry.load` (the booster and the version's
  own feature list, checked against each other), and the online features of the sample computed
  by the service's pure function from the cards' history in bronze;
- the plain MLflow pyfunc, `mlflow.pyfunc.load_model("models:/<name>/<version>")`, in a fresh
  Python process (its logged code, config and input contract), fed the sample as landing-contract
  text.

It also checks what serving would refuse later: a feature the online side doesn't compute, the
input contract artifact disagreeing with the tag, a serving configuration with problems. Any
difference fails the gate, and the reason says which.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

SAMPLE_ROWS = 200  # the most recent holdout transactions
# Online features equal dbt's to the last bits but for epoch() doubles (the skew test's tolerance):
# the same trees then give the same score to well below this.
TOLERANCE = 1e-9

_PYFUNC = """
import sys
import mlflow
import pandas as pd

uri, model, lake, source, target = sys.argv[1:]
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
scorer = mlflow.pyfunc.load_model(model, model_config={"lake_uri": lake})
scorer.predict(pd.read_parquet(source)).to_parquet(target)
"""


@dataclass
class Servable:
    passed: bool
    reason: str
    metadata: dict = field(default_factory=dict)


def landing_rows(bronze: pl.DataFrame) -> pl.DataFrame:
    """Bronze transactions as the feed carries them: the contract's columns as text."""
    from ml_assets.lib.contract import TRANSACTIONS

    return bronze.select(list(TRANSACTIONS.columns)).with_columns(
        pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ"),
        # Plain decimal text (the contract admits no exponent); it parses back to the same double.
        pl.col("amount").map_elements(lambda v: format(v, ".12f"), return_dtype=pl.String),
    )


def _pyfunc_scores(tracking_uri: str, name: str, version: str, lake_uri: str, rows: pl.DataFrame) -> dict:
    """transaction_id -> score, from the registered pyfunc loaded in a fresh process."""
    from ml_assets.lib.settings import environment_without_settings

    # Without the online store's setting: the pyfunc would score through it and record decisions.
    env = environment_without_settings() | {"MLFLOW_TRACKING_URI": tracking_uri}
    env |= {k: v for k, v in _lake_settings().items() if v}
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "rows.parquet", Path(tmp) / "scores.parquet"
        rows.to_pandas().to_parquet(source)
        out = subprocess.run(
            [sys.executable, "-c", _PYFUNC, tracking_uri, f"models:/{name}/{version}", lake_uri,
             source, target],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"the pyfunc failed in a fresh process: {out.stderr.strip()[-1500:]}")
        scored = pl.read_parquet(target)
    problems = scored.filter(pl.col("problems") != "")
    if problems.height:
        raise RuntimeError(f"the pyfunc rejected {problems.height} rows: {problems['problems'][0]}")
    return dict(scored.select("transaction_id", "score").iter_rows())


def _lake_settings() -> dict[str, str | None]:
    from ml_assets.lib.settings import value

    return {"ML_ASSETS_LAKE_STORAGE_OPTIONS": value("ML_ASSETS_LAKE_STORAGE_OPTIONS")}


def check(
    tracking_uri: str,
    name: str,
    version: str,
    lake_uri: str,
    bronze: pl.LazyFrame,
    holdout: pl.DataFrame,
    report_scores: np.ndarray,
) -> Servable:
    """Judge `version`: `holdout` (the report's rows, in its order) and `report_scores` (the
    report's scores of them); `bronze`: the lake's bronze transactions."""
    from mlflow import MlflowClient

    from ml_assets.lib import paths, registry
    from ml_assets.lib.serving_config import ServingConfig
    from ml_assets.serving import registry as serving_registry
    from ml_assets.serving.features import FeatureParams, batch_features, matrix_of, transactions_of
    from ml_assets.serving.mlflow_model import bronze_windows

    params = FeatureParams.from_dbt_project()
    loader = serving_registry.Registry(tracking_uri, name, params.columns)
    try:
        booster, columns = loader.load(version)
    except ValueError as e:  # the tag and the booster disagree
        return Servable(False, f"v{version}'s input contract is broken: {e}")
    meta: dict = {"features": len(columns)}
    if missing := loader.missing_online(columns):
        return Servable(False, f"the online side can't compute {', '.join(missing)}", meta)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_id = client.get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            contract = json.loads(
                Path(client.download_artifacts(run_id, registry.CONTRACT_FILE, tmp)).read_text()
            )
        except Exception as e:  # noqa: BLE001  (absent, or unreadable: either way not servable)
            return Servable(
                False, f"no readable {registry.CONTRACT_FILE} on its run: {type(e).__name__}", meta
            )
    if contract.get("feature_columns") != columns:
        return Servable(
            False, f"{registry.CONTRACT_FILE} lists {contract.get('feature_columns')}, not {columns}"
        )
    _, problems = ServingConfig.from_tags(dict(client.get_registered_model(name).tags or {}))
    if problems:
        return Servable(False, f"the serving configuration has problems: {'; '.join(problems)}", meta)

    take = min(SAMPLE_ROWS, holdout.height)
    sample = holdout.tail(take).select("transaction_id", "event_date")
    expected = dict(zip(sample["transaction_id"], report_scores[holdout.height - take :], strict=True))
    days = sample["event_date"].unique().to_list()
    wanted = pl.col("transaction_id").is_in(sample["transaction_id"].to_list())
    rows = (
        bronze.filter(pl.col("event_date").is_in(days) & wanted)
        .sort("event_time", "transaction_id")
        .collect()
    )
    txs = transactions_of(rows)
    windows, risk = bronze_windows(txs, params, lake_uri, paths.lake_storage_options())
    online = booster.predict(matrix_of(batch_features(txs, windows, risk, params), columns))
    service = dict(zip(rows["transaction_id"], online, strict=True))
    started = time.perf_counter()
    try:
        pyfunc = _pyfunc_scores(tracking_uri, name, version, lake_uri, landing_rows(rows))
    except RuntimeError as e:
        return Servable(False, str(e), meta)
    meta["pyfunc_seconds"] = round(time.perf_counter() - started, 2)
    report = np.array(list(expected.values()))
    differences = {  # NaN where a transaction went unscored: np.max keeps it, and it fails below
        path: float(np.max(np.abs(np.array([scores.get(t, np.nan) for t in expected]) - report), initial=0.0))
        for path, scores in (("service", service), ("pyfunc", pyfunc))
    }
    meta |= {"sample_rows": len(expected)} | {f"max_difference_{p}": float(d) for p, d in differences.items()}
    off = [
        f"{p} scores differ from the report's by up to {d:.3g}"
        for p, d in differences.items()
        if not d <= TOLERANCE
    ]
    if len(rows) != len(expected):
        off.append(f"{len(expected) - len(rows)} sampled transactions are not in bronze")
    if off:
        return Servable(False, "; ".join(off), meta)
    return Servable(
        True,
        f"loaded as the service and as the plain pyfunc in a fresh process, {len(expected)} recent "
        f"transactions score as in the report (within {TOLERANCE})",
        meta,
    )
