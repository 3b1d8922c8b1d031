"""De-promotion: the golden watched against its own reference window and the previous golden.

The same always-valid machinery as the promoter (`rig.feedback.sequential`): the later losses get the
normal-mixture confidence sequence, the reference window a fixed-sample interval (it is fixed once
full), and the previous golden, kept scoring as a shadow, the paired mSPRT.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from rig.errors import PromoterError
from rig.feedback.sequential import (
    Evidence,
    Moments,
    PairState,
    PromoterConfig,
    evidence_text,
    losses,
    mixture_radius,
    new_decision,
    welford_update,
)
from rig.wire.records import Decision, DecisionAction

REFERENCE_PER_MIN_SAMPLES = 5
"""Default `GoldenMonitor` reference window, in min_samples: raw losses vary far more than paired
differences, and the reference mean's error never shrinks later, so it bounds what can be detected."""


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
        loss, *previous = losses(self.config.metric, labels, scores, *extra)
        if self.previous is not None and previous:
            self.previous.update(loss - previous[0], self.config)
        room = 0 if self.reference.exact else self.reference_size - self.reference.n
        for stream, part in ((self.reference, loss[: max(room, 0)]), (self.current, loss[max(room, 0) :])):
            stream.n, stream.mean, stream.m2 = welford_update(stream.n, stream.mean, stream.m2, part)

    def fold(self, moments: Moments) -> None:
        """Fold the moments of a group of the golden's losses in (a matured cohort): the whole group
        goes to the reference window while it is not full (the window may end a little beyond
        `reference_size`), to the current stream after."""
        full = self.reference.exact or self.reference.n >= self.reference_size
        stream = self.current if full else self.reference
        merged = Moments(stream.n, stream.mean, stream.m2).merge(moments)
        stream.n, stream.mean, stream.m2 = merged.n, merged.mean, merged.m2

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
        records: list[tuple[bool, str | None, Evidence, float | None, str]] = []
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
            text = f"golden {verdict} than the previous golden: {evidence_text(cfg, ev, 1 - alpha)}"
            p_value = min(1.0, pair.p_value * cfg.alpha / alpha) if ready else None
            records.append((worse, pair.challenger_version, ev.flipped(), p_value, text))
        out = []
        for worse, challenger, ev, p_value, reason in records:
            action: DecisionAction = "demote" if worse and not self.reported else "keep"
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
