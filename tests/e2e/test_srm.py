"""The sample ratio test on the real stack: in an A/B experiment whose outcomes never come back for
half of the challenger arm's entities, the promoter holds the experiment with a sample ratio mismatch
decision record (on `rig.decisions` and in the metadata store), promotes nothing, and `rig status`
shows where every test of the challenger stands."""

from __future__ import annotations

import itertools
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Producer

from rig.feedback.metadata import MetadataStore
from rig.routing.control import read_routing
from rig.routing.table import set_golden_event, start_experiment_event
from rig.wire.codec import Codec
from rig.wire.records import Decision, JoinedOutcome, Outcome, Prediction, Request
from sim.deploy import settings_env
from sim.settings import WorldSettings
from sim.world import make_outcomes, make_requests
from tests.e2e.conftest import Deployment, consume, deploy, route, workers

pytestmark = pytest.mark.e2e
ROUND = 1_000
ROUNDS = 6
SHARE = 0.5
HELD = "held: sample ratio mismatch"
seeds = itertools.count(300)


def lost(entity_id: str) -> bool:
    """Half of the entities, by a hash of their id: their outcomes are lost when the challenger answered."""
    return zlib.crc32(entity_id.encode()) % 2 == 0


def one_round(deployment: Deployment, challenger: str) -> tuple[int, int]:
    """ROUND requests; their outcomes (positives known 3x later), except those of requests the
    challenger answered for a `lost` entity; waits until the join published the rows of those sent.

    Returns:
        (requests the challenger answered, outcomes dropped).
    """
    settings, world = deployment.settings, deployment.world
    frame = make_requests(world, ROUND, seed=next(seeds), rate_per_s=1_000)
    producer = Producer(settings.kafka_producer_config())
    request_codec, outcome_codec = Codec(Request), Codec(Outcome)
    for row in frame.itertuples():
        request = Request(
            request_id=row.request_id,
            entity_id=row.entity_id,
            event_time=int(row.event_time.timestamp() * 1000),
        )
        producer.produce(
            settings.topic("requests"), key=row.entity_id.encode(), value=request_codec.encode(request)
        )
    assert producer.flush(30) == 0
    ids = set(frame["request_id"])
    predictions = consume(
        settings,
        settings.topic("predictions"),
        Prediction,
        ROUND,
        where=lambda p: p.request_id in ids,
        processes=deployment.processes,
        timeout_s=600,
    )
    assert len(predictions) == ROUND
    answered = {p.request_id: p for p in predictions}
    outcomes = make_outcomes(world, frame, seed=next(seeds), delay_median_s=1, positive_delay_factor=3)
    dropped, kept = 0, set()
    for row in outcomes.itertuples():
        prediction = answered[row.request_id]
        if prediction.answered_by == challenger and lost(row.entity_id):
            dropped += 1
            continue
        kept.add(row.request_id)
        outcome = Outcome(
            request_id=row.request_id,
            entity_id=row.entity_id,
            label=int(row.label),
            event_time=int(row.event_time.timestamp() * 1000),
        )
        producer.produce(
            settings.topic("outcomes"), key=row.entity_id.encode(), value=outcome_codec.encode(outcome)
        )
    assert producer.flush(30) == 0
    scored = sum(1 + len(answered[request].experiments) for request in kept)
    joined = consume(
        settings,
        settings.topic("joined"),
        JoinedOutcome,
        scored,
        where=lambda row: row.request_id in kept,
        processes=deployment.processes,
        timeout_s=600,
    )
    assert len(joined) >= scored, f"{len(joined)} of {scored} (request, model) pairs joined"
    return sum(p.answered_by == challenger for p in predictions), dropped


def held_decisions(deployment: Deployment, timeout_s: float) -> list[Decision]:
    settings = deployment.settings
    return consume(
        settings,
        settings.topic("decisions"),
        Decision,
        1,
        timeout_s=timeout_s,
        where=lambda d: d.reason.startswith(HELD),
        processes=deployment.processes,
    )


def test_an_ab_experiment_losing_one_arms_outcomes_is_held_with_a_sample_ratio_decision(
    tmp_path: Path,
) -> None:
    deployment = deploy(
        tmp_path,
        {"golden": "golden", "better": "better"},
        rounds=60,
        world=WorldSettings(seed=43, entities=2_000, days=4),
    )
    v = deployment.versions
    route(
        deployment,
        set_golden_event(v["golden"], actor="test"),
        start_experiment_event("split", v["better"], "ab", actor="test", traffic_share=SHARE),
    )
    env = {"RIG_PROMOTER_MODE": "auto", "RIG_PROMOTER_MIN_SAMPLES": "300"}
    with workers(deployment, count=1, **env) as processes:
        running = replace(deployment, processes=tuple(processes))
        answered_by_challenger, dropped, held = 0, 0, []
        for _ in range(ROUNDS):
            by_challenger, lost_now = one_round(running, v["better"])
            answered_by_challenger, dropped = answered_by_challenger + by_challenger, dropped + lost_now
            held = held_decisions(running, timeout_s=15)
            if held:
                break
        assert answered_by_challenger > 0 and dropped > 0, (
            "the A/B arm answered, and some of its outcomes were lost"
        )
        assert held, f"no sample ratio decision after {ROUNDS} rounds"
        (decision,) = held
        print("sample ratio decision:", decision)
        assert decision.action == "keep" and decision.mode == "auto"
        assert (decision.golden_version, decision.challenger_version) == (v["golden"], v["better"])
        checks = {check.name: check for check in decision.checks}
        srm = checks["srm"]
        assert srm.state == "fail" and srm.p_value is not None and srm.p_value <= 0.05
        assert srm.margin == SHARE and srm.estimate is not None and srm.ci_high is not None
        assert srm.estimate < SHARE and srm.ci_high < SHARE, "the arm's share of entities came back short"
        assert {"primary", "latency", "failed_batches", "calibration"} <= set(checks)

        # held: nothing is promoted and the routing stays as it was
        assert read_routing(running.settings).golden == v["golden"]
        decisions = consume(
            running.settings, running.settings.topic("decisions"), Decision, 10_000, timeout_s=3
        )
        assert not [d for d in decisions if d.action == "promote"]
        assert len([d for d in decisions if d.reason.startswith(HELD)]) == 1, "the hold is published once"

        # rig status: the tests of the challenger, the split, the hold
        status = subprocess.run(
            [str(Path(sys.executable).with_name("rig")), "status", "--limit", "5"],
            env=settings_env(running.settings),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        print(status)
        assert (
            f"challenger {v['better']}:" in status and "A/B split:" in status and "'mismatch': True" in status
        )
        srm_lines = [line for line in status.splitlines() if line.strip().startswith("srm")]
        assert srm_lines and all(" fail " in line for line in srm_lines)
        assert HELD in status

    store = MetadataStore(deployment.settings.resolved_metadata_url)
    recorded = [d for d in store.decisions(1_000) if d.reason.startswith(HELD)]
    assert [d.decision_id for d in recorded] == [decision.decision_id]
    assert recorded[0].checks == decision.checks
    assert store.delay_histograms(), "label delays are recorded per label for the next promoter"
