"""Training set assembly and LightGBM training, without Dagster.

The training set joins each transaction's features with its label as known at the cutoff (the
latest label made on or before the cutoff day wins; transactions without one are left out), then
splits by event day: train, then a validation window for early stopping, then the most recent
labelled days as the holdout the validation report judges on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from ml_assets.lib.features import KEY_COLUMNS, LABEL, categorical_indices

SPLITS = ("train", "validation", "holdout")


@dataclass(frozen=True)
class Windows:
    """Event-day windows of one training set (inclusive)."""

    train: tuple[date, date]
    validation: tuple[date, date]
    holdout: tuple[date, date]
    cutoff: date  # labels made after this day are not used

    def as_dict(self) -> dict[str, str]:
        out = {
            f"{name}_{end}": str(d)
            for name in SPLITS
            for end, d in zip(("start", "end"), getattr(self, name), strict=True)
        }
        return out | {"label_cutoff": str(self.cutoff)}


def labels_as_of(labels: pl.DataFrame, cutoff: date) -> pl.DataFrame:
    """Each transaction's latest label made on or before `cutoff` (one row per transaction)."""
    return (
        labels.filter(pl.col("label_date") <= cutoff)
        .sort("labeled_at")
        .group_by("transaction_id")
        .agg(pl.col("is_fraud").last().alias(LABEL), pl.col("label_date").last())
    )


def choose_windows(labelled_days: list[date], cutoff: date, holdout_days: int, validation_days: int,
                   max_train_days: int) -> Windows:  # fmt: skip
    """Windows over the event days that have matured labels, most recent first."""
    days = sorted(labelled_days)
    needed = holdout_days + validation_days + 1
    if len(days) < needed:
        raise ValueError(
            f"only {len(days)} event days have labels by {cutoff}; need at least {needed} "
            f"({holdout_days} holdout + {validation_days} validation + 1 train)"
        )
    holdout = days[-holdout_days:]
    validation = days[-(holdout_days + validation_days) : -holdout_days]
    train = days[: -(holdout_days + validation_days)][-max_train_days:]
    return Windows((train[0], train[-1]), (validation[0], validation[-1]), (holdout[0], holdout[-1]), cutoff)


def training_set_batches(
    con,
    labels: pl.DataFrame,
    cutoff: date,
    holdout_days: int,
    validation_days: int,
    max_train_days: int,
    min_labelled_share: float = 0.5,
    batch_rows: int = 100_000,
):
    """Features joined with labels known at `cutoff`, each row tagged with its split, in event order.

    Joined, split and sorted in DuckDB (`con`, a connection to the warehouse holding dbt's
    `transaction_features`), and returned as an Arrow RecordBatchReader with the windows: the rows
    stream to the Delta writer in batches, so memory stays bounded by DuckDB's limit however many
    there are (in polars, the whole frame and its copies peaked at 17 GB for 20M transactions).
    Read the reader while `con` is open.

    An event day counts as labelled when at least `min_labelled_share` of its transactions have a
    label by the cutoff: the last few days before the cutoff are still waiting for theirs.

    The features are every column of `transaction_features` but its keys (`warehouse_features`):
    the next model trains on what the features compute now, whatever the champion was trained on.
    """
    con.register("known_labels", labels_as_of(labels, cutoff).to_arrow())
    coverage = con.sql(
        f"""
        select f.event_date, avg((k.transaction_id is not null)::double) as share
        from transaction_features f left join known_labels k using (transaction_id)
        where f.event_date <= date '{cutoff}'
        group by f.event_date
        """
    ).pl()
    labelled_days = coverage.filter(pl.col("share") >= min_labelled_share)["event_date"].to_list()
    windows = choose_windows(labelled_days, cutoff, holdout_days, validation_days, max_train_days)
    split = " ".join(
        f"when f.event_date between date '{first}' and date '{last}' then '{name}'"
        for name, (first, last) in ((name, getattr(windows, name)) for name in SPLITS)
    )
    columns = ", ".join(
        [f"f.{c}" for c in KEY_COLUMNS]
        + [f"cast(f.{c} as double) as {c}" for c in warehouse_features(con)]
        + [f"cast(k.{LABEL} as tinyint) as {LABEL}", "k.label_date", f"case {split} end as split"]
    )
    rows = con.sql(
        f"""
        select {columns}
        from transaction_features f join known_labels k using (transaction_id)
        where f.event_date between date '{windows.train[0]}' and date '{windows.holdout[1]}'
        order by f.event_time, f.transaction_id
        """
    )
    return rows.fetch_record_batch(batch_rows), windows


def warehouse_features(con) -> list[str]:
    """The feature columns of the warehouse's `transaction_features`, in the table's order: every
    column but the keys (a column the spec or the SQL added joins at the end of an existing table)."""
    names = [row[0] for row in con.sql("describe transaction_features").fetchall()]
    return [c for c in names if c not in KEY_COLUMNS]


def training_features(frame: pl.DataFrame | pl.LazyFrame) -> list[str]:
    """The feature columns of a training snapshot, in its order (what a model trained on it takes)."""
    schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    return [c for c in schema if c not in KEY_COLUMNS and c not in (LABEL, "label_date", "split")]


def default_cutoff(labels: pl.DataFrame) -> date:
    """The latest day labels were made: everything known so far."""
    return labels["label_date"].max()


def matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """The feature matrix LightGBM trains and predicts on: `columns` (a model's own list, in its
    order), float64, NaN for missing, one copy."""
    return frame.select(columns).to_numpy(order="c").astype(np.float64, copy=False)


def base_params(num_threads: int, seed: int) -> dict:
    """Parameters every model shares. Deterministic, so a version can be retrained exactly."""
    return {
        "objective": "binary",
        "metric": ["average_precision", "auc"],
        "verbosity": -1,
        "num_threads": num_threads,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
    }


def dataset(x: np.ndarray, y: np.ndarray, columns: list[str], reference=None):
    import lightgbm as lgb

    # feature_pre_filter off: tuning trials share this Dataset and vary min_child_samples, which
    # LightGBM refuses (fatal) once features were pre-filtered with a larger one. The booster
    # keeps `columns` as its feature names: the model's own list, which consumers check.
    return lgb.Dataset(x, label=y, feature_name=columns, categorical_feature=categorical_indices(columns),
                       reference=reference, free_raw_data=False,
                       params={"feature_pre_filter": False})  # fmt: skip


@dataclass
class TrainResult:
    booster: object
    params: dict
    best_iteration: int
    history: dict[str, list[float]]  # validation metric name -> value per iteration
    seconds: float


def train_booster(
    params: dict, train, valid, num_boost_round: int, early_stopping_rounds: int
) -> TrainResult:
    """One LightGBM fit with early stopping on the validation set."""
    import lightgbm as lgb

    history: dict = {}
    started = time.perf_counter()
    booster = lgb.train(
        params,
        train,
        num_boost_round=num_boost_round,
        valid_sets=[valid],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False), lgb.record_evaluation(history)],
    )
    return TrainResult(
        booster, params, booster.best_iteration, history["validation"], time.perf_counter() - started
    )


def dask_trainer(
    client,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    num_boost_round: int,
    early_stopping_rounds: int,
    columns: list[str],
) -> Callable[[dict], TrainResult]:
    """`train_booster` on a Dask cluster: the data goes to the workers once, and each call of the
    returned function is one `lightgbm.dask` fit with the given parameters.

    Same parameters, same early stopping, and a plain `lightgbm.Booster` back, so tracking, the
    registry and the report can't tell the difference. What does differ:
    - Learning is data parallel (lightgbm.dask's default `tree_learner=data`): each worker holds one
      shard of the training rows, and the workers build every tree together, so all of them hold the
      same trees. Each worker finds the bins of some features from its own shard, so the model is
      close to the single-machine one, not identical, and not bit-reproducible either: which worker
      becomes which LightGBM rank varies between runs (`python -m ml_assets.retrain` retrains on
      one machine and reports the difference).
    - Early stopping: lightgbm.dask doesn't support it, because each worker scores only its own part
      of an eval set, workers can stop at different rounds, and training hangs (LightGBM #3712,
      #6351). Here every worker gets the whole validation set: same trees, same rows, so the same
      metrics and the same stopping round everywhere. The price is one copy of the validation
      window per worker, which is small beside the training window.
    - `num_threads` is each worker's Dask thread count, not the parameter.
    - The rows still pass through this process (scattered from numpy), so its memory bounds the
      training set; what the cluster spreads is LightGBM's own work and memory (bins, histograms).
    """
    import dask
    import dask.array as da
    import lightgbm as lgb

    workers = sorted(client.scheduler_info()["workers"])

    def on_workers(parts: list[np.ndarray]):
        """One dask array whose i-th block lives on worker i (lightgbm.dask trains each worker on
        the blocks it holds). hash=False: the validation copies are distinct blocks, one per worker."""
        futures = [client.scatter(p, workers=[w], hash=False) for p, w in zip(parts, workers, strict=True)]
        blocks = [
            da.from_delayed(dask.delayed(f), shape=p.shape, dtype=p.dtype)
            for f, p in zip(futures, parts, strict=True)
        ]
        return da.concatenate(blocks), futures

    (x, y), (x_valid, y_valid) = train, valid
    n = len(workers)
    shards = (np.array_split(x, n), np.array_split(y, n), [x_valid] * n, [y_valid] * n)
    (x_d, y_d, xv_d, yv_d), futures = zip(*(on_workers(parts) for parts in shards), strict=True)

    def fit(params: dict) -> TrainResult:
        model = lgb.DaskLGBMClassifier(
            client=client,
            n_estimators=num_boost_round,
            **{k: v for k, v in params.items() if k != "num_threads"},
        )
        started = time.perf_counter()
        model.fit(
            x_d, y_d, eval_X=(xv_d,), eval_y=(yv_d,), eval_names=["validation"],
            feature_name=columns, categorical_feature=categorical_indices(columns),
            callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
        )  # fmt: skip
        booster = model.booster_
        history = model.evals_result_["validation"]
        return TrainResult(booster, params, booster.best_iteration, history, time.perf_counter() - started)

    # A dask array refers to its blocks by key only, and the scheduler frees a block once no future
    # names it: the futures must live as long as `fit` does.
    fit.scattered = futures
    return fit


def tune(
    base: dict,
    fit: Callable[[dict], TrainResult],
    n_trials: int,
    seed: int,
    on_trial: Callable[[int, dict, TrainResult], None] = lambda *_: None,
) -> tuple[TrainResult, list[dict]]:
    """Optuna search over the usual LightGBM knobs; the best trial's booster is the model.

    `fit` trains one model with the given parameters (`train_booster` on this machine, or
    `dask_trainer`'s on a cluster). Trials run one after another: on a cluster each trial uses
    every worker, rather than trials running side by side. Returns the best result and one summary
    per trial (params, best iteration, validation PR-AUC).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[int, TrainResult] = {}

    def objective(trial: optuna.Trial) -> float:
        params = base | {
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 15, 127, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 10, 200, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.6, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
        }
        result = fit(params)
        results[trial.number] = result
        on_trial(trial.number, params, result)
        return result.history["average_precision"][result.best_iteration - 1]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n_trials)
    trials = [
        {
            "trial": t.number,
            **t.params,
            "best_iteration": results[t.number].best_iteration,
            "validation_pr_auc": t.value,
        }  # fmt: skip
        for t in study.trials
    ]
    return results[study.best_trial.number], trials
