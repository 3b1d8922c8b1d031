"""DenseScorer gives XGBoost's inplace_predict scores bit for bit, on every input the backbone passes."""

from __future__ import annotations

import concurrent.futures
from functools import cache

import numpy as np
import pytest
import xgboost as xgb

from rig.models.dense import DenseScorer

FEATURES = 6


def training_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2_000, FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2]) > 0).astype(int)
    return x, y


@cache
def booster(objective: str = "binary:logistic") -> xgb.Booster:
    x, y = training_data()
    params = {"max_depth": 4, "objective": objective, "nthread": 1}
    if objective.startswith("multi"):
        params["num_class"] = 3
        y = y + (x[:, 3] > 0.5)
    return xgb.train(params, xgb.DMatrix(x, y), num_boost_round=30)


def rows(n: int, seed: int = 1) -> np.ndarray:
    x, _ = training_data(seed)
    return np.ascontiguousarray(x[:n])


@pytest.mark.parametrize("n", [1, 7, 300])
@pytest.mark.parametrize("objective", ["binary:logistic", "reg:squarederror", "multi:softprob"])
def test_scores_equal_inplace_predict_bit_for_bit(n: int, objective: str) -> None:
    model = booster(objective)
    data = rows(n)
    expected = model.inplace_predict(data)
    scores = DenseScorer(model).inplace_predict(data)
    assert scores.shape == expected.shape and scores.dtype == np.float32
    assert np.array_equal(scores, expected)


def test_views_and_float64_are_read_as_xgboost_reads_them() -> None:
    model = booster()
    wide = rows(50, seed=2).repeat(2, axis=1)  # every feature twice: a strided view of half of them
    view = wide[::2, ::2]
    scorer = DenseScorer(model)
    assert not view.flags.c_contiguous
    assert np.array_equal(scorer.inplace_predict(view), model.inplace_predict(np.ascontiguousarray(view)))
    doubles = rows(50, seed=3).astype(np.float64) * 1.000000001
    assert np.array_equal(scorer.inplace_predict(doubles), model.inplace_predict(doubles))


def test_the_wrong_number_of_features_is_refused() -> None:
    scorer = DenseScorer(booster())
    with pytest.raises(ValueError, match=f"expected: {FEATURES}"):
        scorer.inplace_predict(np.zeros((3, FEATURES + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="Feature shape mismatch"):
        scorer.inplace_predict(np.zeros(FEATURES, dtype=np.float32))


def test_threads_get_their_own_scores() -> None:
    model = booster()
    scorer = DenseScorer(model)
    batches = [rows(n, seed=n) for n in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89) * 20]
    expected = [model.inplace_predict(batch) for batch in batches]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(scorer.inplace_predict, batches))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob"])
def test_margins_equal_inplace_predict_bit_for_bit(objective: str) -> None:
    model = booster(objective)
    data = rows(40, seed=4)
    margins = DenseScorer(model).inplace_predict(data, predict_type="margin")
    assert np.array_equal(margins, model.inplace_predict(data, predict_type="margin"))
    assert not np.array_equal(margins, model.inplace_predict(data))  # a margin, not the probability


def test_unknown_predict_type_is_refused() -> None:
    with pytest.raises(ValueError, match="predict_type"):
        DenseScorer(booster()).inplace_predict(rows(3), predict_type="leaf")


def test_boosters_sharing_a_thread_s_proxy_each_score_their_own_input() -> None:
    # Every scorer of a thread hands XGBoost the same proxy DMatrix: nothing of one call (its rows,
    # their count, the other model's features) may show in the next.
    wide = xgb.train(
        {"max_depth": 3, "objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(rows(200, seed=5).repeat(2, axis=1), np.arange(200) % 2),
        num_boost_round=10,
    )
    scorers = {
        "narrow": DenseScorer(booster()),
        "wide": DenseScorer(wide),
        "multi": DenseScorer(booster("multi:softprob")),
    }
    models = {"narrow": booster(), "wide": wide, "multi": booster("multi:softprob")}
    for n in (1, 300, 2, 7, 1):
        for name, scorer in scorers.items():
            data = rows(n, seed=n) if name != "wide" else rows(n, seed=n).repeat(2, axis=1)
            assert np.array_equal(scorer.inplace_predict(data), models[name].inplace_predict(data)), (name, n)
