"""Per-feature serving statistics, mergeable across windows and workers, and their PSI drift.

`FeatureStats` is pure (no storage): per feature, counts, missing rate, mean/std and a histogram over
bin edges taken from the training (reference) distribution. Histograms on the same edges merge by
addition, so windows and workers combine exactly, and PSI compares serving data with the reference
on those same bins. `rig.feedback.metadata.MetadataStore` stores them per window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from rig.errors import MetadataError

DEFAULT_BINS = 10
PSI_EPSILON = 1e-4
"""Floor of a bin's share in PSI, so that an empty bin gives a large but finite term."""
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
"""Quantile levels written by `FeatureStats.to_dict`."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class FeatureStatsWindow:
    """Feature statistics of one scope (a model version or `serving`) over one window."""

    scope: str
    window_end_ms: int
    stats: FeatureStats


@dataclass
class _Sketch:
    """One feature: counts per bin (index 0 = missing, then one bin per interval between edges)."""

    edges: FloatArray
    reference: IntArray
    counts: IntArray
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    @property
    def n(self) -> int:
        return int(self.counts[1:].sum())

    def add(self, values: FloatArray) -> None:
        finite = values[np.isfinite(values)]
        self.counts[0] += values.size - finite.size
        if finite.size == 0:
            return
        n_before, batch_mean = self.n, float(finite.mean())
        bins = np.searchsorted(self.edges, finite, side="right")
        self.counts[1:] += np.bincount(bins, minlength=self.edges.size + 1)
        batch_m2 = float(np.square(finite - batch_mean).sum())
        self.mean, self.m2 = _moments(n_before, self.mean, self.m2, finite.size, batch_mean, batch_m2)
        self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))

    def merged(self, other: _Sketch) -> _Sketch:
        if not (np.array_equal(self.edges, other.edges) and np.array_equal(self.reference, other.reference)):
            raise MetadataError("feature statistics on different bins or references cannot be merged")
        mean, m2 = _moments(self.n, self.mean, self.m2, other.n, other.mean, other.m2)
        low, high = min(self.low, other.low), max(self.high, other.high)
        return _Sketch(self.edges, self.reference, self.counts + other.counts, mean, m2, low, high)

    def psi(self) -> float:
        if self.counts.sum() == 0 or self.reference.sum() == 0:
            return math.nan
        expected = np.maximum(self.reference / self.reference.sum(), PSI_EPSILON)
        actual = np.maximum(self.counts / self.counts.sum(), PSI_EPSILON)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def quantiles(self, levels: Sequence[float]) -> FloatArray:
        """Quantiles read off the histogram, interpolated linearly inside a bin (exact to one bin)."""
        hist = self.counts[1:]
        if self.n == 0:
            return np.full(len(levels), math.nan)
        bounds = np.clip(np.concatenate(([self.low], self.edges, [self.high])), self.low, self.high)
        cumulative = np.cumsum(hist)
        target = np.clip(np.asarray(levels, dtype=float), 0.0, 1.0) * self.n
        index = np.minimum(np.searchsorted(cumulative, target, side="left"), hist.size - 1)
        inside = (target - (cumulative[index] - hist[index])) / np.maximum(hist[index], 1)
        left, right = bounds[index], bounds[index + 1]
        return left + np.clip(inside, 0.0, 1.0) * (right - left)

    def to_dict(self) -> dict[str, Any]:
        n, missing = self.n, int(self.counts[0])
        return {
            "edges": self.edges.tolist(),
            "reference": self.reference.tolist(),
            "counts": self.counts.tolist(),
            "n": n,
            "missing": missing,
            "missing_rate": json_float(missing / (n + missing) if n + missing else math.nan),
            "mean": json_float(self.mean if n else math.nan),
            "std": json_float(math.sqrt(self.m2 / n) if n else math.nan),
            "m2": self.m2,
            "min": json_float(self.low),
            "max": json_float(self.high),
            "psi": json_float(self.psi()),
            "quantiles": dict(
                zip(map(str, QUANTILES), map(json_float, self.quantiles(QUANTILES)), strict=True)
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Sketch:
        edges = np.asarray(data["edges"], dtype=np.float64)
        reference, counts = (np.asarray(data[key], dtype=np.int64) for key in ("reference", "counts"))
        if counts.size != edges.size + 2 or reference.size != counts.size:
            raise MetadataError("feature sketch has counts that do not fit its bin edges")
        mean, low, high = (data[key] for key in ("mean", "min", "max"))
        return cls(
            edges,
            reference,
            counts,
            mean=0.0 if mean is None else float(mean),
            m2=float(data["m2"]),
            low=math.inf if low is None else float(low),
            high=-math.inf if high is None else float(high),
        )


class FeatureStats:
    """Mergeable statistics of numeric features, with PSI drift against a reference distribution.

    Build one with `from_reference` (training data) or `from_dict` (stored); feed serving batches
    with `update`. Missing means NaN, None or ±inf; it counts in its own PSI bin.
    """

    def __init__(self, sketches: Mapping[str, _Sketch]) -> None:
        self._sketches = dict(sketches)

    @classmethod
    def from_reference(cls, frame: pd.DataFrame, bins: int = DEFAULT_BINS) -> FeatureStats:
        """Statistics with bin edges at the reference's quantiles and no serving data yet.

        Args:
            frame: Reference (training) rows; numeric and boolean columns are tracked, others ignored.
            bins: Number of equal-frequency bins wanted; ties (discrete features) give fewer.
        """
        if bins < 1:
            raise MetadataError("feature statistics need at least one bin")
        sketches = {}
        for name in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[name]):
                continue
            values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            finite = values[np.isfinite(values)]
            levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
            edges = np.unique(np.quantile(finite, levels)) if finite.size else np.empty(0)
            probe = _Sketch(edges, np.zeros(edges.size + 2, np.int64), np.zeros(edges.size + 2, np.int64))
            probe.add(values)
            sketches[str(name)] = _Sketch(edges, probe.counts, np.zeros_like(probe.counts))
        return cls(sketches)

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> FeatureStats:
        """Statistics as `to_dict` gave them (derived fields are recomputed, not read)."""
        try:
            return cls({name: _Sketch.from_dict(sketch) for name, sketch in data.items()})
        except (KeyError, TypeError, ValueError) as error:
            raise MetadataError(f"unreadable feature statistics: {error!r}") from error

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self._sketches)

    def update(self, columns: Mapping[str, npt.ArrayLike]) -> None:
        """Add one batch of serving rows; a tracked feature absent from `columns` is missing in all.

        Raises:
            MetadataError: columns of different lengths, or a tracked column that is not numeric.
        """
        lengths = {int(np.size(column)) for column in columns.values()}
        if len(lengths) > 1:
            raise MetadataError(f"feature columns have different lengths: {sorted(lengths)}")
        rows = lengths.pop() if lengths else 0
        for name, sketch in self._sketches.items():
            if name not in columns:
                sketch.counts[0] += rows
                continue
            try:
                values = np.asarray(columns[name], dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise MetadataError(f"feature {name!r} is not numeric: {error}") from error
            sketch.add(values.reshape(-1))

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of both inputs' data together; both must come from the same reference."""
        if set(self._sketches) != set(other._sketches):
            raise MetadataError("feature statistics of different feature sets cannot be merged")
        return FeatureStats({name: s.merged(other._sketches[name]) for name, s in self._sketches.items()})

    def empty(self) -> FeatureStats:
        """Same reference and bins, no serving data: the start of the next window."""
        return FeatureStats(
            {
                name: _Sketch(s.edges, s.reference, np.zeros_like(s.counts))
                for name, s in self._sketches.items()
            }
        )

    def psi(self) -> dict[str, float]:
        """Population stability index per feature (NaN before any data); > 0.25 is a large shift."""
        return {name: sketch.psi() for name, sketch in self._sketches.items()}

    def quantiles(self, levels: Sequence[float] = QUANTILES) -> dict[str, list[float]]:
        """Approximate quantiles per feature, exact to within one bin."""
        return {name: sketch.quantiles(levels).tolist() for name, sketch in self._sketches.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready statistics per feature (NaN and ±inf written as None)."""
        return {name: sketch.to_dict() for name, sketch in self._sketches.items()}


def _moments(
    n_a: int, mean_a: float, m2_a: float, n_b: int, mean_b: float, m2_b: float
) -> tuple[float, float]:
    """Mean and sum of squared deviations of two merged samples (Chan et al.)."""
    n = n_a + n_b
    if n == 0:
        return 0.0, 0.0
    delta = mean_b - mean_a
    return mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def json_float(value: float | None) -> float | None:
    """None for None, NaN and ±inf (JSON has none of them; SQLite stores NaN as NULL), else a float."""
    return None if value is None or not math.isfinite(value) else float(value)
