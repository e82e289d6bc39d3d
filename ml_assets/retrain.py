"""Retrain a registered model version from its pinned snapshot and check it reproduces.

    python -m ml_assets.retrain 3        (or: make retrain VERSION=3)

Reads the version's tags (training snapshot's Delta version, LightGBM parameters, boosting
rounds), reads the snapshot by Delta time travel, trains again (training is deterministic), and
compares the holdout metrics and predictions with the registered version's. Exits 1 if they
differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("ml_assets.retrain")


class Refusal(Exception):
    """An expected refusal (no such version, nothing pinned to retrain from): one line, exit 1."""


def _pinned(client, model_name: str, version: str):
    """The version's registry entry, or a Refusal saying why it can't be retrained."""
    from mlflow.exceptions import MlflowException

    from ml_assets.lib import registry

    try:
        mv = client.get_model_version(model_name, version)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "not found" in str(e).lower():
            raise Refusal(f"{model_name} has no version {version!r}") from None
        raise
    needed = (registry.TAG_TRAINING_SET_VERSION, registry.TAG_PARAMS, registry.TAG_BEST_ITERATION)
    missing = [t for t in needed if t not in mv.tags]
    if missing:
        raise Refusal(
            f"{model_name} v{version} does not record {', '.join(missing)}: nothing pinned to retrain from"
        )
    return mv


def retrain(version: str, model_name: str) -> dict:
    import lightgbm as lgb
    import numpy as np
    import polars as pl
    from mlflow import MlflowClient

    from ml_assets.defs.resources import LakeResource
    from ml_assets.lib import paths, registry, tables, tracking
    from ml_assets.lib.evaluation import score_metrics
    from ml_assets.lib.features import LABEL
    from ml_assets.lib.training import dataset, matrix

    uri = paths.mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = _pinned(client, model_name, version)
    log.info("retraining %s v%s from its pinned snapshot", model_name, version)
    tags = mv.tags
    snapshot = int(tags[registry.TAG_TRAINING_SET_VERSION])
    params = json.loads(tags[registry.TAG_PARAMS])
    rounds = int(tags[registry.TAG_BEST_ITERATION])

    lake = LakeResource.from_env()
    frame = lake.scan(tables.TRAINING_SET, version=snapshot).collect()
    train = frame.filter(pl.col("split") == "train")
    holdout = frame.filter(pl.col("split") == "holdout")
    registered = tracking.load_booster(uri, model_name, version)
    columns = registry.model_columns(tags, registered)  # the version's own, not today's spec
    train_set = dataset(matrix(train, columns), train[LABEL].to_numpy(), columns)
    booster = lgb.train(params, train_set, num_boost_round=rounds)
    x_hold, y_hold = matrix(holdout, columns), holdout[LABEL].to_numpy()
    again = booster.predict(x_hold)

    original = registered.predict(x_hold)
    logged = client.get_run(mv.run_id).data.metrics
    reproduced = score_metrics(y_hold, again)
    return {
        "version": version,
        "training_set_delta_version": snapshot,
        "boosting_rounds": rounds,
        "holdout_rows": int(y_hold.size),
        "logged_holdout_roc_auc": logged.get("holdout_roc_auc"),
        "retrained_holdout_roc_auc": reproduced["roc_auc"],
        "logged_holdout_pr_auc": logged.get("holdout_pr_auc"),
        "retrained_holdout_pr_auc": reproduced["pr_auc"],
        "max_prediction_difference": float(np.max(np.abs(original - again))) if again.size else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    from ml_assets.lib.settings import value

    ap = argparse.ArgumentParser(prog="python -m ml_assets.retrain", description=__doc__.split("\n\n")[0])
    ap.add_argument("version", nargs="?", help="registered model version number")
    ap.add_argument("--model-name", default=value("ML_ASSETS_MODEL_NAME"))
    args = ap.parse_args(argv)
    from ml_assets.lib.cli import configure_logging

    configure_logging()
    if not args.version:
        print("not retrained: name a version (make retrain VERSION=N)")
        return 1
    try:
        result = retrain(args.version.removeprefix("v"), args.model_name)
    except Refusal as refusal:
        print(f"not retrained: {refusal}")
        return 1
    for key, figure in result.items():
        print(f"{key:<28} {figure}")
    same = (
        result["max_prediction_difference"] <= 1e-12
        and abs(result["retrained_holdout_roc_auc"] - result["logged_holdout_roc_auc"]) <= 1e-12
    )
    print("reproduced: identical predictions and metrics" if same else "NOT reproduced")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
