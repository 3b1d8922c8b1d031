"""Counterfactuals (CEM-style pertinent negatives): the beam search for the smallest change of mutable
features that flips a row's decision.

How candidate values and distances are defined: see the module docstring of `rig.explain.explainer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rig.explain.records import Record

_FLIP_EPS = 1e-6  # margin units a counterfactual must cross the threshold by


@dataclass(frozen=True, slots=True)
class FeatureChange(Record):
    """One changed feature of a counterfactual (`from_value` NaN when it was missing)."""

    feature: str
    from_value: float
    to_value: float


@dataclass(frozen=True, slots=True)
class Counterfactual(Record):
    """Changes of mutable features that flip the decision, verified by re-predicting."""

    changes: tuple[FeatureChange, ...]
    original_score: float
    score: float
    decision: bool
    """The new decision (the opposite of the row's)."""
    distance: float
    """L1 distance in per-feature reference scale units."""


class CounterfactualSearch:
    """Counterfactuals of rows for one model.

    Args:
        margins: the model's margins (log-odds) of a float32 matrix.
        scores: the model's scores (probabilities) of a float32 matrix.
        threshold: decision threshold on the score.
        margin_threshold: the same threshold in margin units.
        feature_names: the model's columns, in matrix order.
        mutable: indices of the features a counterfactual may change.
        grid: per feature, the values (reference quantiles) a counterfactual may set it to.
        scale: per feature, the reference unit of distance.
        max_changes, counterfactual_beam: as in `rig.explain.explainer.ExplainerOptions`.
    """

    def __init__(
        self,
        margins: Callable[[np.ndarray], np.ndarray],
        scores: Callable[[np.ndarray], np.ndarray],
        threshold: float,
        margin_threshold: float,
        feature_names: tuple[str, ...],
        mutable: list[int],
        grid: list[np.ndarray],
        scale: np.ndarray,
        *,
        max_changes: int,
        counterfactual_beam: int,
    ) -> None:
        self._margins = margins
        self._scores = scores
        self.threshold = threshold
        self._margin_threshold = margin_threshold
        self.feature_names = feature_names
        self._mutable = mutable
        self._grid = grid
        self._scale = scale
        self.max_changes = max_changes
        self.counterfactual_beam = counterfactual_beam

    def _step_cost(self, x: np.ndarray, js: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Distance of setting features `js` to `values`, from the original row `x`."""
        original = x[js].astype(np.float64)
        cost = np.abs(values.astype(np.float64) - original) / self._scale[js]
        return np.where(np.isnan(original), np.where(np.isnan(values), 0.0, 1.0), cost)

    def _moves(self, x: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (feature, value) change of a mutable feature `current` has not changed yet."""
        free = [j for j in self._mutable if current[j] == x[j] or (np.isnan(x[j]) and np.isnan(current[j]))]
        js = [np.full(int((self._grid[j] != x[j]).sum()), j, dtype=np.intp) for j in free]
        values = [self._grid[j][self._grid[j] != x[j]] for j in free]
        if not js:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
        return np.concatenate(js), np.concatenate(values).astype(np.float32)

    @staticmethod
    def _trials(current: np.ndarray, js: np.ndarray, values: np.ndarray) -> np.ndarray:
        trial = np.repeat(current[None], js.size, axis=0)
        trial[np.arange(js.size), js] = values
        return trial

    def _flips(self, margins: np.ndarray, direction: float) -> np.ndarray:
        return direction * (margins - self._margin_threshold) > _FLIP_EPS

    def find(self, x: np.ndarray) -> Counterfactual | None:
        """The least distant found change of fewest mutable features that flips the decision of row `x`
        (float32, validated), or None."""
        margin = float(self._margins(x[None])[0])
        decision = margin >= self._margin_threshold
        direction = -1.0 if decision else 1.0
        beam: list[tuple[np.ndarray, float]] = [(x, 0.0)]
        for _ in range(self.max_changes):
            moves = [(current, cost, *self._moves(x, current)) for current, cost in beam]
            moves = [m for m in moves if m[2].size]
            if not moves:
                return None
            trials = np.concatenate([self._trials(current, js, v) for current, _, js, v in moves])
            costs = np.concatenate([cost + self._step_cost(x, js, v) for _, cost, js, v in moves])
            margins = self._margins(trials)
            flips = self._flips(margins, direction)
            if flips.any():
                pick = int(np.flatnonzero(flips)[np.argmin(costs[flips])])
                return self._verified(x, self._shrink(x, trials[pick], direction), decision)
            progress = direction * (margins - margin)
            beam = self._next_beam(trials, costs, progress)
            if not beam:
                return None
        return None

    def _next_beam(
        self, trials: np.ndarray, costs: np.ndarray, progress: np.ndarray
    ) -> list[tuple[np.ndarray, float]]:
        """Half the beam: the largest moves towards the flip; the other half: largest per unit distance."""
        width = self.counterfactual_beam
        useful = np.flatnonzero(progress > 0)
        by_progress = useful[np.argsort(-progress[useful], kind="stable")]
        by_ratio = useful[np.argsort(-progress[useful] / np.maximum(costs[useful], 1e-12), kind="stable")]
        kept: dict[bytes, tuple[np.ndarray, float]] = {}
        for i in (i for pair in zip(by_progress, by_ratio, strict=True) for i in pair):
            kept.setdefault(trials[i].tobytes(), (trials[i], float(costs[i])))
            if len(kept) == width:
                break
        return list(kept.values())

    def _shrink(self, x: np.ndarray, current: np.ndarray, direction: float) -> np.ndarray:
        """Move each changed feature back towards its original value as far as the flip survives."""
        current = current.copy()
        for j in np.flatnonzero((current != x) & ~(np.isnan(current) & np.isnan(x))):
            grid = self._grid[j]
            lo, hi = sorted((x[j], current[j]))
            between = grid[(grid >= lo) & (grid <= hi)] if not np.isnan(x[j]) else current[j : j + 1]
            options = np.concatenate([x[j : j + 1], between]).astype(np.float32)
            js = np.full(options.size, j, dtype=np.intp)
            options = options[np.argsort(self._step_cost(x, js, options), kind="stable")]
            flips = self._flips(self._margins(self._trials(current, js, options)), direction)
            if flips.any():
                current[j] = options[int(np.argmax(flips))]
        return current

    def _verified(self, x: np.ndarray, current: np.ndarray, decision: bool) -> Counterfactual | None:
        scores = self._scores(np.stack([x, current]))
        new_decision = bool(scores[1] >= self.threshold)
        if new_decision == decision:
            return None
        same = (x == current) | (np.isnan(x) & np.isnan(current))
        js = np.flatnonzero(~same)
        return Counterfactual(
            changes=tuple(FeatureChange(self.feature_names[j], float(x[j]), float(current[j])) for j in js),
            original_score=float(scores[0]),
            score=float(scores[1]),
            decision=new_decision,
            distance=float(self._step_cost(x, js, current[js]).sum()),
        )
