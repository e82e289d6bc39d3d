"""The service's scores through LightGBM's single-row path (ml_assets.serving.predict) are
Booster.predict's, to the bit: on real boosters, rows with NaN and with values on and around the
trees' split thresholds, and the inputs the fast path leaves to Booster.predict."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from ml_assets.serving.predict import predict


@pytest.fixture(scope="module")
def booster():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 6))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take their own branch
    y = ((np.nan_to_num(x[:, 0]) + rng.normal(size=2000) * 0.5) > 0.3).astype(int)
    return lgb.train({"objective": "binary", "num_leaves": 15, "verbose": -1}, lgb.Dataset(x, y), 60)


def _split_thresholds(booster) -> list[tuple[int, float]]:
    found = []

    def walk(node):
        if "split_feature" in node:
            found.append((node["split_feature"], node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return found


def test_one_row_scores_as_booster_predict_to_the_bit(booster):
    from ml_assets.serving import predict as module

    predict(booster, np.zeros((1, 6)), num_threads=1)
    assert module._fast_off == [] and 1 in module._fast[booster]  # the single-row path is what scores
    rng = np.random.default_rng(5)
    rows = list(rng.normal(size=(300, 6)))
    rows += [np.full(6, np.nan), np.zeros(6), np.full(6, 1e300), np.full(6, -1e300)]
    for feature, threshold in _split_thresholds(booster)[:200]:  # on a threshold and either side of it
        for value in (threshold, np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf)):
            row = rng.normal(size=6)
            row[feature] = value
            rows.append(row)
    for row in rows:
        x = row.reshape(1, -1)
        got = predict(booster, x, num_threads=1)
        assert got.shape == (1,)
        assert got.tobytes() == booster.predict(x, num_threads=1).tobytes(), row


def test_other_inputs_go_to_booster_predict(booster):
    rng = np.random.default_rng(6)
    many = rng.normal(size=(7, 6))
    assert predict(booster, many, 1).tobytes() == booster.predict(many, num_threads=1).tobytes()
    # A non-contiguous float32 row is read as the same doubles.
    wide = rng.normal(size=(1, 12)).astype(np.float32)[:, ::2]
    assert predict(booster, wide, 1).tobytes() == booster.predict(wide, num_threads=1).tobytes()
    with pytest.raises(lgb.basic.LightGBMError):  # the wrong width raises as LightGBM raises it
        predict(booster, np.zeros((1, 2)), 1)
