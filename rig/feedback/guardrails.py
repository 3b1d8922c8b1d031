"""Guardrails: what a challenger must not be worse at, besides the primary loss.

Each guardrail is a sequential non-inferiority test with a margin (`GuardrailConfig`, set by
`RIG_PROMOTER_*`): it passes once an always-valid interval shows the challenger no worse than the
margin allows, fails once one shows it worse, and is pending in between. A challenger is promoted
only when it wins the primary test *and* passes every guardrail: an intersection-union test, so each
guardrail at level α keeps the promotion's error at α with no correction.

- latency: per batch both models scored, x = log(t_challenger / t_golden), the two models' scoring
  times in that batch (equivalently the challenger's share of the pair's scoring time, r / (1 + r));
  normal-mixture confidence sequence on E[x] (as the primary test, `mixture_radius`); passes when
  the geometric-mean ratio exp(E[x]) is surely below 1 + `latency_margin`.
- failed_batches: the share of the batches the challenger was asked to score that it failed (error,
  timeout, not loaded); Robbins' beta-mixture confidence sequence (`rate_interval`, exact for
  Bernoulli trials, prior Beta(1, 1/margin - 1)); passes when surely below `failed_batch_margin`
  (the golden fails no batch it answers: a failing golden makes the batch wait and retry).
- calibration: expected calibration error over B equal-width score bins on the matured joined
  outcomes, ECE = Σ_b |E[(y - p) 1{p in bin b}]| = max over sign vectors s of E[Σ_b s_b (y - p) 1_b].
  For every s that mean gets a normal-mixture confidence sequence at α / (2 · 2^B) (a union over all
  2^B sign vectors, with the second moment Σ_b E[z_b²] as a variance bound, valid for every s), so
  ECE ≤ Σ_b |mean_b| + r and ECE ≥ Σ_b |mean_b| - r hold at all n at once. The challenger's upper bound
  minus the golden's lower bound, on the same requests, must be within `calibration_margin`.

The latency and failed-batch facts come from the predict path (`ServingTally`, one call per batch,
drained into the metadata store as `ServingWindow`s the promoter reads); calibration from the joined
outcomes themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from rig.errors import PromoterError
from rig.feedback.metadata import ServingWindow
from rig.feedback.rates import rate_interval
from rig.feedback.sequential import Moments, mixture_radius
from rig.wire.records import CheckState, DecisionCheck

CALIBRATION_BINS = 10
"""Equal-width score bins of the expected calibration error (Guo et al., ICML 2017, use 10 or 15)."""

MIN_TIMED_BATCHES = 30
"""Batches timed for both models before the latency guardrail can pass or fail (plug-in variance)."""


@dataclass(frozen=True)
class GuardrailConfig:
    """Non-inferiority margins of the guardrails.

    Attributes:
        latency_margin: The challenger may take up to (1 + margin) times the golden's batch scoring
            time (geometric mean over batches).
        failed_batch_margin: Largest share of its batches the challenger may fail.
        calibration_margin: Largest excess of the challenger's expected calibration error over the
            golden's, on the same requests.
        srm_tolerance: An A/B challenger's arm must be shown to hold its share within
            share x (1 ± tolerance) of the units before it can be promoted (`rig.feedback.srm`).
    """

    latency_margin: float = 0.5
    failed_batch_margin: float = 0.01
    calibration_margin: float = 0.03
    srm_tolerance: float = 0.05

    def __post_init__(self) -> None:
        problems = {
            f"latency_margin must be > 0, got {self.latency_margin}": not self.latency_margin > 0,
            f"failed_batch_margin must be in (0, 1), got {self.failed_batch_margin}": not (
                0 < self.failed_batch_margin < 1
            ),
            f"calibration_margin must be in (0, 1), got {self.calibration_margin}": not (
                0 < self.calibration_margin < 1
            ),
            f"srm_tolerance must be in (0, 1), got {self.srm_tolerance}": not 0 < self.srm_tolerance < 1,
        }
        wrong = [text for text, bad in problems.items() if bad]
        if wrong:
            raise PromoterError("; ".join(wrong))


@dataclass(frozen=True)
class CalibrationMoments:
    """Per score bin b, the sum and the sum of squares of z_b = (y - p) 1{p in bin b}; mergeable."""

    n: int = 0
    sums: tuple[float, ...] = (0.0,) * CALIBRATION_BINS
    squares: tuple[float, ...] = (0.0,) * CALIBRATION_BINS

    @classmethod
    def of(cls, labels: np.ndarray, scores: np.ndarray) -> CalibrationMoments:
        """The moments of some (label, score) rows."""
        y, p = np.asarray(labels, dtype=float).ravel(), np.asarray(scores, dtype=float).ravel()
        bins = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        residual = y - p
        sums = np.bincount(bins, weights=residual, minlength=CALIBRATION_BINS)
        squares = np.bincount(bins, weights=residual * residual, minlength=CALIBRATION_BINS)
        return cls(int(y.size), tuple(sums.tolist()), tuple(squares.tolist()))

    def merge(self, other: CalibrationMoments) -> CalibrationMoments:
        """Both groups of rows together."""
        return CalibrationMoments(
            self.n + other.n,
            tuple(a + b for a, b in zip(self.sums, other.sums, strict=True)),
            tuple(a + b for a, b in zip(self.squares, other.squares, strict=True)),
        )

    @property
    def ece(self) -> float:
        """The plug-in expected calibration error Σ_b |mean of z_b|."""
        return sum(abs(total) for total in self.sums) / self.n if self.n else 0.0

    def radius(self, alpha: float, tau2: float) -> float:
        """Half-width of the always-valid bounds on the ECE at level 1 - alpha (see the module)."""
        if self.n < 2:
            return math.inf
        second_moment = sum(self.squares) / self.n
        union = alpha / 2**CALIBRATION_BINS
        return float(mixture_radius(self.n, second_moment, tau2, union))


@dataclass(frozen=True)
class PairCalibration:
    """Calibration moments of a challenger's and the golden's scores on the same matured requests."""

    challenger: CalibrationMoments = field(default_factory=CalibrationMoments)
    golden: CalibrationMoments = field(default_factory=CalibrationMoments)

    @classmethod
    def of(cls, labels: np.ndarray, challenger: np.ndarray, golden: np.ndarray) -> PairCalibration:
        """The moments of some paired rows."""
        return cls(CalibrationMoments.of(labels, challenger), CalibrationMoments.of(labels, golden))

    def merge(self, other: PairCalibration) -> PairCalibration:
        """Both groups of rows together."""
        return PairCalibration(self.challenger.merge(other.challenger), self.golden.merge(other.golden))


def calibration_check(
    calibration: PairCalibration, margin: float, alpha: float, min_samples: int
) -> DecisionCheck:
    """The calibration guardrail: ECE of the challenger minus ECE of the golden, within `margin`.

    The interval is [challenger's lower bound - golden's upper bound, challenger's upper bound -
    golden's lower bound], each bound at level 1 - alpha/2 (so the interval holds at 1 - alpha); it
    passes when its upper end is at most the margin, fails when its lower end exceeds it, and decides
    nothing before `min_samples` rows.
    """
    c, g = calibration.challenger, calibration.golden
    tau2 = margin * margin
    rc, rg = c.radius(alpha / 2, tau2), g.radius(alpha / 2, tau2)
    high = c.ece + rc - max(0.0, g.ece - rg)
    low = max(0.0, c.ece - rc) - (g.ece + rg)
    ready = c.n >= min_samples
    state: CheckState = (
        "pass" if ready and high <= margin else "fail" if ready and low > margin else "pending"
    )
    return DecisionCheck(
        name="calibration",
        state=state,
        n=c.n,
        estimate=c.ece - g.ece if c.n else None,
        ci_low=low if math.isfinite(low) else None,
        ci_high=high if math.isfinite(high) else None,
        margin=margin,
        detail=(
            f"expected calibration error ({CALIBRATION_BINS} bins) challenger {c.ece:.4f} minus golden "
            f"{g.ece:.4f} on the same matured outcomes; passes at or below +{margin:g}"
        ),
    )


@dataclass(frozen=True)
class ServingStats:
    """A challenger's serving facts against one golden: batches asked, failed, and the moments of
    log(challenger / golden scoring time) over the batches both answered; mergeable."""

    batches: int = 0
    failed: int = 0
    log_ratio: Moments = field(default_factory=Moments)

    @classmethod
    def of_window(cls, window: ServingWindow) -> ServingStats:
        """The stats of one recorded serving window."""
        moments = Moments(window.timed, window.log_ratio_mean, window.log_ratio_m2)
        return cls(window.batches, window.failed, moments)

    def merge(self, other: ServingStats) -> ServingStats:
        """Both groups of batches together."""
        return ServingStats(
            self.batches + other.batches, self.failed + other.failed, self.log_ratio.merge(other.log_ratio)
        )


def latency_check(stats: ServingStats, margin: float, alpha: float) -> DecisionCheck:
    """The latency guardrail: the geometric-mean ratio of batch scoring times, at most 1 + margin."""
    moments, bound = stats.log_ratio, math.log1p(margin)
    if moments.n < 2:
        radius = math.inf
    else:
        radius = float(mixture_radius(moments.n, moments.variance, bound * bound, alpha))
    ready = moments.n >= MIN_TIMED_BATCHES
    low, high = moments.mean - radius, moments.mean + radius
    state: CheckState = "pass" if ready and high < bound else "fail" if ready and low > bound else "pending"
    return DecisionCheck(
        name="latency",
        state=state,
        n=moments.n,
        estimate=math.exp(moments.mean) if moments.n else None,
        ci_low=math.exp(low) if math.isfinite(low) else None,
        ci_high=math.exp(high) if math.isfinite(high) else None,
        margin=1.0 + margin,
        detail=(
            "geometric-mean ratio of the challenger's batch scoring time to the golden's, over batches "
            f"both answered; passes below {1.0 + margin:g}"
        ),
    )


def failure_check(stats: ServingStats, margin: float, alpha: float) -> DecisionCheck:
    """The failed-batch guardrail: the share of failed batches, at most `margin`."""
    low, high = rate_interval(stats.failed, stats.batches, alpha, 1.0, 1.0 / margin - 1.0)
    state: CheckState = "pass" if high < margin else "fail" if low > margin else "pending"
    return DecisionCheck(
        name="failed_batches",
        state=state,
        n=stats.batches,
        estimate=stats.failed / stats.batches if stats.batches else None,
        ci_low=low,
        ci_high=high,
        margin=margin,
        detail=(
            "share of its batches the challenger failed (error, timeout, not loaded); "
            f"passes below {margin:g}"
        ),
    )


def unmeasured(name: str, why: str) -> DecisionCheck:
    """A guardrail whose data does not reach the promoter."""
    return DecisionCheck(name=name, state="unmeasured", n=0, detail=why)


class ServingTally:
    """Per-batch serving facts of every challenger, folded per window: what the latency and
    failed-batch guardrails read. The predict path adds each batch (`add`); a timer `drain`s the
    windows into the metadata store (`MetadataStore.record_model_serving`)."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], ServingStats] = {}

    def add(self, golden: str, elapsed_ms: Mapping[str, float], failed: Mapping[str, str]) -> None:
        """One batch: each version's scoring time (`BatchScores.elapsed_ms`) and the experiments that
        failed it (`BatchScores.failed`), under golden `golden`."""
        golden_ms = elapsed_ms.get(golden)
        for version in set(elapsed_ms) | set(failed):
            if version == golden:
                continue
            took = elapsed_ms.get(version)
            if version in failed or took is None or took <= 0 or golden_ms is None or golden_ms <= 0:
                moments = Moments()
            else:
                moments = Moments(1, math.log(took / golden_ms), 0.0)
            batch = ServingStats(1, int(version in failed), moments)
            key = (golden, version)
            self._stats[key] = self._stats[key].merge(batch) if key in self._stats else batch

    def drain(self, scope: str, window_end_ms: int) -> list[ServingWindow]:
        """The windows folded since the last drain, for `scope` (e.g. `serving:<host>:<pid>`); resets."""
        stats, self._stats = self._stats, {}
        return [
            ServingWindow(
                scope=scope,
                window_end_ms=int(window_end_ms),
                model_version=version,
                golden_version=golden,
                batches=item.batches,
                failed=item.failed,
                timed=item.log_ratio.n,
                log_ratio_mean=item.log_ratio.mean,
                log_ratio_m2=item.log_ratio.m2,
            )
            for (golden, version), item in sorted(stats.items())
        ]
