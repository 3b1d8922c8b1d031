"""Guardrails: each statistic against an independent scipy computation, the decisions they make, and
the error rates they keep under continuous monitoring."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.stats import beta as beta_distribution
from scipy.stats import norm

from rig.errors import PromoterError
from rig.feedback.guardrails import (
    CALIBRATION_BINS,
    CalibrationMoments,
    GuardrailConfig,
    PairCalibration,
    ServingStats,
    ServingTally,
    calibration_check,
    failure_check,
    latency_check,
)
from rig.feedback.rates import log_beta_mixture_ratio, rate_interval
from rig.feedback.sequential import Moments, mixture_radius


def log_direct_beta_mixture(k: int, n: int, p: float, a: float, b: float) -> float:
    """log ∫ (q/p)^k ((1-q)/(1-p))^(n-k) Beta(q; a, b) dq, by quadrature (the likelihood's peak
    factored out, so that nothing overflows)."""
    mode = min(max(k / n, 1e-12), 1 - 1e-12)

    def log_likelihood(q: float) -> float:
        return k * math.log(q) + (n - k) * math.log1p(-q)

    peak = log_likelihood(mode)

    def integrand(q: float) -> float:
        return math.exp(log_likelihood(q) - peak) * beta_distribution.pdf(q, a, b)

    value, _ = quad(integrand, 0.0, 1.0, points=[mode], limit=400, epsabs=0.0, epsrel=1e-10)
    return math.log(value) + peak - log_likelihood(p)


@pytest.mark.parametrize(
    ("k", "n", "p", "a", "b"), [(0, 50, 0.01, 1.0, 99.0), (7, 60, 0.2, 1.0, 1.0), (30, 40, 0.5, 2.0, 3.0)]
)
def test_beta_mixture_ratio_matches_a_direct_integral(k: int, n: int, p: float, a: float, b: float) -> None:
    expected = log_direct_beta_mixture(k, n, p, a, b)
    assert log_beta_mixture_ratio(k, n, p, a, b) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize(("k", "n"), [(0, 400), (3, 200), (45, 90)])
def test_rate_interval_ends_where_the_mixture_reaches_one_over_alpha(k: int, n: int) -> None:
    a, b, alpha = 1.0, 49.0, 0.05
    low, high = rate_interval(k, n, alpha, a, b)

    def excess(p: float) -> float:
        return log_direct_beta_mixture(k, n, p, a, b) - math.log(1 / alpha)

    centre = k / n
    assert high == pytest.approx(brentq(excess, max(centre, 1e-9), 1 - 1e-9), rel=1e-6)
    if k == 0:
        assert low == 0.0
    else:
        assert low == pytest.approx(brentq(excess, 1e-9, centre), rel=1e-6)
    assert low <= centre <= high


def test_rate_interval_covers_the_rate_at_every_look_in_at_least_1_minus_alpha_of_runs() -> None:
    rng = np.random.default_rng(1)
    runs, n, rate, alpha = 400, 2_000, 0.02, 0.1
    failures = np.cumsum(rng.random((runs, n)) < rate, axis=1)
    looks = np.arange(50, n + 1, 50)
    missed = 0
    for run in range(runs):
        for m in looks:
            low, high = rate_interval(int(failures[run, m - 1]), int(m), alpha, 1.0, 1.0 / 0.01 - 1.0)
            if not low <= rate <= high:
                missed += 1
                break
    assert missed <= alpha * runs


def normal_mixture_radius_by_quadrature(n: int, var: float, tau2: float, alpha: float) -> float:
    """Where the normal-mixture likelihood ratio ∫ exp(n (m θ - θ²/2) / σ²) N(θ; 0, τ²) dθ, integrated
    numerically around its peak, reaches 1/alpha."""

    def log_ratio(mean: float) -> float:
        precision = n / var + 1 / tau2
        peak_at, spread = (n * mean / var) / precision, 1 / math.sqrt(precision)

        def log_integrand(theta: float) -> float:
            return n * (mean * theta - theta**2 / 2) / var + norm.logpdf(theta, 0.0, math.sqrt(tau2))

        peak = log_integrand(peak_at)
        value, _ = quad(
            lambda theta: math.exp(log_integrand(theta) - peak),
            peak_at - 40 * spread,
            peak_at + 40 * spread,
            limit=400,
        )
        return math.log(value) + peak

    return brentq(lambda m: log_ratio(m) - math.log(1 / alpha), 0.0, 1.0)


def test_calibration_radius_is_the_normal_mixture_radius_at_the_sign_vector_union_level() -> None:
    rng = np.random.default_rng(2)
    p = rng.beta(1, 6, 3_000)
    y = rng.random(p.size) < p
    moments = CalibrationMoments.of(y, p)
    second_moment = float(np.mean((y - p) ** 2))
    union = 0.05 / 2**CALIBRATION_BINS
    expected = normal_mixture_radius_by_quadrature(p.size, second_moment, 0.03**2, union)
    assert moments.radius(0.05, 0.03**2) == pytest.approx(expected, rel=1e-5)


def test_calibration_moments_give_the_binned_ece_and_merge_exactly() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(5_000) ** 2
    p[:3] = (0.0, 1.0, 0.1)  # bin edges: 1.0 is in the last bin
    y = rng.random(p.size) < np.clip(p * 1.2, 0, 1)
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    direct = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        direct += abs(np.sum(y[inside] - p[inside])) / p.size
    whole = CalibrationMoments.of(y, p)
    assert whole.ece == pytest.approx(direct, rel=1e-12)
    parts = CalibrationMoments.of(y[:1_234], p[:1_234]).merge(CalibrationMoments.of(y[1_234:], p[1_234:]))
    assert parts.n == whole.n
    assert parts.sums == pytest.approx(whole.sums) and parts.squares == pytest.approx(whole.squares)


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def calibrated_pair(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, ...]:
    """Labels, a calibrated golden and a challenger with the same ranking whose log-odds are shifted."""
    truth = 1 / (1 + np.exp(-rng.normal(-1.8, 1.2, n)))
    y = rng.random(n) < truth
    return y, truth, 1 / (1 + np.exp(-(logit(truth) + shift)))


def test_calibration_guardrail_passes_a_calibrated_challenger_and_fails_a_miscalibrated_one() -> None:
    rng = np.random.default_rng(4)
    y, golden, _ = calibrated_pair(rng, 40_000, 0.0)
    good = calibration_check(PairCalibration.of(y, golden, golden), 0.03, 0.05, 1_000)
    y, golden, shifted = calibrated_pair(rng, 40_000, 1.0)
    bad = calibration_check(PairCalibration.of(y, shifted, golden), 0.03, 0.05, 1_000)
    assert good.state == "pass" and good.ci_high is not None and good.ci_high <= 0.03
    assert bad.state == "fail" and bad.ci_low is not None and bad.ci_low > 0.03
    assert bad.ci_high is not None
    assert bad.estimate == pytest.approx(bad.ci_low + (bad.ci_high - bad.ci_low) / 2, abs=0.02)
    few = calibration_check(PairCalibration.of(y[:500], golden[:500], golden[:500]), 0.03, 0.05, 1_000)
    assert few.state == "pending", "nothing is decided before min_samples"


def test_ece_bounds_hold_at_every_look_in_at_least_1_minus_alpha_of_runs() -> None:
    rng = np.random.default_rng(5)
    runs, n, alpha, tau2 = 200, 4_000, 0.1, 0.03**2
    misses = 0
    for _ in range(runs):
        y, truth, scores = calibrated_pair(rng, n, 0.5)
        bins = np.minimum((scores * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        true_ece = sum(
            abs(np.mean(np.where(bins == b, truth - scores, 0.0))) for b in range(CALIBRATION_BINS)
        )
        moments = CalibrationMoments()
        for lo in range(0, n, 200):
            moments = moments.merge(CalibrationMoments.of(y[lo : lo + 200], scores[lo : lo + 200]))
            radius = moments.radius(alpha, tau2)
            if not moments.ece - radius <= true_ece <= moments.ece + radius:
                misses += 1
                break
    assert misses <= alpha * runs


def timed(rng: np.random.Generator, batches: int, slowdown: float, failed: int = 0) -> ServingStats:
    log_ratio = rng.normal(math.log(slowdown), 0.3, batches - failed)
    return ServingStats(batches, failed, Moments.of(log_ratio))


def test_latency_interval_is_the_normal_mixture_one_on_the_log_ratio() -> None:
    rng = np.random.default_rng(6)
    stats = timed(rng, 200, 1.2)
    check = latency_check(stats, 0.5, 0.05)
    moments = stats.log_ratio
    radius = normal_mixture_radius_by_quadrature(moments.n, moments.variance, math.log(1.5) ** 2, 0.05)
    assert check.estimate == pytest.approx(math.exp(moments.mean))
    assert check.ci_low == pytest.approx(math.exp(moments.mean - radius), rel=1e-5)
    assert check.ci_high == pytest.approx(math.exp(moments.mean + radius), rel=1e-5)
    assert float(mixture_radius(moments.n, moments.variance, math.log(1.5) ** 2, 0.05)) == pytest.approx(
        radius, rel=1e-5
    )


def test_latency_guardrail_passes_an_as_fast_challenger_and_fails_a_3x_slower_one() -> None:
    rng = np.random.default_rng(7)
    assert latency_check(timed(rng, 20, 1.0), 0.5, 0.05).state == "pending", "too few timed batches"
    assert latency_check(timed(rng, 300, 1.0), 0.5, 0.05).state == "pass"
    slow = latency_check(timed(rng, 300, 3.0), 0.5, 0.05)
    assert slow.state == "fail" and slow.ci_low is not None and slow.ci_low > 1.5 and slow.margin == 1.5


def test_failed_batch_guardrail_passes_a_reliable_challenger_and_fails_a_flaky_one() -> None:
    assert failure_check(ServingStats(100, 0), 0.01, 0.05).state == "pending"
    assert failure_check(ServingStats(1_000, 0), 0.01, 0.05).state == "pass"
    flaky = failure_check(ServingStats(1_000, 50), 0.01, 0.05)
    assert (
        flaky.state == "fail" and flaky.estimate == 0.05 and flaky.ci_low is not None and flaky.ci_low > 0.01
    )


def test_serving_tally_folds_batches_per_golden_and_challenger_and_drains_once() -> None:
    tally = ServingTally()
    tally.add("g", {"g": 10.0, "c": 20.0, "d": 5.0}, {})
    tally.add("g", {"g": 10.0, "c": 40.0}, {"d": "timed out"})
    tally.add("g", {"g": 10.0}, {"c": "not loaded"})
    windows = {w.model_version: w for w in tally.drain("serving:test", 99)}
    c, d = windows["c"], windows["d"]
    assert (c.batches, c.failed, c.timed) == (3, 1, 2)
    assert c.log_ratio_mean == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert c.log_ratio_m2 == pytest.approx(((math.log(4) - math.log(2)) ** 2) / 2)
    assert (d.batches, d.failed, d.timed) == (2, 1, 1) and d.log_ratio_mean == pytest.approx(math.log(0.5))
    assert {w.golden_version for w in windows.values()} == {"g"} and c.window_end_ms == 99
    assert tally.drain("serving:test", 100) == []
    merged = ServingStats.of_window(c).merge(ServingStats.of_window(d))
    assert merged.batches == 5 and merged.log_ratio.n == 3


@pytest.mark.parametrize(
    "settings",
    [
        {"latency_margin": 0.0},
        {"failed_batch_margin": 1.0},
        {"calibration_margin": 0.0},
        {"srm_tolerance": 1.5},
    ],
)
def test_invalid_margins_raise_promoter_error(settings: dict) -> None:
    with pytest.raises(PromoterError):
        GuardrailConfig(**settings)
