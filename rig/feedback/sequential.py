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
`rig.feedback.monitor.GoldenMonitor` reuses the machinery for de-promotion. A challenger that wins
can still be held (`Promoter.decide(holds=...)`): by a guardrail it has not passed yet, or by a sample
ratio mismatch of its A/B experiment (`rig.feedback.guardrails`, `rig.feedback.srm`).

Decision records (`rig.wire.records.Decision`, built only by `new_decision`) have `estimate` as
*challenger minus golden* (negative: challenger better), i.e. `-mean(d)`, with `ci_low`/`ci_high`
negated and swapped; their `checks` list where every test of the challenger stands (this primary
test first, as `primary_check` words it).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rig.errors import PromoterError
from rig.models.metrics import log_loss_per_row
from rig.wire.records import CheckState, Decision, DecisionAction, DecisionCheck, PromoterMode

PROMOTER_MODES: tuple[str, ...] = ("suggest", "auto")
"""Promoter modes: `suggest` records decisions only, `auto` has them applied by the caller."""

TAU_PER_EFFECT = 5.0
"""Default mixing scale τ = TAU_PER_EFFECT · min_effect (see `PromoterConfig.mixing_variance`)."""

_VARIANCE_FLOOR = 1e-12
MAX_LOG = 709.0
"""math.exp overflows above this: e-values are capped there."""


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


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of some values: what a normal-mixture test needs,
    and mergeable exactly (Chan et al.), so groups of values can be folded in any grouping."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """The moments of an array of values."""
        return cls(*welford_update(0, 0.0, 0.0, np.asarray(values, dtype=float).ravel()))

    def merge(self, other: Moments) -> Moments:
        """The moments of both groups of values together."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        total, delta = self.n + other.n, other.mean - self.mean
        m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / total
        return Moments(total, self.mean + delta * other.n / total, m2)

    @property
    def variance(self) -> float:
        """Sample variance (0 below two values)."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0


def losses(metric: str, labels: np.ndarray, *scores: np.ndarray) -> list[np.ndarray]:
    """Per-request losses of each score array against `labels`, after checking the batch.

    Raises:
        PromoterError: misaligned arrays, scores outside [0, 1] or NaN, or labels other than 0/1.
    """
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
    mode: PromoterMode = "suggest"

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
        self._look(config)

    def fold(self, moments: Moments, config: PromoterConfig) -> None:
        """Fold the moments of a group of paired differences in (a matured cohort), then look."""
        merged = Moments(self.n, self.mean, self.m2).merge(moments)
        self.n, self.mean, self.m2 = merged.n, merged.mean, merged.m2
        self._look(config)

    def _look(self, config: PromoterConfig) -> None:
        if self.n >= config.min_samples:
            log_lr = log_mixture_ratio(self.n, self.mean, self.variance, config.mixing_variance)
            self.log_e_value = float(log_lr)
            self.p_value = min(self.p_value, math.exp(-min(self.log_e_value, MAX_LOG)))

    def evidence(self, config: PromoterConfig, alpha: float) -> Evidence:
        """Mean of d and its always-valid (1 - alpha) confidence sequence at the current n."""
        e_value = math.exp(min(self.log_e_value, MAX_LOG)) if self.n >= config.min_samples else None
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
    checks: Sequence[DecisionCheck] = (),
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
        checks: Where every test of the challenger stands (primary test, guardrails, SRM).
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
        checks=list(checks),
    )


def evidence_text(config: PromoterConfig, ev: Evidence, level: float) -> str:
    """The evidence about d in words: mean gain, always-valid interval at `level`, n."""
    return (
        f"mean {config.metric} gain {ev.mean:.4g} (golden minus challenger), {level:.1%} always-valid "
        f"CI [{ev.low:.4g}, {ev.high:.4g}], n={ev.n}"
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Promoter:
    """Sequential tests of every challenger against the current golden, with Holm across them.

    Feed paired scores with `observe` (or the moments of matured cohorts with `fold`), ask `decide` as
    often as you like (every decision is valid under continuous monitoring). After a promotion is
    applied, call `reset_for_new_golden`.
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
        loss_g, loss_c = losses(self.config.metric, label, golden_scores, challenger_scores)
        if golden_version != self.golden_version:
            self.stale_rows += int(loss_g.size)
            return
        self.fold(challenger_version, Moments.of(loss_g - loss_c))

    def fold(self, challenger_version: str, moments: Moments) -> None:
        """Fold the moments of paired differences d (golden minus challenger loss) of the current
        golden and one challenger in.

        Raises:
            PromoterError: the golden as its own challenger.
        """
        if challenger_version == self.golden_version:
            raise PromoterError(f"challenger {challenger_version!r} is the golden itself")
        pair = self.pairs.setdefault(challenger_version, PairState(self.golden_version, challenger_version))
        pair.fold(moments, self.config)

    def end_challenger(self, challenger_version: str) -> None:
        """Forget a challenger whose experiment stopped (it leaves Holm's family)."""
        self.pairs.pop(challenger_version, None)

    def reset_for_new_golden(self, version: str) -> None:
        """Start over against a new golden: every earlier pair compared another model."""
        self.golden_version, self.pairs, self.stale_rows = version, {}, 0

    def _standing(self) -> tuple[list[str], list[bool], np.ndarray, list[Evidence], list[bool]]:
        """Per challenger (sorted): ready, Holm-adjusted p, evidence at α/m, significant."""
        cfg = self.config
        names = sorted(self.pairs)
        pairs = [self.pairs[name] for name in names]
        m = len(pairs)
        ready = [pair.n >= cfg.min_samples for pair in pairs]
        adjusted = holm_adjust([pair.p_value if ok else 1.0 for pair, ok in zip(pairs, ready, strict=True)])
        evidence = [pair.evidence(cfg, cfg.alpha / max(m, 1)) for pair in pairs]
        significant = [ok and p <= cfg.alpha for ok, p in zip(ready, adjusted, strict=True)]
        return names, ready, adjusted, evidence, significant

    def primary_check(self, challenger_version: str) -> DecisionCheck:
        """The challenger's primary check (`primary_checks`), pending with n = 0 before any pair."""
        found = self.primary_checks().get(challenger_version)
        if found is not None:
            return found
        cfg = self.config
        detail = f"no matured paired outcome yet (needs n >= {cfg.min_samples})"
        return DecisionCheck(name="primary", state="pending", n=0, margin=-cfg.min_effect, detail=detail)

    def primary_checks(self) -> dict[str, DecisionCheck]:
        """Where each challenger's primary test stands, as a `DecisionCheck` named "primary": the
        estimate is the mean loss difference challenger minus golden (negative: better), with its
        always-valid interval at level 1 - α/m and its Holm-adjusted p-value; it passes once the
        challenger is surely better by more than min_effect and fails once it is surely worse."""
        cfg = self.config
        names, ready, adjusted, evidence, significant = self._standing()
        checks = {}
        for i, name in enumerate(names):
            ev = evidence[i].flipped()
            passed = significant[i] and evidence[i].low > cfg.min_effect
            failed = significant[i] and evidence[i].mean < 0.0
            state: CheckState = "pass" if passed else "fail" if failed else "pending"
            checks[name] = DecisionCheck(
                name="primary",
                state=state,
                n=ev.n,
                estimate=ev.mean if ev.n else None,
                ci_low=_finite(ev.low),
                ci_high=_finite(ev.high),
                margin=-cfg.min_effect,
                p_value=float(adjusted[i]) if ready[i] else None,
                detail=(
                    f"mean {cfg.metric} challenger minus golden; passes below -{cfg.min_effect:g} "
                    f"(Holm over {len(names)} challenger(s), needs n >= {cfg.min_samples})"
                ),
            )
        return checks

    def decide(
        self,
        now_ms: int,
        include_keep: bool = False,
        holds: Mapping[str, tuple[str, str]] | None = None,
        checks: Mapping[str, Sequence[DecisionCheck]] | None = None,
    ) -> list[Decision]:
        """Decisions at this moment, as Decision records.

        At most one `promote`: among the m challengers, those Holm rejects at level α whose (1 - α/m)
        confidence lower bound exceeds min_effect and that are not held, the one with the largest
        mean gain. Each finding (promote; a significantly worse challenger as `keep` "challenger
        worse"; a winner held, as `keep` "held") is returned once per pair; with `include_keep`,
        every other pair (and repeated findings) get a `keep` with why.

        Args:
            now_ms: When, epoch milliseconds.
            include_keep: Also return a `keep` for every pair without a new finding.
            holds: Challenger -> (kind, why) for challengers that may not be promoted now (a guardrail
                not passed, a sample ratio mismatch); the kind names the finding, reported once.
            checks: Challenger -> its other tests' checks, recorded after the primary one.
        """
        cfg, holds, checks = self.config, holds or {}, checks or {}
        names, ready, adjusted, evidence, significant = self._standing()
        primary = self.primary_checks()
        m = len(names)
        passing = [i for i in range(m) if significant[i] and evidence[i].low > cfg.min_effect]
        eligible = [i for i in passing if names[i] not in holds]
        best = max(eligible, key=lambda i: evidence[i].mean, default=None)
        decisions = []
        for i, (name, ev) in enumerate(zip(names, evidence, strict=True)):
            pair = self.pairs[name]
            finding, reason = None, evidence_text(cfg, ev, 1.0 - cfg.alpha / m)
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
            elif i in passing and name in holds:
                kind, why = holds[name]
                finding = f"held:{kind}"
                reason = f"held ({why}); challenger better by more than the minimum effect: {reason}"
            elif i in passing:
                reason = f"passes, but challenger {names[best or 0]} gains more: {reason}"
            elif significant[i]:
                reason = f"better, not yet surely by the minimum effect {cfg.min_effect:g}: {reason}"
            else:
                reason = f"no significant difference yet: {reason}"
            action: DecisionAction = "promote" if finding == "promote" else "keep"
            if finding is not None and finding != pair.reported:
                pair.reported = finding
            elif not include_keep:
                continue
            elif finding is not None:
                action, reason = "keep", f"already recorded ({finding}); {reason}"
            p_value = float(adjusted[i]) if ready[i] else None
            versions = (self.golden_version, pair.challenger_version)
            tests = [primary[name], *checks.get(name, ())]
            decisions.append(
                new_decision(
                    now_ms, action, cfg.mode, versions, reason, cfg.metric, ev.flipped(), p_value, tests
                )
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
