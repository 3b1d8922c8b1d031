"""Label delays: when outcomes arrive, by label, and the matured cohorts the promoter decides on.

The trap. Outcomes join as they arrive. When the delay depends on the label (a fraud is confirmed
days after a clean payment is), the outcomes joined so far over-represent the fast label, and a
challenger better on one label and worse on the other looks better or worse than it is until the slow
labels catch up. An always-valid test on that stream is valid, for the wrong quantity.

The estimator: matured cohorts. With a label window W, a request has *matured* once the watermark
(the latest outcome time seen) is W past its prediction time, and it counts iff its outcome came
within W of its prediction. Whether a request counts then depends on its own label and delay only,
by the same rule for every request, so the matured requests are an i.i.d. sample of the requests
whose delay is at most W, and every sequential test stays valid on them. W is learned per label
(`DelayModel.window_ms`): an upper confidence bound on the `coverage` quantile of each label's
delays, the larger of the two. Each label is then counted with probability at least `coverage`, so
with a share π of positives the counted label mix is off by at most π(1 - π)(1 - coverage) / coverage,
and a mean loss difference d by at most that times |E[d | y=1] - E[d | y=0]|.

Why not inverse probability of observation weighting: a request's weight 1 / P(observed by now |
label, age) changes as it ages, so running statistics would be re-weighted after the fact (no longer
the sums the mixture tests are built on); weights of young slow-label requests are large, so the
variance explodes early, exactly when decisions are tempting; and the weights need the delay
distribution of the labels not seen yet. Matured cohorts pay a wait of W instead and keep the tests
unchanged.

Memory: pending requests are kept as cohorts by prediction time (a power-of-two width of at least
W / 32 milliseconds), each holding only the mergeable moments the tests need, so memory is a few
dozen cohorts per challenger whatever the traffic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, Self

import numpy as np
from scipy.stats import binom

from rig.errors import PromoterError

DELAY_EDGES_MS = np.logspace(0.0, 11.0, 221)
"""Upper edges of the delay bins, in milliseconds: bin 0 holds delays up to 1 ms, bin i (1..220) those
in (edge[i-1], edge[i]], 20 bins a decade up to 10^11 ms (3 years; longer delays join the last bin).
Stored histograms use these bins: do not change them."""

COHORTS_PER_WINDOW = 32
"""Cohort width: the power of two milliseconds at or below W / COHORTS_PER_WINDOW (at least 1)."""


@dataclass(frozen=True)
class WindowConfig:
    """How the label window W is chosen.

    Attributes:
        fixed_ms: A known window (e.g. a chargeback period); None learns it from the delays.
        coverage: Share of each label's outcomes the learned window must cover.
        confidence: Confidence that it does (see `DelayModel.quantile_bound_ms`).
        max_ms: Upper limit (the join's retention: later outcomes are never joined); None for none.
    """

    fixed_ms: float | None = None
    coverage: float = 0.99
    confidence: float = 0.95
    max_ms: float | None = None

    def __post_init__(self) -> None:
        problems = {
            f"fixed_ms must be >= 0, got {self.fixed_ms}": self.fixed_ms is not None and self.fixed_ms < 0,
            f"coverage must be in (0, 1), got {self.coverage}": not 0 < self.coverage < 1,
            f"confidence must be in (0, 1), got {self.confidence}": not 0 < self.confidence < 1,
            f"max_ms must be > 0, got {self.max_ms}": self.max_ms is not None and not self.max_ms > 0,
        }
        wrong = [text for text, bad in problems.items() if bad]
        if wrong:
            raise PromoterError("; ".join(wrong))

    def window_ms(self, delays: DelayModel) -> float | None:
        """W: the fixed window, or the one learned from `delays` (None until it can be), capped."""
        window = (
            self.fixed_ms if self.fixed_ms is not None else delays.window_ms(self.coverage, self.confidence)
        )
        return window if window is None or self.max_ms is None else min(window, self.max_ms)


@dataclass
class DelayModel:
    """Histograms of outcome delays, one per label, over `DELAY_EDGES_MS`; mergeable.

    Attributes:
        counts: label (0 or 1) -> delays counted per bin.
    """

    counts: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, labels: np.ndarray, delays_ms: np.ndarray) -> None:
        """Count the delays (outcome minus prediction time, ms) of outcomes with these labels."""
        labels = np.asarray(labels).astype(int).ravel()
        bins = delay_bins(delays_ms)
        for label in (0, 1):
            mine = bins[labels == label]
            if mine.size:
                self._bins(label)[:] += np.bincount(mine, minlength=DELAY_EDGES_MS.size)

    def add_counts(self, label: int, counts: Mapping[int, int]) -> None:
        """Add a stored histogram (bin -> count) of one label."""
        histogram = self._bins(int(label))
        for index, count in counts.items():
            histogram[min(max(int(index), 0), DELAY_EDGES_MS.size - 1)] += int(count)

    def sparse(self, label: int) -> dict[int, int]:
        """One label's histogram as bin -> count, empty bins left out (what the metadata store keeps)."""
        histogram = self.counts.get(label)
        if histogram is None:
            return {}
        return {int(i): int(histogram[i]) for i in np.flatnonzero(histogram)}

    def n(self, label: int) -> int:
        """Delays counted for a label."""
        histogram = self.counts.get(label)
        return 0 if histogram is None else int(histogram.sum())

    def quantile_bound_ms(self, label: int, coverage: float, confidence: float) -> float | None:
        """An upper `confidence` bound on the `coverage` quantile of one label's delays, in ms.

        The k-th smallest of n delays exceeds the quantile with probability binom.cdf(k - 1; n,
        coverage); k is the smallest rank where that reaches `confidence`, and the bound is the upper
        edge of the bin holding that delay. None when n is too small for any rank to do it.
        """
        n = self.n(label)
        if n == 0:
            return None
        rank = int(binom.ppf(confidence, n, coverage)) + 1
        if rank > n:
            return None
        cumulative = np.cumsum(self.counts[label])
        return float(DELAY_EDGES_MS[int(np.searchsorted(cumulative, rank))])

    def window_ms(self, coverage: float, confidence: float = 0.95) -> float | None:
        """The label window W: the larger of both labels' `quantile_bound_ms`; None until both have
        enough delays (log(1 - confidence) / log(coverage) each: 299 for 0.99 at 95 %)."""
        bounds = [self.quantile_bound_ms(label, coverage, confidence) for label in (0, 1)]
        return None if None in bounds else max(bound for bound in bounds if bound is not None)

    def merge(self, other: DelayModel) -> None:
        """Add another model's counts to this one."""
        for label, histogram in other.counts.items():
            self._bins(label)[:] += histogram

    def _bins(self, label: int) -> np.ndarray:
        return self.counts.setdefault(label, np.zeros(DELAY_EDGES_MS.size, dtype=np.int64))


def delay_bins(delays_ms: np.ndarray) -> np.ndarray:
    """The bin of each delay (ms); a negative delay (clock skew) falls in bin 0."""
    delays = np.asarray(delays_ms, dtype=float).ravel()
    return np.minimum(np.searchsorted(DELAY_EDGES_MS, delays, side="left"), DELAY_EDGES_MS.size - 1)


class Mergeable(Protocol):
    """Statistics of a group of requests that merge exactly with those of another group."""

    def merge(self, other: Self) -> Self:
        """Both groups together."""
        ...


@dataclass
class MaturedCohorts:
    """Cohorts of requests by prediction time, each released once the label window has passed it.

    Feed each batch: `advance` the watermark with its outcome times, `place` its rows (which count,
    and into which cohort), `add` the statistics of every stream per cohort; then `release` returns
    the cohorts that matured, oldest first. A cohort is released when its end plus W is at or before
    the watermark; a row whose cohort was already released (outcomes out of order, or event times
    replayed) joins a new cohort with the same key that is released at once.

    Attributes:
        watermark_ms: The latest outcome time seen (event time, ms); None before any.
        counted: Rows placed in a cohort (their delay was within the window).
        beyond_window: Rows left out because their delay exceeded the window.
    """

    watermark_ms: int | None = None
    counted: int = 0
    beyond_window: int = 0
    pending: dict[tuple[int, int], dict[str, Mergeable]] = field(default_factory=dict)

    def advance(self, outcome_ms: np.ndarray) -> None:
        """Move the watermark to the latest of these outcome times (it never moves back)."""
        times = np.asarray(outcome_ms)
        if times.size:
            latest = int(times.max())
            self.watermark_ms = latest if self.watermark_ms is None else max(self.watermark_ms, latest)

    def place(
        self, prediction_ms: np.ndarray, delay_ms: np.ndarray, window_ms: float, count: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which rows count (delay within the window) and the cohort index of each row.

        Args:
            prediction_ms: Prediction time of each row (event time, ms).
            delay_ms: Outcome minus prediction time of each row.
            window_ms: The label window W.
            count: Add the rows to `counted` / `beyond_window` (once per request, not per model).

        Returns:
            (mask of the rows that count, int64 cohort index of every row); a cohort's key is
            (width, index), width from `cohort_width_ms(window_ms)`.
        """
        keep = np.asarray(delay_ms, dtype=float) <= window_ms
        if count:
            self.counted += int(keep.sum())
            self.beyond_window += int(keep.size - keep.sum())
        width = cohort_width_ms(window_ms)
        return keep, np.floor_divide(np.asarray(prediction_ms, dtype=np.int64), width)

    def add(self, key: tuple[int, int], stream: str, stats: Mergeable) -> None:
        """Merge one stream's statistics of some rows into their cohort."""
        cohort = self.pending.setdefault(key, {})
        held = cohort.get(stream)
        cohort[stream] = stats if held is None else held.merge(stats)

    def release(self, window_ms: float) -> Iterator[dict[str, Mergeable]]:
        """Remove and yield, oldest first, every cohort whose end plus the window is at or before the
        watermark."""
        if self.watermark_ms is None:
            return
        ready = sorted(
            (key for key in self.pending if (key[1] + 1) * key[0] + window_ms <= self.watermark_ms),
            key=lambda key: (key[1] + 1) * key[0],
        )
        for key in ready:
            yield self.pending.pop(key)

    def clear(self) -> None:
        """Drop every pending cohort (a new golden: they compared another model)."""
        self.pending.clear()


def cohort_width_ms(window_ms: float) -> int:
    """The cohort width for a window: a power of two ms at or below window / COHORTS_PER_WINDOW."""
    target = window_ms / COHORTS_PER_WINDOW
    return 1 if target < 2 else 2 ** math.floor(math.log2(target))


def groups(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(key, row indices) for each distinct key of an int array, keys ascending."""
    if keys.size == 0:
        return
    unique, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(unique.size + 1))
    for i, key in enumerate(unique.tolist()):
        yield int(key), order[bounds[i] : bounds[i + 1]]
