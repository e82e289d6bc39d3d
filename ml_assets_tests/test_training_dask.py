"""Training with lightgbm.dask on a real Dask cluster against the single-machine fit, same data."""

from __future__ import annotations

import numpy as np
import pytest

from ml_assets.lib.evaluation import score_metrics
from ml_assets.lib.features import CATEGORICAL_FEATURES, feature_columns
from ml_assets.lib.training import base_params, dask_trainer, dataset, train_booster, tune

ROUNDS, PATIENCE = 300, 20
FEATURE_COLUMNS = feature_columns()


def _rows(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows shaped like transaction_features, with fraud driven by a few of them, an
    interaction with a categorical code, and noise (about 4% positives)."""
    x = rng.normal(size=(n, len(FEATURE_COLUMNS)))
    col = {c: x[:, FEATURE_COLUMNS.index(c)] for c in FEATURE_COLUMNS}
    for c in CATEGORICAL_FEATURES:
        x[:, FEATURE_COLUMNS.index(c)] = rng.integers(0, 8, size=n)
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values, as real features have
    channel = x[:, FEATURE_COLUMNS.index("channel_code")]
    logit = (
        -5.0
        + 1.5 * np.nan_to_num(col["amount_to_card_avg"])
        + 1.5 * np.nan_to_num(col["card_tx_count_1h"]) * (channel == 2)
        + 2.0 * (np.nan_to_num(col["is_new_card_device"]) > 1)
        + 1.5 * np.sin(2 * np.nan_to_num(col["hour_of_day"]))
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return x, y


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(11)
    return {name: _rows(n, rng) for name, n in (("train", 30_000), ("validation", 8_000), ("holdout", 8_000))}


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    # Threads, not processes: LightGBM keeps its network state per thread, so two workers in one
    # process still train as two machines over TCP, and the test doesn't pay two more imports of
    # lightgbm (tens of seconds on this box). Production workers are separate pods.
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_distributed_fit_is_a_booster_close_to_the_single_machine_one(splits, dask_client):
    import lightgbm as lgb

    params = base_params(num_threads=2, seed=7) | {"learning_rate": 0.1, "num_leaves": 31}
    train = dataset(*splits["train"], FEATURE_COLUMNS)
    valid = dataset(*splits["validation"], FEATURE_COLUMNS, reference=train)
    local = train_booster(params, train, valid, ROUNDS, PATIENCE)
    dist = dask_trainer(
        dask_client, splits["train"], splits["validation"], ROUNDS, PATIENCE, FEATURE_COLUMNS
    )(params)

    assert isinstance(dist.booster, lgb.Booster) and dist.params == params
    model = dist.booster.dump_model()
    assert model["feature_names"] == FEATURE_COLUMNS
    # Categorical features were passed as such: their info lists categories, a numeric one's none.
    assert all(model["feature_infos"][c]["values"] for c in CATEGORICAL_FEATURES)
    assert model["feature_infos"]["amount"]["values"] == []
    # Early stopping worked the same way: it stopped well before the cap, PATIENCE rounds after its best.
    for result in (local, dist):
        assert result.best_iteration < ROUNDS - PATIENCE
        assert len(result.history["auc"]) == result.best_iteration + PATIENCE
        assert result.booster.num_trees() == result.best_iteration  # the booster ends at its best round

    # Every tree was grown over both workers' shards: its root counts every training row.
    assert {t["tree_structure"]["internal_count"] for t in model["tree_info"]} == {len(splits["train"][1])}

    x_hold, y_hold = splits["holdout"]
    m_local = score_metrics(y_hold, local.booster.predict(x_hold))
    m_dist = score_metrics(y_hold, dist.booster.predict(x_hold))
    assert m_local["roc_auc"] > 0.8  # both learned the signal, not just agreed on noise
    # The fits differ in feature bins (each worker samples its own shard) and so in where early
    # stopping lands, not in data or objective. Over three data seeds the holdout differences were
    # at most 0.005 ROC-AUC and 0.015 PR-AUC; with ~300 frauds in the holdout, PR-AUC's own sampling
    # error is about 0.03. The bounds are twice the differences seen.
    assert m_dist["roc_auc"] == pytest.approx(m_local["roc_auc"], abs=0.01)
    assert m_dist["pr_auc"] == pytest.approx(m_local["pr_auc"], abs=0.03)


def test_tuning_runs_the_same_trials_on_the_cluster(splits, dask_client):
    base = base_params(num_threads=2, seed=7)
    train = dataset(*splits["train"], FEATURE_COLUMNS)
    valid = dataset(*splits["validation"], FEATURE_COLUMNS, reference=train)
    local, local_trials = tune(base, lambda p: train_booster(p, train, valid, ROUNDS, PATIENCE), 2, seed=3)
    dist, dist_trials = tune(
        base,
        dask_trainer(dask_client, splits["train"], splits["validation"], ROUNDS, PATIENCE, FEATURE_COLUMNS),
        2,
        seed=3,
    )

    tuned = ["learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "lambda_l2"]
    assert [[t[k] for k in tuned] for t in dist_trials] == [[t[k] for k in tuned] for t in local_trials]
    for a, b in zip(local_trials, dist_trials, strict=True):
        assert b["validation_pr_auc"] == pytest.approx(a["validation_pr_auc"], abs=0.03)
    best_ap = dist.history["average_precision"][dist.best_iteration - 1]
    assert best_ap == max(t["validation_pr_auc"] for t in dist_trials)
