"""fraud_model: LightGBM tuned with Optuna on the pinned snapshot, tracked and registered in MLflow."""

import tempfile
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from ml_assets.defs.metadata import markdown_table, png_markdown
from ml_assets.defs.policies import storage_retry
from ml_assets.defs.resources import LakeResource, MlflowResource
from ml_assets.defs.training.assets import run_snapshot
from ml_assets.lib import oracle, registry, tables, tracking
from ml_assets.lib.evaluation import score_metrics
from ml_assets.lib.features import LABEL, input_contract, project_vars
from ml_assets.lib.training import (
    SPLITS,
    base_params,
    dask_trainer,
    dataset,
    matrix,
    train_booster,
    training_features,
    tune,
)
from ml_assets.serving.features import FeatureParams, missing_online


class TrainingConfig(dg.Config):
    n_trials: int = Field(default=6, description="Optuna trials, each a LightGBM fit with early stopping.")
    num_boost_round: int = Field(default=600, description="Upper bound on boosting rounds per fit.")
    early_stopping_rounds: int = Field(default=40, description="Stop after this many rounds without gain.")
    num_threads: int = Field(
        default=2, description="LightGBM threads. More than the free cores slows training down badly."
    )
    seed: int = Field(default=7, description="Seed for Optuna and LightGBM (training is deterministic).")
    dask_scheduler: str | None = Field(
        default=None,
        description="Address of a Dask scheduler (tcp://host:8786): train every trial with lightgbm.dask "
        "on that cluster, for a training set past one machine. Unset: LightGBM in this process.",
    )
    shuffle_labels: bool = Field(
        default=False,
        description="Train on shuffled labels: a worthless challenger, to watch the gates block it.",
    )
    exclude_features: list[str] = Field(
        default=[],
        description="Features of the snapshot to train without: the first step of removing one that "
        "the champion still takes (README: Adding a feature).",
    )


def _splits(
    frame: pl.DataFrame, columns: list[str], shuffle_labels: bool, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    rng = np.random.default_rng(seed)
    for name in SPLITS:
        part = frame.filter(pl.col("split") == name)
        y = part[LABEL].to_numpy().astype(np.float64)
        if shuffle_labels and name != "holdout":
            y = rng.permutation(y)
        out[name] = (matrix(part, columns), y)
    return out


@dg.asset(
    deps=["training_set"],
    kinds={"lightgbm", "optuna", "mlflow"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
)
def fraud_model(
    context: dg.AssetExecutionContext, config: TrainingConfig, lake: LakeResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """The fraud score: LightGBM tuned with Optuna (early stopping on the validation window) on
    the training snapshot this run wrote, tracked in MLflow and registered as a new version of
    `fraud_detector` with the alias `challenger`. The validation report then judges it against
    the champion before anything serves it.

    It trains on every feature the snapshot has (what transaction_features computes now) and
    records them as its input contract: the tag `feature_columns` (in order), the dbt feature
    model's hash, and input_contract.json with their types. A feature the online side can't
    compute is said here (`features_not_online`), and the `servable` gate blocks the version.
    """
    import mlflow as mlflow_api

    from ml_assets.lib.plots import feature_importance_png

    snapshot, bronze = run_snapshot(context.instance, context.run, context.log)
    frame = lake.scan(tables.TRAINING_SET, version=snapshot).collect()
    columns = [c for c in training_features(frame) if c not in config.exclude_features]
    dbt_vars = project_vars()
    contract = input_contract(columns, {c: str(frame.schema[c]) for c in columns}, dbt_vars)
    not_online = missing_online(columns, FeatureParams.from_dbt_project())
    if not_online:
        context.log.warning(f"the online features can't compute {not_online}: this version can't be served")
    data = _splits(frame, columns, config.shuffle_labels, config.seed)
    windows = {}
    for split in SPLITS:
        days = frame.filter(pl.col("split") == split)["event_date"]
        windows |= {f"{split}_start": str(days.min()), f"{split}_end": str(days.max())}
    client = mlflow.client()
    with mlflow.tracked_run(context, tags={"training_set_delta_version": str(snapshot)}):
        run_id = mlflow_api.active_run().info.run_id
        mlflow_api.log_params(
            {**config.model_dump(), "training_set_delta_version": snapshot, **windows}
            | {f"rows_{s}": int(data[s][1].size) for s in data}
        )

        def log_trial(number: int, params: dict, result) -> None:
            ap = result.history["average_precision"][result.best_iteration - 1]
            context.log.info(f"trial {number}: validation PR-AUC {ap:.4f} at {result.best_iteration} rounds")
            with mlflow_api.start_run(run_name=f"trial-{number}", nested=True):
                mlflow_api.log_params({k: v for k, v in params.items() if k != "metric"})
                mlflow_api.log_metrics({"validation_pr_auc": ap, "best_iteration": result.best_iteration,
                                        "seconds": result.seconds})  # fmt: skip

        rounds, patience = config.num_boost_round, config.early_stopping_rounds
        started = time.perf_counter()
        with ExitStack() as stack:  # the Dask client, when there is one, closes after the last trial
            if config.dask_scheduler:
                from distributed import Client

                cluster = stack.enter_context(Client(config.dask_scheduler))
                context.log.info(f"training on the Dask cluster at {config.dask_scheduler}")
                fit = dask_trainer(cluster, data["train"], data["validation"], rounds, patience, columns)
            else:
                train = dataset(*data["train"], columns)
                valid = dataset(*data["validation"], columns, reference=train)
                fit = partial(train_booster, train=train, valid=valid, num_boost_round=rounds,
                              early_stopping_rounds=patience)  # fmt: skip

            base = base_params(config.num_threads, config.seed)
            best, trials = tune(base, fit, config.n_trials, config.seed, log_trial)
        train_seconds = time.perf_counter() - started
        tracking.log_iteration_metrics(client, run_id, best.history)
        gains = best.booster.feature_importance(importance_type="gain").tolist()
        importance = feature_importance_png(columns, gains)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "feature_importance.png").write_bytes(importance)
            mlflow_api.log_artifact(str(Path(tmp) / "feature_importance.png"))
        mlflow_api.log_dict(contract, registry.CONTRACT_FILE)
        model_uri = tracking.log_model(best.booster, lake.root, columns)

        x_hold, y_hold = data["holdout"]
        p_hold = best.booster.predict(x_hold)
        holdout = score_metrics(y_hold, p_hold)
        validation_ap = best.history["average_precision"][best.best_iteration - 1]
        mlflow_api.log_metrics(
            {f"holdout_{k}": v for k, v in holdout.items()} | {"train_seconds": train_seconds}
        )
        version = tracking.register(
            client, mlflow.registered_model_name, model_uri, run_id,
            tracking.model_tags(
                context.run.run_id, snapshot, bronze, windows, best.params, best.best_iteration
            ) | {k: context.run.tags[k] for k in registry.RETRAIN_TAGS if k in context.run.tags}
            | {registry.TAG_FEATURE_COLUMNS: ",".join(columns),
               registry.TAG_FEATURES_DBT_HASH: contract["features_dbt_hash"]},
        )  # fmt: skip
        client.set_registered_model_alias(mlflow.registered_model_name, registry.CHALLENGER, version)
    context.log.info(f"registered {mlflow.registered_model_name} v{version} as {registry.CHALLENGER}")

    holdout_rows = frame.filter(pl.col("split") == "holdout").select("transaction_id", "event_date")
    comparison = [("model", holdout["roc_auc"], holdout["pr_auc"])]
    truth = oracle.truth(holdout_rows["event_date"].unique().to_list())
    if truth is not None:
        joined = holdout_rows.with_columns(pl.Series("y", y_hold), pl.Series("p", p_hold)).join(
            truth.select("transaction_id", "p_fraud"), on="transaction_id"
        )
        best_possible = score_metrics(joined["y"].to_numpy(), joined["p_fraud"].to_numpy())
        comparison.append(("simulator oracle", best_possible["roc_auc"], best_possible["pr_auc"]))
    params = {k: v for k, v in best.params.items() if k not in ("metric", "verbosity")}
    return dg.MaterializeResult(
        metadata={
            "model_version": version,
            "alias": registry.CHALLENGER,
            "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run_id)),
            "training_set_delta_version": snapshot,
            "validation_pr_auc": float(validation_ap),
            "holdout_roc_auc": float(holdout["roc_auc"]),
            "holdout_pr_auc": float(holdout["pr_auc"]),
            "holdout_vs_oracle": dg.MetadataValue.md(
                markdown_table(["scorer (same holdout rows)", "ROC-AUC", "PR-AUC"], comparison)
            ),
            "best_params": dg.MetadataValue.json(params),
            "best_iteration": best.best_iteration,
            "trials": dg.MetadataValue.md(markdown_table(list(trials[0]), [t.values() for t in trials])),
            "train_seconds": round(train_seconds, 2),
            "feature_importance": dg.MetadataValue.md(png_markdown(importance, "feature importance (gain)")),
            "shuffled_labels": config.shuffle_labels,
            "feature_columns": dg.MetadataValue.json(columns),
            "features_dbt_hash": contract["features_dbt_hash"],
            "features_not_online": ", ".join(not_online) or "none",
        }
        | ({"roc_auc_over_oracle": float(comparison[0][1] / comparison[1][1])} if truth is not None else {})
    )
