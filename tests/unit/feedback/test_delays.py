"""Label delays: the learned window against an independent order-statistic computation and its
coverage, and the matured cohorts' release rule."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
from scipy.stats import binom, lognorm

from rig.errors import PromoterError
from rig.feedback.delays import (
    DELAY_EDGES_MS,
    DelayModel,
    MaturedCohorts,
    WindowConfig,
    cohort_width_ms,
    delay_bins,
    groups,
)
from rig.feedback.sequential import Moments


def reference_bound(delays: np.ndarray, coverage: float, confidence: float) -> float | None:
    """The smallest order statistic X_(k) with P(X_(k) >= the coverage quantile) >= confidence, found
    by scanning binom.cdf(k - 1; n, coverage) (no ppf), as the upper edge of its bin."""
    ordered = np.sort(delays)
    n = ordered.size
    for k in range(1, n + 1):
        if binom.cdf(k - 1, n, coverage) >= confidence:
            value = ordered[k - 1]
            return float(DELAY_EDGES_MS[np.searchsorted(DELAY_EDGES_MS, value, side="left")])
    return None


@pytest.mark.parametrize(("n", "coverage"), [(299, 0.99), (300, 0.99), (2_000, 0.99), (500, 0.9)])
def test_quantile_bound_is_the_order_statistic_the_binomial_rule_picks(n: int, coverage: float) -> None:
    rng = np.random.default_rng(n)
    delays = np.exp(rng.normal(8.0, 1.0, n))
    model = DelayModel()
    model.add(np.ones(n), delays)
    assert model.quantile_bound_ms(1, coverage, 0.95) == reference_bound(delays, coverage, 0.95)


def test_too_few_delays_give_no_bound_and_no_window() -> None:
    model = DelayModel()
    model.add(np.ones(298), np.full(298, 1_000.0))
    model.add(np.zeros(5_000), np.full(5_000, 10.0))
    assert model.quantile_bound_ms(1, 0.99, 0.95) is None, "298 < log(0.05)/log(0.99)"
    assert model.window_ms(0.99) is None
    model.add(np.ones(1), np.array([1_000.0]))
    assert model.window_ms(0.99) == pytest.approx(DELAY_EDGES_MS[np.searchsorted(DELAY_EDGES_MS, 1_000.0)])


def test_the_bound_covers_the_quantile_in_at_least_confidence_of_samples() -> None:
    rng = np.random.default_rng(1)
    truth = lognorm(s=0.75, scale=60_000.0)
    q99 = truth.ppf(0.99)
    covered = 0
    for _ in range(500):
        model = DelayModel()
        model.add(np.ones(600), truth.rvs(600, random_state=rng))
        covered += model.quantile_bound_ms(1, 0.99, 0.95) >= q99
    assert covered / 500 >= 0.95 - 2 * np.sqrt(0.95 * 0.05 / 500)


def test_the_window_is_the_larger_label_bound_and_a_fixed_or_capped_window_wins() -> None:
    rng = np.random.default_rng(2)
    model = DelayModel()
    model.add(np.zeros(5_000), np.exp(rng.normal(8.0, 0.5, 5_000)))
    model.add(np.ones(1_000), np.exp(rng.normal(10.0, 0.5, 1_000)))
    learned = model.window_ms(0.99)
    positive, negative = model.quantile_bound_ms(1, 0.99, 0.95), model.quantile_bound_ms(0, 0.99, 0.95)
    assert positive is not None and negative is not None
    assert learned == positive > negative
    assert WindowConfig().window_ms(model) == learned
    assert WindowConfig(fixed_ms=5.0).window_ms(model) == 5.0
    assert WindowConfig(max_ms=1_000.0).window_ms(model) == 1_000.0


def test_histograms_round_trip_through_their_sparse_form_and_merge() -> None:
    rng = np.random.default_rng(3)
    labels, delays = rng.integers(0, 2, 1_000), rng.exponential(5_000.0, 1_000)
    model = DelayModel()
    model.add(labels, delays)
    again = DelayModel()
    for label in (0, 1):
        again.add_counts(label, model.sparse(label))
    assert all(np.array_equal(model.counts[label], again.counts[label]) for label in (0, 1))
    model.merge(again)
    assert model.n(0) + model.n(1) == 2_000
    assert delay_bins(np.array([-5.0, 0.0, 1.0, 1.01, 1e12])).tolist() == [
        0,
        0,
        0,
        1,
        DELAY_EDGES_MS.size - 1,
    ]


@pytest.mark.parametrize(("window", "width"), [(0.0, 1), (63.0, 1), (64.0, 2), (6_310_000.0, 131_072)])
def test_cohort_width_is_a_power_of_two_at_or_below_a_32nd_of_the_window(window: float, width: int) -> None:
    assert cohort_width_ms(window) == width


def test_a_cohort_is_released_once_the_watermark_is_a_window_past_its_end_and_late_rows_join_at_once() -> (
    None
):
    cohorts, window = MaturedCohorts(), 64.0  # cohorts 2 ms wide
    predicted = np.array([0, 1, 2, 3, 10])
    delays = np.array([5, 70, 3, 64, 1])
    keep, index = cohorts.place(predicted, delays, window)
    assert keep.tolist() == [True, False, True, True, True] and cohorts.beyond_window == 1
    for key, rows in groups(index[keep]):
        cohorts.add((2, key), "d", Moments.of(predicted[keep][rows].astype(float)))
    cohorts.advance(np.array([65]))
    assert list(cohorts.release(window)) == [], "cohort [0, 2) needs the watermark at 2 + 64"
    cohorts.advance(np.array([66, 60]))
    (first,) = cohorts.release(window)
    assert first["d"] == Moments.of(np.array([0.0]))
    cohorts.advance(np.array([76]))
    released = list(cohorts.release(window))
    # release types its cohorts' statistics as Mergeable: this test's are the Moments it added.
    assert [cast(Moments, item["d"]).n for item in released] == [2, 1], "oldest first: [2, 4), then [10, 12)"
    cohorts.add((2, 0), "d", Moments.of(np.array([1.0])))  # a row of a released cohort, arriving late
    assert [cast(Moments, item["d"]).n for item in cohorts.release(window)] == [1]
    assert cohorts.counted == 4 and cohorts.watermark_ms == 76


def test_groups_yield_each_key_with_its_rows() -> None:
    keys = np.array([5, 3, 5, 9, 3, 3])
    assert [(key, rows.tolist()) for key, rows in groups(keys)] == [(3, [1, 4, 5]), (5, [0, 2]), (9, [3])]
    assert list(groups(np.array([], dtype=np.int64))) == []


@pytest.mark.parametrize(
    "settings", [{"coverage": 1.0}, {"confidence": 0.0}, {"fixed_ms": -1.0}, {"max_ms": 0.0}]
)
def test_invalid_window_settings_raise_promoter_error(settings: dict) -> None:
    with pytest.raises(PromoterError):
        WindowConfig(**settings)
