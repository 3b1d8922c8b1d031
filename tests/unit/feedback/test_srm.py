"""The sequential sample ratio test: its Bayes factor against scipy's distributions, its false-flag rate
under continuous monitoring, entities as units, eras, and what it holds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import dirichlet_multinomial, multinomial

from rig.feedback.srm import GOLDEN_ARM, SrmMonitor, log_srm_bayes_factor, split_of
from rig.routing.table import control_key, fold, set_golden_event, start_experiment_event
from rig.wire.records import JoinedOutcome
from tests.support.records import RequestOutcome


@pytest.mark.parametrize(
    ("counts", "shares", "concentration"),
    [([48, 52], [0.5, 0.5], 500.0), ([30, 170], [0.2, 0.8], 50.0), ([10, 25, 65], [0.1, 0.2, 0.7], 200.0)],
)
def test_bayes_factor_is_the_dirichlet_multinomial_over_the_multinomial_likelihood(
    counts: list[int], shares: list[float], concentration: float
) -> None:
    x, theta = np.array(counts), np.array(shares)
    n = int(x.sum())
    # the multinomial coefficient is in both probabilities and cancels: a ratio of sequence likelihoods
    expected = dirichlet_multinomial.logpmf(x, concentration * theta, n) - multinomial.logpmf(x, n, theta)
    assert float(log_srm_bayes_factor(x, theta, concentration)) == pytest.approx(expected, abs=1e-9)


def test_bayes_factor_vectorises_over_leading_axes() -> None:
    counts = np.array([[[5, 5], [9, 1]], [[0, 3], [50, 50]]])
    shares = np.array([0.5, 0.5])
    each = [[float(log_srm_bayes_factor(c, shares, 100.0)) for c in row] for row in counts]
    assert log_srm_bayes_factor(counts, shares, 100.0) == pytest.approx(np.array(each))


def test_a_correct_split_is_flagged_in_at_most_alpha_of_runs_under_continuous_monitoring() -> None:
    rng = np.random.default_rng(1)
    runs, units, alpha, shares = 1_000, 5_000, 0.05, np.array([0.2, 0.3, 0.5])
    arms = rng.choice(3, size=(runs, units), p=shares)
    counts = np.stack([np.cumsum(arms == k, axis=1) for k in range(3)], axis=-1)  # a look after every unit
    p = np.minimum.accumulate(np.exp(-np.clip(log_srm_bayes_factor(counts, shares, 500.0), 0, 709)), axis=1)
    assert np.mean(p[:, -1] <= alpha) <= alpha


def routing(*events):
    return fold((control_key(event), event) for event in events)


AB = routing(set_golden_event("g", "t"), start_experiment_event("exp", "c", "ab", "t", traffic_share=0.5))


def rows_of(entity: str, request: str, in_arm: bool, predicted: int = 0) -> list[JoinedOutcome]:
    common: RequestOutcome = {
        "request_id": request,
        "entity_id": entity,
        "label": 0,
        "prediction_time": predicted,
        "outcome_time": predicted + 1,
    }
    out = [JoinedOutcome(**common, model_version="g", role="golden", score=0.1)]
    if in_arm:
        out.append(
            JoinedOutcome(
                **common,
                model_version="c",
                role="ab",
                experiment="exp",
                score=0.1,
                golden_model_version="g",
                golden_score=0.1,
            )
        )
    return out


def test_the_split_of_a_routing_lists_ab_arms_then_the_golden() -> None:
    split = split_of(AB)
    assert (
        split is not None and split.arms == (("exp", "c", 0.5), (GOLDEN_ARM, "g", 0.5)) and not split.capped
    )
    shadow = routing(set_golden_event("g", "t"), start_experiment_event("s", "c", "shadow", "t"))
    assert split_of(shadow) is None
    capped = routing(
        set_golden_event("g", "t"),
        start_experiment_event("exp", "c", "ab", "t", traffic_share=0.5, traffic_cap_rps=10.0),
    )
    assert split_of(capped).capped  # type: ignore[union-attr]


def test_entities_not_requests_are_the_units() -> None:
    monitor = SrmMonitor(alpha=0.05, tolerance=0.05)
    monitor.follow(AB, None)
    hot = [row for i in range(5_000) for row in rows_of("hot", f"h{i}", in_arm=True)]
    monitor.observe(hot + rows_of("cold", "c0", in_arm=False))
    assert monitor.counts.tolist() == [1, 1]
    assert not monitor.mismatch, "one hot entity is one unit: no mismatch"


def test_an_entity_moves_to_its_arm_when_its_challenger_row_comes_after_its_golden_row() -> None:
    monitor = SrmMonitor(alpha=0.05, tolerance=0.05)
    monitor.follow(AB, None)
    golden_row, arm_row = rows_of("e1", "r1", in_arm=True)
    monitor.observe([golden_row])
    assert monitor.counts.tolist() == [0, 1]
    monitor.observe([arm_row])
    assert monitor.counts.tolist() == [1, 0]


def test_a_lost_arm_is_flagged_and_its_check_fails() -> None:
    rng = np.random.default_rng(2)
    monitor = SrmMonitor(alpha=0.05, tolerance=0.05)
    monitor.follow(AB, None)
    for batch in range(40):
        rows = []
        for i in range(100):
            in_arm = bool(rng.random() < 0.5)
            if in_arm and rng.random() < 0.3:  # 30 % of the arm's entities never come back
                continue
            rows += rows_of(f"e{batch}-{i}", f"r{batch}-{i}", in_arm)
        monitor.observe(rows)
    assert monitor.mismatch and monitor.p_value <= 0.05
    check = monitor.checks()["c"]
    assert check.name == "srm" and check.state == "fail"
    assert check.estimate == pytest.approx(monitor.counts[0] / monitor.counts.sum())
    assert check.ci_high is not None and check.ci_high < 0.5 and check.margin == 0.5


def test_a_correct_split_passes_once_its_share_is_shown_within_tolerance() -> None:
    rng = np.random.default_rng(3)
    monitor = SrmMonitor(alpha=0.05, tolerance=0.05)
    monitor.follow(AB, None)
    states = []
    for batch in range(60):
        monitor.observe(
            [
                row
                for i in range(200)
                for row in rows_of(f"e{batch}-{i}", f"r{batch}-{i}", bool(rng.random() < 0.5))
            ]
        )
        states.append(monitor.checks()["c"].state)
    assert states[0] == "pending" and states[-1] == "pass" and "fail" not in states
    check = monitor.checks()["c"]
    assert check.ci_low is not None and check.estimate is not None and check.ci_high is not None
    assert 0.475 <= check.ci_low < check.estimate < check.ci_high <= 0.525


def test_a_new_split_starts_a_new_era_that_counts_requests_predicted_from_the_watermark() -> None:
    monitor = SrmMonitor(alpha=0.05, tolerance=0.05)
    monitor.follow(AB, None)
    monitor.observe(rows_of("e1", "r1", in_arm=True))
    resized = routing(
        set_golden_event("g", "t"), start_experiment_event("exp", "c", "ab", "t", traffic_share=0.3)
    )
    monitor.follow(resized, 1_000)
    assert monitor.counts.tolist() == [0, 0] and monitor.since_ms == 1_000
    monitor.observe(
        rows_of("e2", "r2", in_arm=False, predicted=999) + rows_of("e3", "r3", True, predicted=1_000)
    )
    assert monitor.counts.tolist() == [1, 0], "the request predicted before the change does not count"
    monitor.follow(resized, 5_000)
    assert monitor.since_ms == 1_000, "the same split goes on"


def test_a_capped_split_is_not_tested() -> None:
    capped = routing(
        set_golden_event("g", "t"),
        start_experiment_event("exp", "c", "ab", "t", traffic_share=0.5, traffic_cap_rps=5.0),
    )
    monitor = SrmMonitor(alpha=0.05, tolerance=0.05)
    monitor.follow(capped, None)
    monitor.observe([row for i in range(1_000) for row in rows_of(f"e{i}", f"r{i}", in_arm=False)])
    assert not monitor.mismatch
    assert monitor.checks()["c"].state == "unmeasured"


def test_the_p_value_is_the_running_minimum_of_one_over_the_bayes_factor() -> None:
    monitor = SrmMonitor(alpha=0.05, tolerance=0.05)
    monitor.follow(AB, None)
    seen, bounds = [], []
    for i in range(300):
        monitor.observe(rows_of(f"e{i}", f"r{i}", in_arm=i % 3 == 0))  # a third in a half-share arm
        seen.append(monitor.p_value)
        bounds.append(min(1.0, math.exp(-monitor.log_bayes_factor)))
    assert seen == pytest.approx(np.minimum.accumulate(bounds).tolist())
    assert seen[-1] <= 0.05 and monitor.mismatch
