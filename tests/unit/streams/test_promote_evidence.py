"""The promoter records its evidence history: each time it records its status, one point per challenger
that agrees with the status (`rig status`) and carries the configured minimum effect."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rig.config import RigSettings
from rig.feedback.metadata import MetadataStore
from streams.plane.source import SourceBatch
from streams.promote import Promotion
from tests.unit.streams.test_promote import KeptSink, golden_and_shadow, joined_messages, pair, runtime_of


def test_each_status_record_adds_a_point_per_challenger_that_agrees_with_the_status(
    settings: RigSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.promote.STATUS_S", 0.0)  # a status (and its evidence) after every batch
    table = golden_and_shadow()
    settings = settings.model_copy(update={"promoter_label_window_s": 0.001, "promoter_min_effect": 0.003})
    store = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    store.create_schema()
    promotion = Promotion(settings, runtime_of(control_routing=table), store)
    rows = [row for i in range(300) for row in pair(f"r{i}", i % 2, 10 * i)]
    messages = joined_messages(settings, rows)

    for n in range(3):
        asyncio.run(promotion.handle(SourceBatch(n, messages[200 * n : 200 * (n + 1)]), KeptSink()))

    points = store.promoter_evidence()
    assert len(points) == 3 and {(p.golden_version, p.challenger_version) for p in points} == {
        ("risk.1", "risk.2")
    }
    assert [p.n for p in points] == sorted(p.n for p in points) and points[0].n < points[-1].n
    assert {p.min_effect for p in points} == {0.003}
    status = store.promoter_status()
    assert status is not None
    standing = status[1]["challengers"]["risk.2"]  # one challenger: the same level as the points
    last = points[-1]
    assert (last.at_ms, last.n) == (status[0], standing["n"])
    assert last.mean_gain == pytest.approx(standing["mean_gain"])
    assert (last.ci_low, last.ci_high) == (
        pytest.approx(standing["ci_low"]),
        pytest.approx(standing["ci_high"]),
    )
    # golden minus challenger: on labels half 0, half 1, the golden's 0.3 loses less than the challenger's 0.2
    assert last.mean_gain == pytest.approx(-0.136, abs=0.002)
    store.close()
