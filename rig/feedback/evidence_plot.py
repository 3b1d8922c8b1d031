"""The promoter's evidence as a PNG: per golden/challenger pair, the always-valid confidence sequence of
the mean loss gain d̄ (golden minus challenger) over n, the boundaries the decision rule compares it
to, and where decisions came.

A challenger is promoted once the lower bound is above `min_effect` (and Holm's test rejects), and
found worse once it is significantly below 0; so both lines are drawn. Decision records carry the
opposite sign (challenger minus golden): their markers are drawn at -estimate.

Drawn with matplotlib's object API on the Agg canvas, never pyplot: no display and no global figure
state, so a worker can draw in any thread. matplotlib is imported on the first drawing: importing it
took ~0.9 s of a worker's 2.5 s of imports, for a page few open.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rig.feedback.metadata import EvidencePoint
from rig.wire.records import Decision

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_MARKERS = {"promote": ("*", "tab:green"), "demote": ("v", "tab:red"), "keep": ("X", "tab:gray")}
"""Marker and colour of a decision, by action."""


def write_evidence_png(points: Sequence[EvidencePoint], decisions: Sequence[Decision], path: Path) -> Path:
    """Draw every pair's confidence sequence (one panel per golden/challenger pair, in the order the
    pairs first appear in `points`) with its decisions, and write it to `path` as a PNG.

    Args:
        points: Evidence points, oldest first (`MetadataStore.promoter_evidence`).
        decisions: Decisions; those about a drawn pair are marked on its panel.
        path: The PNG file to write (its folder must exist).

    Returns:
        `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = by_pair(points)
    figure = Figure(figsize=(8.0, 1.0 + 2.8 * max(len(pairs), 1)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    if not pairs:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no promoter evidence recorded yet", ha="center", va="center")
    for row, ((golden, challenger), series) in enumerate(pairs.items(), start=1):
        about = [d for d in decisions if (d.golden_version, d.challenger_version) == (golden, challenger)]
        _draw_pair(figure.add_subplot(len(pairs), 1, row), golden, challenger, series, about)
    figure.savefig(path, format="png")
    return path


def by_pair(points: Sequence[EvidencePoint]) -> dict[tuple[str, str], list[EvidencePoint]]:
    """The points of each (golden, challenger) pair, in their order, pairs in order of first appearance."""
    pairs: dict[tuple[str, str], list[EvidencePoint]] = {}
    for point in points:
        pairs.setdefault((point.golden_version, point.challenger_version), []).append(point)
    return pairs


def _draw_pair(
    axes: Axes, golden: str, challenger: str, series: list[EvidencePoint], decisions: list[Decision]
) -> None:
    n = [point.n for point in series]
    gain = [point.mean_gain for point in series]
    low = [math.nan if point.ci_low is None else point.ci_low for point in series]
    high = [math.nan if point.ci_high is None else point.ci_high for point in series]
    min_effect = series[-1].min_effect
    axes.fill_between(n, low, high, color="tab:blue", alpha=0.25, label="always-valid confidence sequence")
    axes.plot(n, gain, color="tab:blue", marker=".", label="mean gain (golden − challenger)")
    axes.axhline(0.0, color="black", linestyle=":", linewidth=1, label="0: worse below")
    axes.axhline(
        min_effect, color="tab:green", linestyle="--", linewidth=1, label="min effect: promote above"
    )
    for decision in decisions:
        marker, colour = _MARKERS.get(decision.action, _MARKERS["keep"])
        axes.scatter([decision.n], [-decision.estimate], marker=marker, color=colour, s=140, zorder=3)
        axes.annotate(
            decision.action, (decision.n, -decision.estimate), textcoords="offset points", xytext=(6, 6)
        )
    axes.set_ylim(*_value_range(series))
    last = series[-1]
    axes.set_title(
        f"{challenger} vs golden {golden}: n={last.n}, gain={last.mean_gain:.4g}, p={last.p_value:.3g}",
        fontsize=10,
    )
    axes.set_xlabel("matured paired outcomes n")
    axes.set_ylabel("loss gain")
    axes.legend(fontsize=7, loc="best")


def _value_range(series: list[EvidencePoint]) -> tuple[float, float]:
    """The y range: the estimates, 0, min_effect and the interval over the later half of the points
    (the first intervals are wide enough to hide everything else; they are clipped)."""
    later = series[len(series) // 2 :]
    bounds = [b for point in later for b in (point.ci_low, point.ci_high) if b is not None]
    values = [0.0, series[-1].min_effect, *(point.mean_gain for point in series), *bounds]
    low, high = min(values), max(values)
    pad = 0.1 * (high - low) or 0.01
    return low - pad, high + pad
