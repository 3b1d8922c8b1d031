"""Label-dependent delays in the synthetic world: positives known later, settable, reproducible."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from sim import world as data

START = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def world() -> data.World:
    return data.make_world(seed=3, n_entities=2_000, days=5, start=START)


def delays_by_label(world: data.World, factor: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    requests = data.make_requests(world, 20_000, seed=seed)
    outcomes = data.make_outcomes(
        world, requests, seed=seed, delay_median_s=30.0, positive_delay_factor=factor
    )
    joined = outcomes.merge(requests, on="request_id", suffixes=("_outcome", "_request"))
    delay_s = (joined["event_time_outcome"] - joined["event_time_request"]).dt.total_seconds().to_numpy()
    labels = joined["label"].to_numpy()
    return delay_s[labels == 0], delay_s[labels == 1]


def test_positives_are_known_factor_times_later_than_negatives(world: data.World) -> None:
    negatives, positives = delays_by_label(world, factor=5.0)
    assert np.median(negatives) == pytest.approx(30.0, rel=0.05)
    assert np.median(positives) == pytest.approx(150.0, rel=0.1)
    same_negatives, same_positives = delays_by_label(world, factor=1.0)
    assert np.median(same_positives) == pytest.approx(np.median(same_negatives), rel=0.1)


def test_a_factor_of_one_draws_exactly_the_label_independent_delays(world: data.World) -> None:
    requests = data.make_requests(world, 500, seed=2)
    default = data.make_outcomes(world, requests, seed=9)
    explicit = data.make_outcomes(world, requests, seed=9, positive_delay_factor=1.0)
    pd.testing.assert_frame_equal(default, explicit)
    slower = data.make_outcomes(world, requests, seed=9, positive_delay_factor=4.0)
    assert (slower["label"].sum() == default["label"].sum()) and not slower.equals(default), (
        "same labels, later"
    )


def test_label_delays_draw_one_lognormal_per_label() -> None:
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(50_000), np.ones(50_000)]
    delays = data.label_delays(rng, labels, median_s=10.0, sigma=0.5, positive_factor=3.0)
    assert np.median(delays[labels == 0]) == pytest.approx(10.0, rel=0.02)
    assert np.median(delays[labels == 1]) == pytest.approx(30.0, rel=0.02)
    assert np.std(np.log(delays[labels == 1])) == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("settings", [{"median_s": 0.0}, {"sigma": -1.0}, {"positive_factor": 0.0}])
def test_invalid_delay_settings_raise(settings: dict) -> None:
    with pytest.raises(ValueError):
        data.label_delays(np.random.default_rng(0), np.zeros(3), **settings)
