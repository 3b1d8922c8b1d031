"""Anchors-style rules: the beam search for a short rule under which the model keeps a row's decision.

How rules, perturbations and precision are defined: see `rig.explain.explainer`'s module docstring (`anchor`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rig.explain.records import Record

_ANCHOR_STREAM = 0xA1
# Odd weights of the row hash, one per 64-bit word (two float32 columns): rows up to 4,096 columns.
_ROW_HASH = np.random.default_rng(0xD15).integers(1, 2**63, 2048, dtype=np.uint64) | np.uint64(1)
_SCREEN_SLACK = 0.02  # a screened rule this close to the precision target is confirmed when it is wide


def _fmt(value: float) -> str:
    return f"{value:.6g}"


@dataclass(frozen=True, slots=True)
class Condition(Record):
    """`lower < feature <= upper` (a missing bound is unbounded; NaN never holds), or `feature is missing`."""

    feature: str
    lower: float | None = None
    upper: float | None = None
    missing: bool = False

    def holds(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of the `values` (one feature's column) that satisfy the condition."""
        values = np.asarray(values)
        if self.missing:
            return np.isnan(values)
        mask = ~np.isnan(values)
        if self.lower is not None:
            mask &= values > self.lower
        if self.upper is not None:
            mask &= values <= self.upper
        return mask

    def __str__(self) -> str:
        if self.missing:
            return f"{self.feature} is missing"
        if self.lower is None and self.upper is None:
            return f"{self.feature} is present"
        if self.lower is None:
            return f"{self.feature} <= {_fmt(self.upper)}"  # type: ignore[arg-type]
        if self.upper is None:
            return f"{self.feature} > {_fmt(self.lower)}"
        return f"{_fmt(self.lower)} < {self.feature} <= {_fmt(self.upper)}"


@dataclass(frozen=True, slots=True)
class Anchor(Record):
    """A rule under which the model keeps the row's decision with precision `precision`."""

    conditions: tuple[Condition, ...]
    decision: bool
    """The decision (`score >= threshold`) the rule keeps."""
    precision: float
    """Share of `n_samples` fresh perturbations satisfying the rule on which the decision stays."""
    precision_lower: float
    """KL lower confidence bound of the precision (at the explainer's `confidence`)."""
    coverage: float
    """Share of the reference sample that satisfies the rule."""
    n_samples: int
    met_target: bool

    @property
    def rule(self) -> str:
        """The rule in words; `(any row)` for the empty rule."""
        return " AND ".join(map(str, self.conditions)) or "(any row)"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, **Record.to_dict(self)}


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bitwise-distinct rows of a float32 matrix, and for each row the index of its distinct row.

    Perturbations repeat rows often (reference rows drawn with replacement; rules whose conditions the
    base row already meets leave it as it is, the same in every rule of a step): about 40 % of an
    anchor search's rows. Equal bits predict equal margins, so only the distinct rows are predicted.
    Rows are grouped by a hash of their bits (a hash table, no sort), and the grouping is checked bit
    for bit: a hash collision falls back to every row as distinct.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    padded = rows if rows.shape[1] % 2 == 0 else np.hstack([rows, np.zeros((rows.shape[0], 1), np.float32)])
    words = padded.view(np.uint64)
    if words.shape[1] > _ROW_HASH.size:
        return rows, np.arange(rows.shape[0])
    inverse, _ = pd.factorize(_mix(words) @ _ROW_HASH[: words.shape[1]])  # wraps around 2**64, as it should
    # Codes are numbered in order of first appearance: a row is the first of its code where it
    # exceeds every code before it.
    first = np.flatnonzero(np.concatenate(([True], inverse[1:] > np.maximum.accumulate(inverse)[:-1])))
    if not np.array_equal(words[first][inverse], words):
        return rows, np.arange(rows.shape[0])
    return rows[first], inverse


def _mix(words: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of each word: without it, a weighted sum of raw float bits (many trailing
    zeros: 2.0 is 0x40000000) collides for rows that swap two values."""
    x = words ^ (words >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _kl_bernoulli(p: float, q: float) -> float:
    p, q = min(max(p, 1e-12), 1 - 1e-12), min(max(q, 1e-12), 1 - 1e-12)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _kl_lower_bound(p: float, n: int, confidence: float) -> float:
    """Smallest q <= p with n * KL(p, q) <= log(1 / (1 - confidence)) (bisection)."""
    level = math.log(1.0 / (1.0 - confidence)) / n
    lo, hi = 0.0, p
    for _ in range(40):
        mid = (lo + hi) / 2
        if _kl_bernoulli(p, mid) > level:
            lo = mid
        else:
            hi = mid
    return hi


class AnchorSearch:
    """Anchors of rows for one model, against one reference sample.

    Args:
        margins: the model's margins (log-odds) of a float32 matrix.
        margin_threshold: the decision threshold in margin units.
        feature_names: the model's columns, in matrix order.
        reference: reference rows, float32, n x len(feature_names).
        sorted_values: per feature, its sorted non-missing reference values.
        edges: per feature, the reference quantiles that cut it into bins.
        seed: seed of the perturbation draws.
        precision_target, max_anchor_size, beam_width, anchor_batch, anchor_confirm, confidence:
            as in `rig.explain.explainer.ExplainerOptions`.
    """

    def __init__(
        self,
        margins: Callable[[np.ndarray], np.ndarray],
        margin_threshold: float,
        feature_names: tuple[str, ...],
        reference: np.ndarray,
        sorted_values: list[np.ndarray],
        edges: list[np.ndarray],
        *,
        seed: int,
        precision_target: float,
        max_anchor_size: int,
        beam_width: int,
        anchor_batch: int,
        anchor_confirm: int,
        confidence: float,
    ) -> None:
        self._margins = margins
        self._margin_threshold = margin_threshold
        self.feature_names = feature_names
        self._reference = reference
        self._index = {name: j for j, name in enumerate(feature_names)}
        self._sorted = sorted_values
        self._edges = edges
        self.seed = seed
        self.precision_target = precision_target
        self.max_anchor_size = max_anchor_size
        self.beam_width = beam_width
        self.anchor_batch = anchor_batch
        self.anchor_confirm = anchor_confirm
        self.confidence = confidence

    def _candidates(self, x: np.ndarray) -> list[Condition]:
        """Per feature: the row's quantile bin, and the half-lines extending it outwards."""
        found: list[Condition] = []
        for j, name in enumerate(self.feature_names):
            if math.isnan(x[j]):
                found.append(Condition(name, missing=True))
                continue
            edges = self._edges[j]
            k = int(np.searchsorted(edges, x[j], side="left"))  # edges[k-1] < x <= edges[k]
            lower = float(edges[k - 1]) if k > 0 else None
            upper = float(edges[k]) if k < edges.size else None
            options = [Condition(name, lower, upper)]
            if lower is not None and upper is not None:
                options += [Condition(name, lower, None), Condition(name, None, upper)]
            found.extend(c for c in options if c.lower is not None or c.upper is not None)
        return found

    def _perturb(
        self, x: np.ndarray, rules: Sequence[Sequence[Condition]], n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """n perturbations per rule, stacked; rules share the base rows and draws (common random numbers).

        A rule's conditions are on distinct features and each touches only its own column, so what a
        condition does to the base rows is the same in every rule that holds it: computed once per
        distinct condition (a screening step's rules share all conditions but one), then copied in.
        """
        base = self._reference[rng.integers(0, self._reference.shape[0], n)]
        u = rng.random(base.shape)
        out = np.repeat(base[None], len(rules), axis=0)
        redrawn: dict[Condition, tuple[int, np.ndarray, np.ndarray]] = {}
        for block, rule in zip(out, rules, strict=True):
            for condition in rule:
                found = redrawn.get(condition)
                if found is None:
                    found = redrawn[condition] = self._redraw(condition, base, u, x)
                j, bad, values = found
                if bad.size:
                    block[bad, j] = values
        return out.reshape(-1, x.size)

    def _redraw(
        self, condition: Condition, base: np.ndarray, u: np.ndarray, x: np.ndarray
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """The column of `condition`, the base rows that break it, and their values drawn within it."""
        j = self._index[condition.feature]
        bad = np.flatnonzero(~condition.holds(base[:, j]))
        return j, bad, self._draw_within(j, condition, u[bad, j], x[j])

    def _draw_within(self, j: int, condition: Condition, u: np.ndarray, fallback: float) -> np.ndarray:
        if condition.missing:
            return np.full(u.size, np.nan, dtype=np.float32)
        values = self._sorted[j]
        a = 0 if condition.lower is None else int(np.searchsorted(values, condition.lower, side="right"))
        b = values.size if condition.upper is None else int(np.searchsorted(values, condition.upper, "right"))
        if b <= a:  # no reference value satisfies it: keep the row's own value
            return np.full(u.size, fallback, dtype=np.float32)
        return values[np.minimum(a + (u * (b - a)).astype(np.intp), b - 1)]

    def _precisions(
        self, x: np.ndarray, rules: Sequence[Sequence[Condition]], n: int, rng: np.random.Generator
    ) -> np.ndarray:
        decision = self._margins(x[None])[0] >= self._margin_threshold
        rows, inverse = distinct_rows(self._perturb(x, rules, n, rng))
        same = (self._margins(rows)[inverse] >= self._margin_threshold) == decision
        return same.reshape(len(rules), n).mean(axis=1)

    def precision(self, x: np.ndarray, anchor: Anchor, n_samples: int, seed: int) -> float:
        """Re-estimate an anchor's precision for row `x` on `n_samples` perturbations drawn with `seed`."""
        return float(self._precisions(x, [anchor.conditions], n_samples, np.random.default_rng(seed))[0])

    def find(self, x: np.ndarray) -> Anchor:
        """The anchor of row `x` (float32, validated)."""
        rng = np.random.default_rng([self.seed, _ANCHOR_STREAM])
        decision = bool(self._margins(x[None])[0] >= self._margin_threshold)
        candidates = self._candidates(x)  # in feature order, so a sorted rule reads in feature order
        masks = np.stack(
            [c.holds(self._reference[:, self._index[c.feature]]) for c in candidates]
            or [np.ones(self._reference.shape[0], dtype=bool)],
            axis=1,
        )

        def rules(indices: Sequence[tuple[int, ...]]) -> list[tuple[Condition, ...]]:
            return [tuple(candidates[i] for i in rule) for rule in indices]

        best: tuple[tuple[int, ...], float, float] = (
            (),
            float(self._precisions(x, [()], self.anchor_confirm, rng)[0]),
            1.0,
        )
        beam: list[tuple[int, ...]] = [()]
        while best[1] < self.precision_target and len(beam[0]) < self.max_anchor_size:
            expansions = sorted(
                {
                    tuple(sorted((*rule, i)))
                    for rule in beam
                    for i, c in enumerate(candidates)
                    if c.feature not in {candidates[k].feature for k in rule}
                }
            )
            if not expansions:
                break
            screened = self._precisions(x, rules(expansions), self.anchor_batch, rng)
            coverage = np.array([masks[:, list(rule)].all(axis=1).mean() for rule in expansions])
            # Short list: the most precise, and the widest of those that look good enough.
            precise = np.lexsort((-coverage, -screened))[: 2 * self.beam_width]
            promising = np.flatnonzero(screened >= self.precision_target - _SCREEN_SLACK)
            wide = promising[np.argsort(-coverage[promising], kind="stable")][: self.beam_width]
            order = np.array(list(dict.fromkeys([*precise.tolist(), *wide.tolist()])), dtype=np.intp)
            confirmed = self._precisions(x, rules([expansions[i] for i in order]), self.anchor_confirm, rng)
            scored = sorted(
                (
                    (expansions[i], float(p), float(coverage[i]))
                    for i, p in zip(order, confirmed, strict=True)
                ),
                key=lambda s: (-s[1], -s[2]),
            )
            valid = [s for s in scored if s[1] >= self.precision_target]
            if valid or scored[0][1] > best[1]:
                best = max(valid, key=lambda s: (s[2], s[1])) if valid else scored[0]
            beam = [s[0] for s in scored[: self.beam_width]]
        rule, precision, coverage_share = best
        n = self.anchor_confirm
        return Anchor(
            conditions=rules([rule])[0],
            decision=decision,
            precision=precision,
            precision_lower=_kl_lower_bound(precision, n, self.confidence),
            coverage=coverage_share,
            n_samples=n,
            met_target=precision >= self.precision_target,
        )
