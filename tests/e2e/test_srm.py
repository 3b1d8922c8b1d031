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

from rig.feedback.metadata import MetadataStore
from rig.routing.control import read_routing
from rig.routing.table import set_golden_event, start_experiment_event
from rig.wire.records import Decision
from sim.deploy import settings_env
from sim.settings import WorldSettings
from sim.world import make_outcomes, make_requests
from tests.e2e.conftest import (
    Deployment,
    consume,
    deploy,
    predictions_of,
    route,
    send_outcomes,
    send_requests,
    wait_joined,
    workers,
)

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
    predictions = predictions_of(deployment, send_requests(settings, frame))
    answered = {p.request_id: p for p in predictions}
    outcomes = make_outcomes(world, frame, seed=next(seeds), delay_median_s=1, positive_delay_factor=3)
    dropped = outcomes.apply(
        lambda row: answered[row.request_id].answered_by == challenger and lost(row.entity_id), axis=1
    )
    kept = outcomes[~dropped]
    send_outcomes(settings, kept)
    kept_ids = set(kept["request_id"])
    wait_joined(deployment, kept_ids, sum(1 + len(answered[request].experiments) for request in kept_ids))
    return sum(p.answered_by == challenger for p in predictions), int(dropped.sum())


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
    with workers(deployment, count=1, env=env) as processes:
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
