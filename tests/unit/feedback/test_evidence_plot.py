"""The promoter's evidence as a PNG: a valid image with a panel per golden/challenger pair, also when
nothing was recorded yet."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.image import imread

from rig.feedback.evidence_plot import write_evidence_png
from rig.feedback.metadata import EvidencePoint
from rig.feedback.sequential import Evidence, new_decision

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def series(golden: str, challenger: str, gain: float) -> list[EvidencePoint]:
    """A narrowing confidence sequence around `gain`, unbounded at first."""
    points = []
    for n in range(50, 2_050, 100):
        radius = 0.4 / math.sqrt(n)
        low, high = (None, None) if n < 100 else (gain - radius, gain + radius)
        points.append(EvidencePoint(n * 10, golden, challenger, n, gain, low, high, 0.5, 0.002))
    return points


def test_the_png_has_a_panel_per_pair_and_marks_the_decisions(tmp_path: Path) -> None:
    one = series("g.1", "c.2", 0.02)
    two = [*one, *series("g.1", "c.3", -0.01)]
    promote = new_decision(
        20_000,
        "promote",
        "auto",
        ("g.1", "c.2"),
        "better",
        "log_loss",
        Evidence(1_950, -0.02, -0.03, -0.01, 40.0),
    )

    written = write_evidence_png(two, [promote], tmp_path / "two.png")
    single = write_evidence_png(one, [promote], tmp_path / "one.png")

    assert written == tmp_path / "two.png"
    for path in (written, single):
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 10_000
    assert imread(written).shape[0] > imread(single).shape[0], "a panel per pair"
    unmarked = write_evidence_png(one, [], tmp_path / "unmarked.png")
    assert imread(unmarked).shape == imread(single).shape
    assert (imread(unmarked) != imread(single)).any(), "the decision is drawn"


def test_without_evidence_the_png_still_is_an_image(tmp_path: Path) -> None:
    path = write_evidence_png([], [], tmp_path / "empty.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(path).shape
    assert height > 0 and width > 0
