"""Training wall time of the project's path against a bare `lightgbm.train`, same params, same matrix.

The project's path is what `fraud_model` does per fit: the feature matrix from the training set
(`matrix`), a `Dataset` with feature names and categorical columns (`dataset`), and `train_booster`
with its validation set and callbacks. The bare baseline gets the ready numpy matrix. Both run the
same number of rounds (early stopping disabled) with the same threads.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import line, save

ROWS, ROUNDS = 400_000, 150


def _frame(rows: int):
    import polars as pl

    from ml_assets.lib.features import CATEGORICAL_FEATURES, feature_columns

    FEATURE_COLUMNS = feature_columns()

    rng = np.random.default_rng(0)
    data = {c: rng.normal(size=rows) for c in FEATURE_COLUMNS}
    for c in CATEGORICAL_FEATURES:
        data[c] = rng.integers(0, 20, rows).astype(float)
    logit = data["amount"] * 1.5 + data["card_tx_count_1h"] - 4.5
    data["is_fraud"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pl.DataFrame(data)


def main() -> dict:
    import lightgbm as lgb

    from ml_assets.lib.features import LABEL, feature_columns
    from ml_assets.lib.training import base_params, dataset, matrix, train_booster

    columns = feature_columns()

    frame = _frame(ROWS)
    valid_frame = _frame(ROWS // 8)
    params = base_params(num_threads=2, seed=7) | {"learning_rate": 0.05, "num_leaves": 63}
    x, y = matrix(frame, columns), frame[LABEL].to_numpy()

    t0 = time.perf_counter()
    lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=ROUNDS)
    bare = time.perf_counter() - t0

    t0 = time.perf_counter()
    train = dataset(matrix(frame, columns), frame[LABEL].to_numpy(), columns)
    valid = dataset(matrix(valid_frame, columns), valid_frame[LABEL].to_numpy(), columns, reference=train)
    ours = train_booster(params, train, valid, ROUNDS, early_stopping_rounds=ROUNDS)
    project = time.perf_counter() - t0

    t0 = time.perf_counter()
    x_valid = matrix(valid_frame, columns)
    lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=ROUNDS,
              valid_sets=[lgb.Dataset(x_valid, label=valid_frame[LABEL].to_numpy())])  # fmt: skip
    bare_valid = time.perf_counter() - t0

    print(f"training {ROWS:,} rows x {x.shape[1]} features, {ROUNDS} rounds, 2 threads")
    print(line("bare lightgbm.train", bare, "s"))
    print(line("bare lightgbm.train + validation set", bare_valid, "s", bare, "bare"))
    print(line("project (matrix, dataset, train_booster)", project, "s", bare, "bare"))
    print(line("project vs bare with the same validation set", project, "s", bare_valid, "bare+valid"))
    result = {"bare_s": bare, "bare_valid_s": bare_valid, "project_s": project, "rounds": ours.best_iteration}
    save("training", result)
    return result


if __name__ == "__main__":
    main()
