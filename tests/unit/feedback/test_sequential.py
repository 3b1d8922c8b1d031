"""The promoter's sequential tests: exact statistics, guardrails, decisions valid against the schema."""

from __future__ import annotations

import itertools
import json
import math

import msgspec
import numpy as np
import pytest
from fastavro.validation import validate
from scipy.integrate import quad

from rig.errors import PromoterError
from rig.feedback.monitor import GoldenMonitor, LossStream
from rig.feedback.sequential import (
    Moments,
    PairState,
    Promoter,
    PromoterConfig,
    holm_adjust,
    log_mixture_ratio,
    losses,
    mixture_radius,
    welford_update,
)
from rig.wire.codec import load_schema
from rig.wire.records import to_plain

GOLDEN = "risk-v1"


def requests(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the true fraud probability and labels drawn from it."""
    logit = rng.normal(-1.8, 1.2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return logit, labels


def model(rng: np.random.Generator, logit: np.ndarray, noise: float) -> np.ndarray:
    """Scores of a model that sees the truth through Gaussian noise on the logit (more noise: worse)."""
    return 1 / (1 + np.exp(-(logit + rng.normal(0, noise, logit.size))))


def feed(
    promoter: Promoter, rng: np.random.Generator, noises: dict[str, float], n: int, batch: int = 500
) -> None:
    """Paired batches for every challenger in `noises` against a golden with logit noise 1.0."""
    for _ in range(n // batch):
        logit, labels = requests(rng, batch)
        golden = model(rng, logit, 1.0)
        for name, noise in noises.items():
            promoter.observe(GOLDEN, name, labels, golden, model(rng, logit, noise))


def test_welford_batches_match_numpy() -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_t(3, 5_000) * 0.2 + 0.05
    n, mean, m2 = 0, 0.0, 0.0
    pair = PairState(GOLDEN, "c")
    config = PromoterConfig(min_samples=10)
    edges = [0, 1, 1, 7, 100, 2_345, 5_000]
    for lo, hi in itertools.pairwise(edges):
        n, mean, m2 = welford_update(n, mean, m2, values[lo:hi])
        pair.update(values[lo:hi], config)
    assert n == pair.n == values.size
    assert mean == pytest.approx(values.mean(), abs=1e-12)
    assert m2 / (n - 1) == pytest.approx(values.var(ddof=1), rel=1e-10)
    assert pair.variance == pytest.approx(values.var(ddof=1), rel=1e-10)


def test_mixture_ratio_matches_direct_integral_over_the_mixing_distribution() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(0.03, 0.2, 60)
    n, mean, var, tau2 = d.size, d.mean(), d.var(ddof=1), 0.01**2

    def integrand(theta: float) -> float:
        likelihood_ratio = np.exp(np.sum(d * theta - theta**2 / 2) / var)
        return likelihood_ratio * np.exp(-(theta**2) / (2 * tau2)) / np.sqrt(2 * np.pi * tau2)

    direct, _ = quad(integrand, -1, 1, points=[0.0, mean], limit=200)
    assert math.exp(log_mixture_ratio(n, mean, var, tau2)) == pytest.approx(direct, rel=1e-6)
    radius = mixture_radius(n, var, tau2, 0.05)
    assert log_mixture_ratio(n, radius, var, tau2) == pytest.approx(math.log(20), rel=1e-9), (
        "the confidence sequence ends exactly where the mSPRT centred there rejects"
    )


def test_p_values_never_increase() -> None:
    rng = np.random.default_rng(3)
    config = PromoterConfig(min_samples=100, tau2=1e-4)
    pair = PairState(GOLDEN, "c")
    seen: list[float] = []
    for step in range(60):
        pair.update(rng.normal(0.01 * math.sin(step / 5), 0.1, 100), config)
        expected = min(
            seen[-1] if seen else 1.0, math.exp(-log_mixture_ratio(pair.n, pair.mean, pair.variance, 1e-4))
        )
        assert pair.p_value == pytest.approx(expected)
        seen.append(pair.p_value)
    assert all(later <= earlier for earlier, later in itertools.pairwise(seen))
    assert seen[-1] < 1.0


def test_no_decision_before_min_samples() -> None:
    promoter = Promoter(PromoterConfig(min_samples=1_000), GOLDEN)
    rng = np.random.default_rng(4)
    feed(promoter, rng, {"sharp": 0.1}, 900, batch=300)
    assert promoter.decide(1) == []
    (waiting,) = promoter.decide(1, include_keep=True)
    assert waiting.action == "keep"
    assert waiting.p_value is None
    assert "900 of 1000" in waiting.reason
    feed(promoter, rng, {"sharp": 0.1}, 100, batch=100)
    assert [d.action for d in promoter.decide(2)] == ["promote"]


def test_clear_winner_is_promoted_once_with_its_evidence() -> None:
    config = PromoterConfig()
    promoter = Promoter(config, GOLDEN)
    feed(promoter, np.random.default_rng(5), {"sharp": 0.3}, 5_000)
    (decision,) = promoter.decide(1_700_000_000_000)
    assert decision.action == "promote"
    assert decision.challenger_version == "sharp"
    assert decision.n == 5_000
    assert decision.estimate < 0, "challenger minus golden loss: negative means the challenger is better"
    assert decision.ci_low <= decision.estimate <= decision.ci_high < -config.min_effect
    assert decision.p_value is not None and decision.p_value <= config.alpha
    assert decision.e_value is not None and decision.e_value >= 1 / config.alpha
    assert promoter.decide(1_700_000_000_001) == [], "a promotion is recorded once"
    (again,) = promoter.decide(1_700_000_000_002, include_keep=True)
    assert again.action == "keep"
    assert again.reason.startswith("already recorded (promote)")


def test_aa_streams_are_rarely_promoted_under_continuous_monitoring() -> None:
    # min_effect 0 makes the promotion rule "the confidence sequence excludes 0", so this checks the
    # always-valid calibration itself, looking after every 100 outcomes.
    config = PromoterConfig(min_samples=200, min_effect=0.0, tau2=1e-4)
    rng = np.random.default_rng(6)
    runs, promoted = 200, 0
    for _ in range(runs):
        promoter = Promoter(config, GOLDEN)
        logit, labels = requests(rng, 4_000)
        golden, twin = model(rng, logit, 0.8), model(rng, logit, 0.8)
        for lo in range(0, 4_000, 100):
            cut = slice(lo, lo + 100)
            promoter.observe(GOLDEN, "twin", labels[cut], golden[cut], twin[cut])
            if any(d.action == "promote" for d in promoter.decide(lo)):
                promoted += 1
                break
    assert promoted <= 2 * config.alpha * runs


def test_holm_adjusted_p_values() -> None:
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([0.2]) == pytest.approx([0.2])


def test_holm_promotes_at_most_one_challenger_and_the_best() -> None:
    promoter = Promoter(PromoterConfig(), GOLDEN)
    feed(promoter, np.random.default_rng(7), {"good": 0.6, "best": 0.2, "same": 1.0}, 6_000)
    decisions = promoter.decide(1, include_keep=True)
    promoted = [d.challenger_version for d in decisions if d.action == "promote"]
    assert promoted == ["best"]
    by_name = {d.challenger_version: d for d in decisions}
    assert "passes, but challenger best gains more" in by_name["good"].reason
    assert by_name["best"].estimate < by_name["good"].estimate


def test_worse_challenger_is_never_promoted_and_recorded_once() -> None:
    promoter = Promoter(PromoterConfig(), GOLDEN)
    rng = np.random.default_rng(8)
    recorded = []
    for step in range(20):
        feed(promoter, rng, {"blurry": 1.6}, 500)
        decisions = promoter.decide(step)
        assert all(d.action != "promote" for d in decisions)
        recorded += decisions
    (worse,) = recorded
    assert worse.action == "keep"
    assert worse.reason.startswith("challenger worse")
    assert worse.estimate > 0


def test_decisions_match_the_avro_schema() -> None:
    schema = load_schema("Decision")
    promoter = Promoter(PromoterConfig(mode="auto"), GOLDEN)
    feed(promoter, np.random.default_rng(9), {"best": 0.2, "blurry": 1.6}, 3_000)
    promoter.observe(GOLDEN, "newcomer", np.array([1]), np.array([0.5]), np.array([0.4]))
    monitor = GoldenMonitor(PromoterConfig(), GOLDEN, reference_size=2_000, previous_version="risk-v0")
    rng = np.random.default_rng(10)
    logit, labels = requests(rng, 6_000)
    monitor.observe(labels, model(rng, logit, 0.5), previous_scores=model(rng, logit, 0.5))
    decisions = promoter.decide(1_700_000_000_000, include_keep=True) + monitor.decide(1, include_keep=True)
    assert {d.action for d in decisions} == {"promote", "keep"}
    assert len({d.decision_id for d in decisions}) == len(decisions)
    for decision in decisions:
        assert set(msgspec.structs.asdict(decision)) == {field["name"] for field in schema["fields"]}
        assert validate(to_plain(decision), schema, raise_errors=True)
        assert len(decision.decision_id) == 32


def degraded_stream(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    logit, labels = requests(rng, n)
    return labels, model(rng, logit, noise)


def test_golden_monitor_demotes_a_degraded_golden() -> None:
    config = PromoterConfig()
    monitor = GoldenMonitor(config, GOLDEN)
    rng = np.random.default_rng(11)
    monitor.observe(*degraded_stream(rng, monitor.reference_size, 0.5))
    demotions = []
    for step in range(30):
        monitor.observe(*degraded_stream(rng, 1_000, 1.5))
        demotions += monitor.decide(step)
    (demote,) = demotions
    assert demote.action == "demote"
    assert demote.challenger_version is None
    assert demote.ci_low > config.min_effect
    assert validate(to_plain(demote), load_schema("Decision"), raise_errors=True)


def test_golden_monitor_keeps_a_stable_golden() -> None:
    monitor = GoldenMonitor(PromoterConfig(), GOLDEN, reference_size=2_000)
    rng = np.random.default_rng(12)
    for step in range(40):
        monitor.observe(*degraded_stream(rng, 500, 0.8))
        assert monitor.decide(step) == []
    (keep,) = monitor.decide(99, include_keep=True)
    assert keep.action == "keep"
    assert keep.reason.startswith("golden stable")


def test_golden_monitor_demotes_when_the_previous_golden_shadow_is_better() -> None:
    config = PromoterConfig()
    monitor = GoldenMonitor(
        config, GOLDEN, baseline=LossStream.from_baseline(5.0, 1.0), previous_version="risk-v0"
    )
    rng = np.random.default_rng(13)
    for _ in range(10):
        logit, labels = requests(rng, 1_000)
        monitor.observe(labels, model(rng, logit, 1.2), previous_scores=model(rng, logit, 0.4))
    (demote,) = monitor.decide(1)
    assert demote.action == "demote"
    assert demote.challenger_version == "risk-v0"
    assert demote.estimate < 0, "previous minus current golden loss: the previous one did better"


def test_state_round_trips_through_json() -> None:
    promoter = Promoter(PromoterConfig(metric="brier"), GOLDEN)
    feed(promoter, np.random.default_rng(14), {"a": 0.5, "b": 1.2}, 2_000)
    restored = Promoter.from_dict(json.loads(json.dumps(promoter.to_dict())))
    assert restored.to_dict() == promoter.to_dict()
    monitor = GoldenMonitor(PromoterConfig(), GOLDEN, reference_size=100, previous_version="risk-v0")
    labels, scores = degraded_stream(np.random.default_rng(15), 500, 0.5)
    monitor.observe(labels, scores, previous_scores=scores[::-1])
    again = GoldenMonitor.from_dict(json.loads(json.dumps(monitor.to_dict())))
    assert again.to_dict() == monitor.to_dict()


def test_rows_of_another_golden_are_ignored_and_reset_starts_over() -> None:
    promoter = Promoter(PromoterConfig(), GOLDEN)
    promoter.observe("risk-v0", "c", np.array([0, 1]), np.array([0.2, 0.7]), np.array([0.1, 0.9]))
    assert promoter.pairs == {}
    assert promoter.stale_rows == 2
    feed(promoter, np.random.default_rng(16), {"c": 0.5}, 1_000)
    promoter.reset_for_new_golden("c")
    assert promoter.golden_version == "c"
    assert promoter.pairs == {}


@pytest.mark.parametrize(
    ("labels", "golden", "challenger"),
    [
        ([0, 1], [0.2, 0.7], [0.1]),
        ([0, 1], [0.2, 1.7], [0.1, 0.9]),
        ([0, 1], [0.2, math.nan], [0.1, 0.9]),
        ([0, 2], [0.2, 0.7], [0.1, 0.9]),
    ],
)
def test_unusable_batches_raise_promoter_error(labels: list, golden: list, challenger: list) -> None:
    promoter = Promoter(PromoterConfig(), GOLDEN)
    with pytest.raises(PromoterError):
        promoter.observe(GOLDEN, "c", np.array(labels), np.array(golden), np.array(challenger))


@pytest.mark.parametrize(
    "settings",
    [
        {"alpha": 0.0},
        {"min_samples": 1},
        {"min_effect": -1.0},
        {"metric": "auc"},
        {"mode": "manual"},
        {"tau2": 0.0},
    ],
)
def test_invalid_config_raises_promoter_error(settings: dict) -> None:
    with pytest.raises(PromoterError):
        PromoterConfig(**settings)


def test_moments_merge_exactly_in_any_grouping() -> None:
    rng = np.random.default_rng(17)
    values = rng.standard_t(4, 3_001)
    merged = Moments()
    for lo, hi in itertools.pairwise([0, 1, 500, 501, 2_000, 3_001]):
        merged = merged.merge(Moments.of(values[lo:hi]))
    assert merged.n == values.size
    assert merged.mean == pytest.approx(values.mean(), abs=1e-12)
    assert merged.variance == pytest.approx(values.var(ddof=1), rel=1e-10)
    assert Moments().merge(Moments()) == Moments()


def test_folding_moments_decides_as_observing_the_rows() -> None:
    rng = np.random.default_rng(18)
    by_rows, by_moments = Promoter(PromoterConfig(), GOLDEN), Promoter(PromoterConfig(), GOLDEN)
    for _ in range(6):
        logit, labels = requests(rng, 1_000)
        golden, challenger = model(rng, logit, 1.0), model(rng, logit, 0.3)
        by_rows.observe(GOLDEN, "c", labels, golden, challenger)
        loss_g, loss_c = losses("log_loss", labels, golden, challenger)
        by_moments.fold("c", Moments.of(loss_g - loss_c))
    a, b = by_rows.pairs["c"], by_moments.pairs["c"]
    assert (a.n, a.p_value) == (b.n, pytest.approx(b.p_value)) and a.mean == pytest.approx(b.mean)
    with pytest.raises(PromoterError):
        by_moments.fold(GOLDEN, Moments(1, 0.0, 0.0))


def test_a_held_winner_is_reported_once_per_hold_and_the_next_best_may_be_promoted() -> None:
    promoter = Promoter(PromoterConfig(), GOLDEN)
    feed(promoter, np.random.default_rng(19), {"best": 0.2, "good": 0.5}, 6_000)
    holds = {"best": ("guardrails", "not passed: latency pending")}
    decisions = promoter.decide(1, holds=holds)
    by_name = {d.challenger_version: d for d in decisions}
    assert by_name["good"].action == "promote", "the best that is not held"
    assert by_name["best"].action == "keep" and by_name["best"].reason.startswith("held (not passed: latency")
    assert promoter.decide(2, holds=holds) == []
    (promoted,) = promoter.decide(3)
    assert promoted.challenger_version == "best" and promoted.action == "promote"


def test_primary_checks_state_where_each_pair_stands() -> None:
    promoter = Promoter(PromoterConfig(), GOLDEN)
    feed(promoter, np.random.default_rng(20), {"best": 0.2, "blurry": 1.6, "twin": 1.0}, 4_000)
    checks = promoter.primary_checks()
    assert {name: check.state for name, check in checks.items()} == {
        "best": "pass",
        "blurry": "fail",
        "twin": "pending",
    }
    best, pair = checks["best"], promoter.pairs["best"]
    assert best.estimate is not None and best.ci_low is not None and best.ci_high is not None
    assert best.margin is not None
    assert best.name == "primary" and best.n == pair.n and best.estimate == -pair.mean
    assert best.ci_low < best.estimate < best.ci_high < best.margin == -PromoterConfig().min_effect
    assert best.p_value is not None and best.p_value <= 0.05
