"""The demo's story lines: evidence in the gain's sign whatever its source, and the world's outcomes of
the requests it sent."""

from __future__ import annotations

from rig.feedback.metadata import EvidencePoint
from rig.wire.records import Decision, DecisionCheck
from sim.demo import decision_line, decision_text, gain_text, point_text, world_outcomes
from sim.settings import WorldSettings
from sim.traffic import synthetic_requests


def promotion(estimate: float, ci_low: float, ci_high: float) -> Decision:
    return Decision(
        decision_id="d-1",
        decided_at=1_000,
        action="promote",
        mode="auto",
        golden_version="risk.1",
        challenger_version="risk.2",
        metric="log_loss",
        n=6_596,
        estimate=estimate,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=3.1e-15,
        reason="challenger better by more than the minimum effect",
        checks=[
            DecisionCheck(name="primary", state="pass", n=6_596),
            DecisionCheck(name="calibration", state="pass", n=6_596),
        ],
    )


def test_gain_text_shows_n_the_signed_gain_its_interval_and_p() -> None:
    assert gain_text(6_596, 0.0296, 0.0185, 0.0407, 3.1e-15) == (
        "n 6,596, gain +0.0296 [+0.0185, +0.0407], p 3.1e-15"
    )


def test_gain_text_shows_an_unbounded_interval_and_an_untested_p() -> None:
    assert gain_text(7, -0.1872, None, None, None) == "n 7, gain -0.1872 [-inf, +inf], p –"


def test_a_decision_is_shown_as_a_gain_its_interval_negated_and_swapped() -> None:
    """A Decision's estimate is challenger − golden loss: a better challenger has a negative one."""
    assert decision_text(promotion(-0.0296, -0.0407, -0.0185)) == point_text(
        EvidencePoint(
            at_ms=1_000,
            golden_version="risk.1",
            challenger_version="risk.2",
            n=6_596,
            mean_gain=0.0296,
            ci_low=0.0185,
            ci_high=0.0407,
            p_value=3.1e-15,
            min_effect=0.002,
        )
    )


def test_a_decision_line_names_the_challenger_and_every_check() -> None:
    line = decision_line(promotion(-0.0296, -0.0407, -0.0185), {"risk.2": "better"})
    assert line == (
        "promote better risk.2 over risk.1: n 6,596, gain +0.0296 [+0.0185, +0.0407], p 3.1e-15; "
        "checks primary pass · calibration pass"
    )


def test_every_request_sent_gets_one_outcome_known_after_it_in_time_order() -> None:
    world_settings = WorldSettings(seed=5, entities=50, days=4)
    requests = list(synthetic_requests(world_settings, 500, seed=3))
    outcomes = world_outcomes(world_settings.make(), requests, seed=4)
    asked = {r.request_id: r for r in requests}
    assert sorted(o.request_id for o in outcomes) == sorted(asked)
    assert all(o.entity_id == asked[o.request_id].entity_id for o in outcomes)
    assert all(o.event_time >= asked[o.request_id].event_time for o in outcomes)
    assert [o.event_time for o in outcomes] == sorted(o.event_time for o in outcomes)
    assert {o.label for o in outcomes} == {0, 1}
