"""Sample ratio mismatch (SRM): a sequential test that an A/B split is what the routing says.

Unit: the entity. A/B assigns entities, not requests (`rig.serving.dispatch`: a sticky hash of the
entity id), so the arms' request counts are sums over entities of very unequal sizes: a hot entity
moves a clump of requests into one arm, and a request-level test flags a correct split far more
often than α (bench/promoter_sim.py measures it). Each entity's arm, by contrast, is an independent
draw with the configured probabilities, whoever shows up and in what order. So the test counts the
distinct entities whose outcomes came back, per arm.

Era: one split (the golden and the A/B experiments with their shares, in routing order). A routing
change starts a new era at the watermark (the latest outcome time seen); only requests predicted at
or after it count, whatever their arm, so the cut does not depend on the arm. An entity is counted
in the golden's arm when its golden row arrives and moves to an experiment's arm when a row of that
experiment does (rows of one request arrive together). An era with a traffic-capped A/B experiment
is not tested (a cap makes the realised split differ from the shares by design).

Test: the Dirichlet-multinomial mixture of Lindon & Malek ("Anytime-valid inference for multinomial
count data", NeurIPS 2022). With configured shares θ (each A/B experiment, and the rest the golden
answers), counts x over n units and a Dirichlet(C θ) mixture over the alternative,

    BF_n = Γ(C) / Γ(C + n) · Π_j Γ(C θ_j + x_j) / Γ(C θ_j) / Π_j θ_j^x_j

is a nonnegative martingale with mean 1 under the configured split; the split is flagged once
BF_n ≥ 1/α (the always-valid p-value min_k 1/BF_k ≤ α), and every A/B experiment of the era is held.

Pass: a challenger of an A/B experiment may only be promoted once its split is shown right: the
always-valid interval of its arm's share (the Beta(C θ_k, C (1 - θ_k)) marginal of the same
mixture, `rate_interval`) inside θ_k (1 ± tolerance). So a mismatch too small to be flagged yet
cannot let a promotion through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from rig.errors import PromoterError
from rig.feedback.rates import rate_interval
from rig.routing.table import RoutingTable
from rig.wire.records import CheckState, DecisionCheck, JoinedOutcome

SRM_CONCENTRATION = 500.0
"""C of the Dirichlet(C θ) mixture: its prior spread of a 50 % share is ±2.2 points (sd), the size of
the mismatches worth flagging (5-10 % of an arm). bench/promoter_sim.py, 10 % of a 50 % arm's entities
lost, 1,000 runs: C = 50, 200, 500, 2,000 flag it in 96, 98, 98, 97 % of runs within 20,000 outcomes,
at a median of 2,700, 2,700, 3,000 and 5,200 outcomes."""

GOLDEN_ARM = ""
"""The arm of the entities the golden answers (no A/B experiment took them)."""


def log_srm_bayes_factor(counts: np.ndarray, shares: np.ndarray, concentration: float) -> np.ndarray:
    """log BF_n of the Dirichlet-multinomial mixture test, vectorised over leading axes of `counts`
    (the last axis: categories, aligned with `shares`, which sum to 1)."""
    x = np.asarray(counts, dtype=float)
    theta = np.asarray(shares, dtype=float)
    prior = concentration * theta
    n = x.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        likelihood = np.where(x > 0, x * np.log(theta), 0.0).sum(axis=-1)
    mixture = gammaln(concentration) - gammaln(concentration + n)
    mixture = mixture + (gammaln(prior + x) - gammaln(prior)).sum(axis=-1)
    return mixture - likelihood


@dataclass(frozen=True)
class Split:
    """The A/B split of one routing: the arms (experiment name, model version, share) in routing
    order, then the golden's arm (GOLDEN_ARM, golden version, the rest of the traffic)."""

    arms: tuple[tuple[str, str, float], ...]
    capped: bool

    @property
    def shares(self) -> np.ndarray:
        return np.array([share for _, _, share in self.arms])


def split_of(routing: RoutingTable) -> Split | None:
    """The A/B split the routing asks for; None without a golden or a live A/B experiment."""
    golden = routing.golden
    if golden is None:
        return None
    seen, arms, capped = {golden}, [], False
    for route in routing.live_experiments:
        if route.model_version in seen:
            continue
        seen.add(route.model_version)
        if route.mode == "ab":
            arms.append((route.name, route.model_version, float(route.traffic_share)))
            capped = capped or route.traffic_cap_rps is not None
    if not arms:
        return None
    rest = max(0.0, 1.0 - sum(share for _, _, share in arms))
    return Split((*arms, (GOLDEN_ARM, golden, rest)), capped)


class SrmMonitor:
    """The sequential SRM test of the current era (see the module docstring).

    Feed every fresh joined row (`observe`) after `follow`ing the routing; `checks` says per A/B
    challenger where its split stands, `mismatch` whether the era is flagged.
    """

    def __init__(self, alpha: float, tolerance: float, concentration: float = SRM_CONCENTRATION) -> None:
        if not 0 < tolerance < 1 or not concentration > 0:
            raise PromoterError(
                f"need 0 < tolerance < 1 and concentration > 0, got {tolerance} and {concentration}"
            )
        self.alpha, self.tolerance, self.concentration = alpha, tolerance, concentration
        self.split: Split | None = None
        self.since_ms: int | None = None
        """Start of the era: requests predicted earlier do not count (None: every request counts)."""
        self.units: dict[str, int] = {}
        """Entity id -> index of its arm in `split.arms`."""
        self.counts = np.zeros(0, dtype=np.int64)
        self.p_value = 1.0
        self.log_bayes_factor = 0.0

    @property
    def mismatch(self) -> bool:
        """True once the era's split is flagged (for the rest of the era)."""
        return self.split is not None and not self.split.capped and self.p_value <= self.alpha

    def follow(self, routing: RoutingTable, watermark_ms: int | None) -> None:
        """Start a new era when the split changed; it counts requests predicted from `watermark_ms`."""
        split = split_of(routing)
        if split == self.split:
            return
        self.split, self.since_ms, self.units = split, watermark_ms, {}
        self.counts = np.zeros(0 if split is None else len(split.arms), dtype=np.int64)
        self.p_value, self.log_bayes_factor = 1.0, 0.0

    def observe(self, rows: Sequence[JoinedOutcome]) -> None:
        """Count the entities of these rows per arm, then look (the p-value is a running minimum)."""
        split = self.split
        if split is None or split.capped:
            return
        golden_arm = len(split.arms) - 1
        arm_of = {(name, version): i for i, (name, version, _) in enumerate(split.arms[:-1])}
        golden = split.arms[-1][1]
        for row in rows:
            if self.since_ms is not None and row.prediction_time < self.since_ms:
                continue
            if row.role == "golden" and row.model_version == golden:
                if row.entity_id not in self.units:
                    self.units[row.entity_id] = golden_arm
                    self.counts[golden_arm] += 1
            elif row.role == "ab" and row.golden_model_version == golden:
                arm = arm_of.get((row.experiment or "", row.model_version))
                held = self.units.get(row.entity_id)
                if arm is None or held == arm:
                    continue
                if held is not None:
                    self.counts[held] -= 1
                self.units[row.entity_id] = arm
                self.counts[arm] += 1
        if self.counts.sum():
            self.log_bayes_factor = float(
                log_srm_bayes_factor(self.counts, np.maximum(split.shares, 1e-12), self.concentration)
            )
            self.p_value = min(self.p_value, math.exp(-min(max(self.log_bayes_factor, 0.0), 709.0)))

    def checks(self) -> dict[str, DecisionCheck]:
        """Per A/B challenger version of the era, its `srm` check: the share of units in its arm with
        the always-valid interval; fail once the era is flagged, pass once the interval is inside
        share (1 ± tolerance), pending otherwise."""
        split = self.split
        if split is None:
            return {}
        n = int(self.counts.sum())
        out = {}
        for i, (name, version, share) in enumerate(split.arms[:-1]):
            if split.capped:
                out[version] = DecisionCheck(
                    name="srm",
                    state="unmeasured",
                    n=0,
                    margin=share,
                    detail="not tested: an A/B experiment of this split has a traffic cap",
                )
                continue
            prior = self.concentration * share
            low, high = rate_interval(int(self.counts[i]), n, self.alpha, prior, self.concentration - prior)
            inside = share * (1 - self.tolerance) <= low and high <= share * (1 + self.tolerance)
            state: CheckState = "fail" if self.mismatch else "pass" if inside else "pending"
            out[version] = DecisionCheck(
                name="srm",
                state=state,
                n=n,
                estimate=float(self.counts[i]) / n if n else None,
                ci_low=low,
                ci_high=high,
                margin=share,
                p_value=self.p_value,
                detail=(
                    f"share of entities (A/B's unit) in experiment {name}'s arm among {n} whose outcomes "
                    f"came back, configured {share:g}; Dirichlet-multinomial mixture over "
                    f"{len(split.arms)} arms, flagged at p <= {self.alpha:g}; passes once the interval "
                    f"is within {share:g} x (1 ± {self.tolerance:g})"
                ),
            )
        return out

    def snapshot(self) -> dict[str, object]:
        """Where the era stands, in plain values."""
        if self.split is None:
            return {}
        names = [name or "golden" for name, _, _ in self.split.arms]
        return {
            "arms": dict(zip(names, self.counts.tolist(), strict=True)),
            "shares": dict(zip(names, self.split.shares.tolist(), strict=True)),
            "since_ms": self.since_ms,
            "p_value": self.p_value,
            "mismatch": self.mismatch,
            "capped": self.split.capped,
        }
