"""The `servable` gate: before a version may be promoted, it is loaded the way serving loads it and
scores a sample of recent transactions exactly as the validation report scored them. No Dagster.

Two ways in, both from the registry, both from the transactions as bronze holds them (not the
report's feature rows):

- the service's path: `ml_assets.serving.registry.Registry.load` (the booster and the version's
  own feature list, checked against each other), and the online features of the sample computed
  by the service's pure function from the cards' history in bronze;
- the plain MLflow pyfunc, `mlflow.pyfunc.load_model("models:/<name>/<version>")`, in a process
  of its own with none of its caller's state (its logged code, config and input contract), fed
  the sample as landing-contract text.

It also checks what serving would refuse later: a feature the online side doesn't compute, the
input contract artifact disagreeing with the tag, a serving configuration with problems. Any
difference fails the gate, and the reason says which.
"""

from __future__ import annotations

import json
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

# The pyfunc's process is forked from multiprocessing's fork server, which imports these once (the
# libraries only: nothing of the project, no tracking store, no model): each gate's process starts
# with no state of its caller, as a fresh interpreter does, without paying ~9 s of CPU for
# MLflow's and LightGBM's imports every time. The first gate in a process starts the server.
_PRELOAD = ["mlflow.pyfunc", "pandas", "lightgbm"]


def _pyfunc_process(jobs, env: dict[str, str]) -> None:
    """In the forked process: the environment the gate gives it, then one job, `load_model` and
    `predict`; sends back None, or the traceback's tail."""
    import traceback

    from ml_assets.lib.settings import replace_environment

    replace_environment(env)
    job = jobs.recv()
    if job is None:  # not judged: the gate failed first
        return
    try:
        import mlflow
        import mlflow.pyfunc
        import pandas as pd

        uri, model, lake, source, target = job
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        scorer = mlflow.pyfunc.load_model(model, model_config={"lake_uri": lake})
        scorer.predict(pd.read_parquet(source)).to_parquet(target)
        jobs.send(None)
    except BaseException:  # noqa: BLE001  (whatever it was, the gate says it, and fails)
        jobs.send(traceback.format_exc()[-1500:])


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


class _Pyfunc:
    """The registered pyfunc in a process of its own: started when the gate begins (in a thread,
    since the first start waits for the fork server's imports), given the version and its rows
    by `send`, read by `scores`."""

    def __init__(self):
        import multiprocessing
        import threading

        from ml_assets.lib.settings import environment_without_settings, value

        # Without the online store's setting: the pyfunc would score through it and record
        # decisions. The lake's options are the one setting it needs.
        env = environment_without_settings()
        if options := value("ML_ASSETS_LAKE_STORAGE_OPTIONS"):
            env["ML_ASSETS_LAKE_STORAGE_OPTIONS"] = options
        self.tmp = tempfile.TemporaryDirectory()
        self.target = Path(self.tmp.name) / "scores.parquet"
        self.started = time.perf_counter()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        self.jobs, theirs = context.Pipe()
        self.process = context.Process(target=_pyfunc_process, args=(theirs, env), daemon=True)
        self.starting = threading.Thread(target=self.process.start, name="servable-pyfunc", daemon=True)
        self.starting.start()

    def send(self, tracking_uri: str, name: str, version: str, lake_uri: str, rows: pl.DataFrame) -> None:
        source = Path(self.tmp.name) / "rows.parquet"
        rows.to_pandas().to_parquet(source)
        self.jobs.send([tracking_uri, f"models:/{name}/{version}", lake_uri, str(source), str(self.target)])

    def scores(self) -> dict:
        """transaction_id -> score; RuntimeError if the process failed or rejected a row."""
        self.starting.join()
        failure = self.jobs.recv() if self.jobs.poll(600) else "no answer in 600 s"
        self.process.join(timeout=60)
        self.seconds = round(time.perf_counter() - self.started, 2)
        if failure is not None:
            raise RuntimeError(f"the pyfunc failed in a process of its own: {failure.strip()}")
        scored = pl.read_parquet(self.target)
        problems = scored.filter(pl.col("problems") != "")
        if problems.height:
            raise RuntimeError(f"the pyfunc rejected {problems.height} rows: {problems['problems'][0]}")
        return dict(scored.select("transaction_id", "score").iter_rows())

    def close(self) -> None:
        self.starting.join()
        if self.process.is_alive():  # not judged: the gate failed first, or the report did
            self.jobs.send(None)
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()
        self.jobs.close()
        self.tmp.cleanup()


@dataclass
class _Pending:
    booster: object
    columns: list[str]
    params: object
    rows: pl.DataFrame  # the sample's bronze transactions, in event order
    expected_ids: list[str]  # the sample, in the holdout's order
    first: int  # the sample's first row in the holdout
    meta: dict


class Check:
    """The gate for one version, begun before the report is built and judged after it:

        with servable.Check(tracking_uri, name, version, lake_uri, bronze, holdout) as gate:
            ...  # build the report (the pyfunc loads meanwhile)
            verdict = gate.judge(report_scores)

    `holdout`: the report's rows, in its order; `bronze`: the lake's bronze transactions."""

    def __init__(self, tracking_uri: str, name: str, version: str, lake_uri: str, bronze: pl.LazyFrame,
                 holdout: pl.DataFrame):  # fmt: skip
        self.lake_uri = lake_uri
        self.pyfunc = _Pyfunc()  # first: its imports run while the rest of the gate and the report do
        self.outcome = self._begin(tracking_uri, name, version, lake_uri, bronze, holdout)

    def __enter__(self) -> Check:
        return self

    def __exit__(self, *exc) -> None:
        self.pyfunc.close()

    def _begin(self, tracking_uri, name, version, lake_uri, bronze, holdout) -> _Pending | Servable:
        from mlflow import MlflowClient

        from ml_assets.lib import registry
        from ml_assets.lib.serving_config import ServingConfig
        from ml_assets.serving import registry as serving_registry
        from ml_assets.serving.features import FeatureParams

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
        artifact = registry.CONTRACT_FILE
        with tempfile.TemporaryDirectory() as tmp:
            try:
                contract = json.loads(Path(client.download_artifacts(run_id, artifact, tmp)).read_text())
            except Exception as e:  # noqa: BLE001  (absent, or unreadable: either way not servable)
                return Servable(False, f"no readable {artifact} on its run: {type(e).__name__}", meta)
        if contract.get("feature_columns") != columns:
            return Servable(False, f"{artifact} lists {contract.get('feature_columns')}, not {columns}", meta)
        _, problems = ServingConfig.from_tags(dict(client.get_registered_model(name).tags or {}))
        if problems:
            return Servable(False, f"the serving configuration has problems: {'; '.join(problems)}", meta)

        first = max(holdout.height - SAMPLE_ROWS, 0)
        sample = holdout.slice(first).select("transaction_id", "event_date")
        wanted = pl.col("transaction_id").is_in(sample["transaction_id"].to_list())
        rows = (
            bronze.filter(pl.col("event_date").is_in(sample["event_date"].unique().to_list()) & wanted)
            .sort("event_time", "transaction_id")
            .collect()
        )
        self.pyfunc.send(tracking_uri, name, version, lake_uri, landing_rows(rows))
        return _Pending(booster, columns, params, rows, sample["transaction_id"].to_list(), first, meta)

    def judge(self, report_scores: np.ndarray) -> Servable:
        """The verdict, given the report's scores of the holdout rows."""
        if isinstance(self.outcome, Servable):
            return self.outcome
        from ml_assets.lib import paths
        from ml_assets.serving.features import batch_features, matrix_of, transactions_of
        from ml_assets.serving.mlflow_model import bronze_windows

        p = self.outcome
        txs = transactions_of(p.rows)
        windows, risk = bronze_windows(txs, p.params, self.lake_uri, paths.lake_storage_options())
        online = p.booster.predict(matrix_of(batch_features(txs, windows, risk, p.params), p.columns))
        service = dict(zip(p.rows["transaction_id"], online, strict=True))
        try:
            pyfunc = self.pyfunc.scores()
        except RuntimeError as e:
            return Servable(False, str(e), p.meta)
        report = report_scores[p.first :]
        differences = {  # NaN where a transaction went unscored: np.max keeps it, and it fails below
            path: float(
                np.max(np.abs(np.array([got.get(t, np.nan) for t in p.expected_ids]) - report), initial=0)
            )
            for path, got in (("service", service), ("pyfunc", pyfunc))
        }
        meta = p.meta | {"sample_rows": len(p.expected_ids), "pyfunc_seconds": self.pyfunc.seconds}
        meta |= {f"max_difference_{path}": d for path, d in differences.items()}
        off = [
            f"{path} scores differ from the report's by up to {d:.3g}"
            for path, d in differences.items()
            if not d <= TOLERANCE  # NaN (a transaction not scored) fails too
        ]
        if p.rows.height != len(p.expected_ids):
            off.append(f"{len(p.expected_ids) - p.rows.height} sampled transactions are not in bronze")
        if off:
            return Servable(False, "; ".join(off), meta)
        return Servable(
            True,
            f"loaded as the service and as the plain pyfunc in a process of its own, {len(p.expected_ids)} "
            f"recent transactions score as in the report (within {TOLERANCE})",
            meta,
        )
