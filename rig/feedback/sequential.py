"""Sequential promotion and de-promotion tests on paired per-request losses, valid under peeking.

Unit of evidence: `d_i = loss_G(i) - loss_C(i)` for a joined request scored by golden G and challenger
C (`d > 0`: the challenger did better); pairing removes the variance both models share.

Test per golden/challenger pair: the mixture SPRT (mSPRT) with a normal mixture N(0, τ²) over E[d]
and σ² estimated by a running (Welford) variance — Johari, Koomen, Pekelis & Walsh, "Always valid
inference: continuous monitoring of A/B tests", Operations Research 70(3), 2022 (arXiv:1512.04922)::

    Λ_n = sqrt(σ² / (σ² + n τ²)) · exp(n² τ² d̄_n² / (2 σ² (σ² + n τ²)))
    p_n = min(p_{n-1}, 1 / Λ_n)          (always-valid p-value of H0: E[d] = 0, two-sided)

Inverting it at every θ gives the normal-mixture confidence sequence of Howard, Ramdas, McAuliffe &
Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics
49(2), 2021 (arXiv:1810.08240), covering E[d] at all n at once with probability ≥ 1 - α::

    |d̄_n - θ| < sqrt(2 σ² (σ² + n τ²) / (n² τ²) · (log(1/α) + ½ log((σ² + n τ²) / σ²)))

Guardrails: nothing is decided, and p is not updated, before `min_samples` pairs (the plug-in σ² and
the normal approximation need them; looking later never hurts validity); promotion needs the
confidence lower bound above `min_effect`; the m challengers of one golden are corrected together by
Holm's step-down (Holm, Scand. J. Statist. 6, 1979) over their always-valid p-values, with the
confidence sequences at α/m (Bonferroni): family-wise false promotions ≤ α, at most the best promoted.
`GoldenMonitor` reuses the machinery for de-promotion (see its docstring).

Decision records (`rig.wire.records.Decision`, built only by `new_decision`) have `estimate` as
*challenger minus golden* (negative: challenger better), i.e. `-mean(d)`, with `ci_low`/`ci_high`
negated and swapped.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from rig.errors import PromoterError
from rig.models.metrics import log_loss_per_row
from rig.wire.records import Decision, DecisionAction, PromoterMode

PROMOTER_MODES: tuple[str, ...] = ("suggest", "auto")
"""Promoter modes: `suggest` records decisions only, `auto` has them applied by the caller."""

TAU_PER_EFFECT = 5.0
"""Default mixing scale τ = TAU_PER_EFFECT · min_effect (see `PromoterConfig.mixing_variance`)."""

REFERENCE_PER_MIN_SAMPLES = 5
"""Default `GoldenMonitor` reference window, in min_samples: raw losses vary far more than paired
differences, and the reference mean's error never shrinks later, so it bounds what can be detected."""

_VARIANCE_FLOOR = 1e-12
_MAX_LOG = 709.0  # math.exp overflows above this


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "log_loss": log_loss_per_row,
    "brier": lambda labels, probabilities: (probabilities - labels) ** 2,
}
"""Per-request losses (labels, probabilities as float arrays) by the name recorded in decisions."""


def log_mixture_ratio(n: Any, mean: Any, var: Any, tau2: float) -> Any:
    """log Λ_n of the normal-mixture mSPRT for H0: E[d] = 0, vectorised over arrays of n, mean
    (of d; centre it to test another θ) and var (σ², floored at 1e-12); tau2 is τ² > 0."""
    v = np.maximum(var, _VARIANCE_FLOOR)
    s = v + n * tau2
    return 0.5 * np.log(v / s) + (n * n * tau2 * np.square(mean)) / (2.0 * v * s)


def mixture_radius(n: Any, var: Any, tau2: float, alpha: float) -> Any:
    """Half-width of the normal-mixture confidence sequence at level 1 - alpha (vectorised).

    It is the set of θ where the mSPRT centred at θ does not reject: `|d̄_n - θ| <` this radius.
    """
    n = np.asarray(n, dtype=float)
    v = np.maximum(var, _VARIANCE_FLOOR)
    s = v + n * tau2
    with np.errstate(divide="ignore"):
        squared = 2.0 * v * s / (n * n * tau2) * (math.log(1.0 / alpha) + 0.5 * np.log(s / v))
    return np.sqrt(squared)


def holm_adjust(p_values: Any) -> np.ndarray:
    """Holm step-down adjusted p-values (reject hypothesis j at level α iff adjusted p_j ≤ α)."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def welford_update(n: int, mean: float, m2: float, values: np.ndarray) -> tuple[int, float, float]:
    """Fold a batch into running (count, mean, sum of squared deviations) — Chan et al.'s merge of
    Welford's algorithm, exact for any batch size and stable for long streams."""
    k = int(values.size)
    if k == 0:
        return n, mean, m2
    batch_mean = float(values.mean())
    total, delta = n + k, batch_mean - mean
    m2 += float(np.square(values - batch_mean).sum()) + delta * delta * n * k / total
    return total, mean + delta * k / total, m2


def _losses(metric: str, labels: np.ndarray, *scores: np.ndarray) -> list[np.ndarray]:
    """Per-request losses of each score array against `labels`, after checking the batch."""
    y = np.asarray(labels, dtype=float).ravel()
    out = []
    for raw in scores:
        s = np.asarray(raw, dtype=float).ravel()
        if s.shape != y.shape:
            raise PromoterError(f"{s.size} scores for {y.size} labels; the batch must be aligned")
        if not np.all((s >= 0.0) & (s <= 1.0)):
            raise PromoterError("scores must be probabilities in [0, 1] (no NaN)")
        out.append(METRICS[metric](y, s))
    if not np.all((y == 0.0) | (y == 1.0)):
        raise PromoterError("labels must be 0 or 1")
    return out


@dataclass(frozen=True)
class PromoterConfig:
    """Settings of the promoter and the golden monitor.

    Attributes:
        alpha: Family-wise error rate of promotions (and of demotions), e.g. 0.05.
        min_samples: Paired joined outcomes a pair needs before any decision (and p-value update).
        min_effect: Smallest loss improvement worth a switch, in units of `metric` (mean of d).
        tau2: Mixing variance τ² of the mSPRT; None means (TAU_PER_EFFECT · min_effect)².
        metric: Per-request loss: "log_loss" or "brier".
        mode: "suggest" (decisions are recorded) or "auto" (the caller applies them).
    """

    alpha: float = 0.05
    min_samples: int = 1000
    min_effect: float = 0.002
    tau2: float | None = None
    metric: str = "log_loss"
    mode: str = "suggest"

    def __post_init__(self) -> None:
        problems = {
            f"alpha must be in (0, 1), got {self.alpha}": not 0.0 < self.alpha < 1.0,
            f"min_samples must be at least 2, got {self.min_samples}": self.min_samples < 2,
            f"min_effect must be >= 0, got {self.min_effect}": self.min_effect < 0.0,
            f"tau2 must be positive, got {self.tau2}": self.tau2 is not None and not self.tau2 > 0.0,
            "tau2 must be given when min_effect is 0": self.tau2 is None and self.min_effect == 0.0,
            f"unknown metric {self.metric!r}; known: {sorted(METRICS)}": self.metric not in METRICS,
            f"mode must be one of {PROMOTER_MODES}, got {self.mode!r}": self.mode not in PROMOTER_MODES,
        }
        wrong = [text for text, bad in problems.items() if bad]
        if wrong:
            raise PromoterError("; ".join(wrong))

    @property
    def mixing_variance(self) -> float:
        """τ² in use. By default (5·min_effect)²: a challenger is only promoted once it is better by
        clearly more than min_effect, so the mixture puts its mass on effects of a few min_effects."""
        return self.tau2 if self.tau2 is not None else (TAU_PER_EFFECT * self.min_effect) ** 2


@dataclass(frozen=True)
class Evidence:
    """Where a test stands: n, mean, always-valid interval bounds, and the e-value Λ_n (if computed)."""

    n: int
    mean: float
    low: float
    high: float
    e_value: float | None

    def flipped(self) -> Evidence:
        """The same evidence about -d: from golden-minus-challenger gains to the schema's sign."""
        return Evidence(self.n, -self.mean + 0.0, -self.high, -self.low, self.e_value)


@dataclass
class PairState:
    """Running evidence about one golden/challenger pair; small and serialisable (`to_dict`).

    `n`, `mean`, `m2` are Welford's running count, mean and sum of squared deviations of d.
    `p_value` is the always-valid p-value of H0: E[d] = 0, the running minimum of 1/Λ_n over every
    batch end with n ≥ min_samples; `log_e_value` is log Λ_n at the last update. `reported` is the
    finding already recorded for the pair ("promote" or "worse"), so it is recorded only once.
    """

    golden_version: str
    challenger_version: str
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    p_value: float = 1.0
    log_e_value: float = 0.0
    reported: str | None = None

    @property
    def variance(self) -> float:
        """Sample variance of d (0 below two observations)."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    def update(self, differences: np.ndarray, config: PromoterConfig) -> None:
        """Fold a batch of paired differences in, then update Λ_n and the running-minimum p-value."""
        self.n, self.mean, self.m2 = welford_update(self.n, self.mean, self.m2, differences)
        if self.n >= config.min_samples:
            log_lr = log_mixture_ratio(self.n, self.mean, self.variance, config.mixing_variance)
            self.log_e_value = float(log_lr)
            self.p_value = min(self.p_value, math.exp(-min(self.log_e_value, _MAX_LOG)))

    def evidence(self, config: PromoterConfig, alpha: float) -> Evidence:
        """Mean of d and its always-valid (1 - alpha) confidence sequence at the current n."""
        e_value = math.exp(min(self.log_e_value, _MAX_LOG)) if self.n >= config.min_samples else None
        radius = (
            float(mixture_radius(self.n, self.variance, config.mixing_variance, alpha))
            if self.n > 1
            else math.inf
        )
        return Evidence(self.n, self.mean, self.mean - radius, self.mean + radius, e_value)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for persistence; `PairState(**d)` restores it."""
        return asdict(self)


NO_EVIDENCE = Evidence(0, 0.0, 0.0, 0.0, None)
"""The evidence of a decision a person made: no sample, estimate and interval 0, no e-value."""


def new_decision(
    now_ms: int,
    action: DecisionAction,
    mode: PromoterMode,
    versions: tuple[str, str | None],
    reason: str,
    metric: str = "none",
    ev: Evidence = NO_EVIDENCE,
    p_value: float | None = None,
) -> Decision:
    """A Decision record: the one constructor, for the promoter's decisions and manual ones alike.

    Args:
        now_ms: When it was decided, epoch milliseconds.
        action: keep, promote or demote.
        mode: The promoter's mode, or "manual" for a person's decision.
        versions: (golden, challenger); challenger None for a decision about the golden alone.
        reason: Why, in words a person reads.
        metric: The per-request loss tested; "none" when nothing was tested.
        ev: The evidence, already in the schema's sign (challenger minus golden).
        p_value: The always-valid p-value after multiplicity correction; None if not computed.
    """
    return Decision(
        decision_id=uuid.uuid4().hex,
        decided_at=int(now_ms),
        action=action,
        mode=mode,
        golden_version=versions[0],
        challenger_version=versions[1],
        metric=metric,
        n=int(ev.n),
        estimate=float(ev.mean),
        ci_low=float(ev.low),
        ci_high=float(ev.high),
        p_value=p_value,
        e_value=ev.e_value,
        reason=reason,
    )


def _stats_text(config: PromoterConfig, ev: Evidence, level: float) -> str:
    return (
        f"mean {config.metric} gain {ev.mean:.4g} (golden minus challenger), {level:.1%} always-valid "
        f"CI [{ev.low:.4g}, {ev.high:.4g}], n={ev.n}"
    )


class Promoter:
    """Sequential tests of every challenger against the current golden, with Holm across them.

    Feed paired scores with `observe`, ask `decide` as often as you like (every decision is valid
    under continuous monitoring). After a promotion is applied, call `reset_for_new_golden`.
    """

    def __init__(self, config: PromoterConfig, golden_version: str) -> None:
        self.config = config
        self.golden_version = golden_version
        self.pairs: dict[str, PairState] = {}
        """Evidence per challenger version, all against `golden_version`."""
        self.stale_rows = 0
        """Rows ignored because they were scored under another golden (late outcomes after a switch)."""

    def observe(
        self,
        golden_version: str,
        challenger_version: str,
        label: np.ndarray,
        golden_scores: np.ndarray,
        challenger_scores: np.ndarray,
    ) -> None:
        """Fold a batch of joined outcomes scored by both models into the pair's test.

        Rows scored under another golden (late outcomes after a switch) are counted in `stale_rows`
        and ignored.

        Raises:
            PromoterError: misaligned arrays, scores outside [0, 1] or NaN, labels other than 0/1, or
                the golden as its own challenger.
        """
        loss_g, loss_c = _losses(self.config.metric, label, golden_scores, challenger_scores)
        if golden_version != self.golden_version:
            self.stale_rows += int(loss_g.size)
            return
        if challenger_version == golden_version:
            raise PromoterError(f"challenger {challenger_version!r} is the golden itself")
        pair = self.pairs.setdefault(challenger_version, PairState(golden_version, challenger_version))
        pair.update(loss_g - loss_c, self.config)

    def end_challenger(self, challenger_version: str) -> None:
        """Forget a challenger whose experiment stopped (it leaves Holm's family)."""
        self.pairs.pop(challenger_version, None)

    def reset_for_new_golden(self, version: str) -> None:
        """Start over against a new golden: every earlier pair compared another model."""
        self.golden_version, self.pairs, self.stale_rows = version, {}, 0

    def decide(self, now_ms: int, include_keep: bool = False) -> list[Decision]:
        """Decisions at this moment, as Decision records.

        At most one `promote`: among the m challengers, those Holm rejects at level α whose (1 - α/m)
        confidence lower bound exceeds min_effect, the one with the largest mean gain. Each finding
        (promote, or a significantly worse challenger as `keep` "challenger worse") is returned once
        per pair; with `include_keep`, every other pair (and repeated findings) get a `keep` with why.
        """
        cfg = self.config
        names = sorted(self.pairs)
        pairs = [self.pairs[name] for name in names]
        m = len(pairs)
        ready = [pair.n >= cfg.min_samples for pair in pairs]
        adjusted = holm_adjust([pair.p_value if ok else 1.0 for pair, ok in zip(pairs, ready, strict=True)])
        evidence = [pair.evidence(cfg, cfg.alpha / max(m, 1)) for pair in pairs]
        significant = [ok and p <= cfg.alpha for ok, p in zip(ready, adjusted, strict=True)]
        passing = [i for i in range(m) if significant[i] and evidence[i].low > cfg.min_effect]
        best = max(passing, key=lambda i: evidence[i].mean, default=None)
        decisions = []
        for i, (pair, ev) in enumerate(zip(pairs, evidence, strict=True)):
            finding, reason = None, _stats_text(cfg, ev, 1.0 - cfg.alpha / m)
            reason += f", Holm p={adjusted[i]:.3g} over {m} challenger(s)"
            if not ready[i]:
                reason = f"collecting evidence: {pair.n} of {cfg.min_samples} paired outcomes"
            elif i == best:
                finding = "promote"
                reason = f"challenger better by more than the minimum effect {cfg.min_effect:g}: {reason}"
            elif significant[i] and ev.mean < 0.0:
                finding = "worse"
                by = "by more than" if ev.high < -cfg.min_effect else "maybe not by"
                reason = f"challenger worse, {by} the minimum effect {cfg.min_effect:g}: {reason}"
            elif i in passing:
                reason = f"passes, but challenger {names[best or 0]} gains more: {reason}"
            elif significant[i]:
                reason = f"better, not yet surely by the minimum effect {cfg.min_effect:g}: {reason}"
            else:
                reason = f"no significant difference yet: {reason}"
            action = "promote" if finding == "promote" else "keep"
            if finding is not None and finding != pair.reported:
                pair.reported = finding
            elif not include_keep:
                continue
            elif finding is not None:
                action, reason = "keep", f"already recorded ({finding}); {reason}"
            p_value = float(adjusted[i]) if ready[i] else None
            versions = (self.golden_version, pair.challenger_version)
            decisions.append(
                new_decision(now_ms, action, cfg.mode, versions, reason, cfg.metric, ev.flipped(), p_value)
            )
        return decisions

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for persistence."""
        return {
            "config": asdict(self.config),
            "golden_version": self.golden_version,
            "pairs": [pair.to_dict() for pair in self.pairs.values()],
            "stale_rows": self.stale_rows,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Promoter:
        """Inverse of `to_dict`."""
        promoter = cls(PromoterConfig(**raw["config"]), raw["golden_version"])
        promoter.pairs = {item["challenger_version"]: PairState(**item) for item in raw["pairs"]}
        promoter.stale_rows = int(raw.get("stale_rows", 0))
        return promoter


@dataclass
class LossStream:
    """Running count, mean and M2 (Welford) of the golden's per-request loss.

    `exact` marks a supplied baseline whose mean is taken as known (no sampling error).
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    exact: bool = False

    @classmethod
    def from_baseline(cls, mean: float, var: float, n: int | None = None) -> LossStream:
        """A supplied reference: mean and variance of the golden's loss from `n` outcomes (None: exact).
        Raises PromoterError for n below 2 or a negative variance."""
        if var < 0 or (n is not None and n < 2):
            raise PromoterError(f"a baseline needs n >= 2 and var >= 0, got n={n}, var={var}")
        return cls(n=2, mean=mean, m2=var, exact=True) if n is None else cls(n, mean, var * (n - 1))

    @property
    def variance(self) -> float:
        """Sample variance (0 below two observations)."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0


class GoldenMonitor:
    """Watches the golden for degradation; `decide` returns a `demote` when it got worse.

    Two tracks, α split evenly between those in use:
    - reference: the first `reference_size` (default 5 × min_samples) joined outcomes after the golden
      took over, or a supplied `LossStream.from_baseline`, against every later loss. The reference
      mean gets a fixed-sample (1 - α/2) normal interval (the window is fixed once full), the later
      losses the (1 - α/2) confidence sequence; demote when the current mean's lower bound minus the
      reference's upper bound exceeds min_effect.
    - previous: when `previous_version` is set and its shadow scores are passed to `observe`, the
      paired mSPRT with the previous golden as challenger; demote when it is better by > min_effect.
    """

    def __init__(
        self,
        config: PromoterConfig,
        golden_version: str,
        reference_size: int | None = None,
        previous_version: str | None = None,
        baseline: LossStream | None = None,
    ) -> None:
        self.config = config
        self.golden_version = golden_version
        self.reference_size = reference_size or REFERENCE_PER_MIN_SAMPLES * config.min_samples
        if self.reference_size < 2:
            raise PromoterError(f"reference_size must be at least 2, got {self.reference_size}")
        self.previous_version = previous_version
        self.reference = baseline if baseline is not None else LossStream()
        self.current = LossStream()
        self.previous = None if previous_version is None else PairState(golden_version, previous_version)
        self.reported = False

    def observe(
        self, labels: np.ndarray, scores: np.ndarray, previous_scores: np.ndarray | None = None
    ) -> None:
        """Fold a batch of the golden's joined outcomes (and the previous golden's shadow scores) in.

        Raises:
            PromoterError: misaligned arrays, bad scores or labels, or previous scores without a
                `previous_version`.
        """
        if previous_scores is not None and self.previous is None:
            raise PromoterError("previous_scores given but the monitor has no previous_version")
        extra = () if previous_scores is None else (previous_scores,)
        loss, *previous = _losses(self.config.metric, labels, scores, *extra)
        if self.previous is not None and previous:
            self.previous.update(loss - previous[0], self.config)
        room = 0 if self.reference.exact else self.reference_size - self.reference.n
        for stream, part in ((self.reference, loss[: max(room, 0)]), (self.current, loss[max(room, 0) :])):
            stream.n, stream.mean, stream.m2 = welford_update(stream.n, stream.mean, stream.m2, part)

    def reference_evidence(self) -> Evidence | None:
        """Current mean loss minus the reference mean, with its always-valid (1 - α_track) interval
        (positive: the golden got worse); None until the window is full and two more outcomes came."""
        ref, cur = self.reference, self.current
        if not (ref.exact or ref.n >= self.reference_size) or cur.n < 2:
            return None
        split = self._track_alpha() / (1.0 if ref.exact else 2.0)
        radius = float(mixture_radius(cur.n, cur.variance, self.config.mixing_variance, split))
        if not ref.exact:
            radius += float(norm.ppf(1.0 - split / 2.0)) * math.sqrt(ref.variance / ref.n)
        diff = cur.mean - ref.mean
        return Evidence(cur.n, diff, diff - radius, diff + radius, None)

    def _track_alpha(self) -> float:
        return self.config.alpha / (2 if self.previous is not None else 1)

    def decide(self, now_ms: int, include_keep: bool = False) -> list[Decision]:
        """A `demote` (returned once) when the golden got worse by more than min_effect on a track;
        with `include_keep`, otherwise a `keep` per track saying where it stands."""
        cfg, alpha = self.config, self._track_alpha()
        records = []
        ref = self.reference_evidence()
        if ref is not None:
            worse = self.current.n >= cfg.min_samples and ref.low > cfg.min_effect
            text = (
                f"golden mean {cfg.metric} {ref.mean:+.4g} against its reference ({self.reference.n} "
                f"outcomes), {1 - alpha:.1%} always-valid CI [{ref.low:.4g}, {ref.high:.4g}], n={ref.n}"
            )
            verdict = f"degraded by more than the minimum effect {cfg.min_effect:g}" if worse else "stable"
            records.append((worse, None, ref, None, f"golden {verdict}: {text}"))
        if self.previous is not None and self.previous.n >= 2:
            pair, ready = self.previous, self.previous.n >= cfg.min_samples
            ev = pair.evidence(cfg, alpha)
            worse = ready and pair.p_value <= alpha and ev.low > cfg.min_effect
            verdict = "worse" if worse else "not worse"
            text = f"golden {verdict} than the previous golden: {_stats_text(cfg, ev, 1 - alpha)}"
            p_value = min(1.0, pair.p_value * cfg.alpha / alpha) if ready else None
            records.append((worse, pair.challenger_version, ev.flipped(), p_value, text))
        out = []
        for worse, challenger, ev, p_value, reason in records:
            action = "demote" if worse and not self.reported else "keep"
            reason = f"already recorded (demote); {reason}" if worse and self.reported else reason
            versions = (self.golden_version, challenger)
            out.append(new_decision(now_ms, action, cfg.mode, versions, reason, cfg.metric, ev, p_value))
            if action == "demote":
                self.reported = True
                return out[-1:]
        return out if include_keep else []

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for persistence."""
        state = {
            name: getattr(self, name) for name in ("golden_version", "reference_size", "previous_version")
        }
        streams = {"reference": self.reference, "current": self.current, "previous": self.previous}
        return {
            "config": asdict(self.config),
            **state,
            **{name: None if item is None else asdict(item) for name, item in streams.items()},
            "reported": self.reported,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GoldenMonitor:
        """Inverse of `to_dict`."""
        monitor = cls(PromoterConfig(**raw["config"]), raw["golden_version"], raw["reference_size"])
        monitor.previous_version, monitor.reported = raw["previous_version"], bool(raw["reported"])
        monitor.reference, monitor.current = LossStream(**raw["reference"]), LossStream(**raw["current"])
        monitor.previous = None if raw["previous"] is None else PairState(**raw["previous"])
        return monitor
