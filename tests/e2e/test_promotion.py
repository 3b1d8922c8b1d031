"""The promoter on the real broker: a truly better challenger is promoted automatically, the
worker switches to it and the old golden keeps scoring as a shadow, and under drift a decaying golden
is demoted."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime

import pandas as pd
import pytest

from rig.feedback.metadata import MetadataStore
from rig.feedback.promotion import PREVIOUS_GOLDEN_EXPERIMENT
from rig.routing.control import read_routing
from rig.routing.table import set_golden_event, start_experiment_event
from rig.wire.records import Decision, Prediction
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
MIN_SAMPLES = 800
"""Also sizes the new golden's reference window (5 × MIN_SAMPLES = 4,000 outcomes): the reference mean's
error never shrinks, so it bounds the demotion's power. The drift here raises the golden's log loss by
~0.09–0.11; with a 1,500-outcome window (MIN_SAMPLES 300) a monitor simulation (normal approximation of
the window and the rounds) missed it within 10 drifted rounds in 4–20 % of runs, with 4,000 and 20 rounds
in under 0.1 %. The promotion needs ~12,000 paired outcomes, far above either minimum."""
UNDRIFTED_ROUNDS = 5
"""Rounds after the promotion before the drift: the 4,000-outcome reference fills with undrifted cohorts
(a fold may overshoot it by a round) before any drifted outcome comes."""
DRIFT_ROUNDS = 20
seeds = itertools.count(100)


def one_round(deployment: Deployment, drift_at: datetime | None = None) -> list[Prediction]:
    """Send ROUND requests, wait for their predictions, send their true outcomes, and wait until the
    join published their joined rows (the feedback loop keeps up with the rounds)."""
    settings, world = deployment.settings, deployment.world
    frame = make_requests(world, ROUND, seed=next(seeds), rate_per_s=1_000)
    ids = send_requests(settings, frame)
    predictions = predictions_of(deployment, ids)
    outcomes = make_outcomes(world, frame, seed=next(seeds), delay_median_s=1, drift_at=drift_at)
    send_outcomes(settings, outcomes)
    wait_joined(deployment, ids, sum(1 + len(p.experiments) for p in predictions))
    return predictions


def decisions(deployment: Deployment) -> list[Decision]:
    settings = deployment.settings
    return consume(settings, settings.topic("decisions"), Decision, 10_000, timeout_s=3)


def test_better_challenger_is_promoted_and_a_drifting_golden_is_demoted(tmp_path) -> None:
    deployment = deploy(
        tmp_path,
        {"golden": "golden", "better": "better", "worse": "worse"},
        rounds=60,
        world=WorldSettings(seed=41, entities=2_000, days=4),
    )
    v = deployment.versions
    route(
        deployment,
        set_golden_event(v["golden"], actor="test"),
        start_experiment_event("better", v["better"], "shadow", actor="test"),
        start_experiment_event("worse", v["worse"], "shadow", actor="test"),
    )
    env = {"RIG_PROMOTER_MODE": "auto", "RIG_PROMOTER_MIN_SAMPLES": str(MIN_SAMPLES)}
    # One worker: that routing changes reach every worker is proven with two workers by
    # test_predict_pipeline's kill switch; here a second worker only adds rebalances.
    with workers(deployment, count=1, env=env) as processes:
        running = replace(deployment, processes=tuple(processes))
        # ~12,000-12,600 paired outcomes were needed in trial runs: the calibration guardrail's interval is
        # the last check to pass (primary p ~3e-9 by then). Rounds stop at the promotion; this allows ~2.5×.
        for _ in range(30):
            one_round(running)
            if read_routing(running.settings).golden == v["better"]:
                break
        routing = read_routing(running.settings)
        assert routing.golden == v["better"], f"not promoted; decisions: {decisions(running)}"
        promoted = [d for d in decisions(running) if d.action == "promote"]
        assert [(d.golden_version, d.challenger_version) for d in promoted] == [(v["golden"], v["better"])]
        evidence = promoted[0]
        assert evidence.p_value is not None
        assert evidence.n >= MIN_SAMPLES and evidence.ci_high < 0 and evidence.p_value <= 0.05
        print("promotion evidence:", evidence)

        # Every worker now answers with the new golden and keeps the old one scoring as a shadow.
        after = one_round(running)
        assert all(p.golden.model_version == v["better"] for p in after)
        for p in after:
            shadows = {e.experiment: e.model_version for e in p.experiments}
            assert shadows[PREVIOUS_GOLDEN_EXPERIMENT] == v["golden"] and "worse" in shadows

        # The new golden's reference window fills with undrifted outcomes, then the world drifts.
        for _ in range(UNDRIFTED_ROUNDS - 1):
            one_round(running)
        drift = pd.Timestamp("2000-01-01", tz="UTC").to_pydatetime()
        for _ in range(DRIFT_ROUNDS):
            one_round(running, drift_at=drift)
            if read_routing(running.settings).golden != v["better"]:
                break
        demoted = [d for d in decisions(running) if d.action == "demote"]
        assert demoted, f"no demotion; decisions: {decisions(running)}"
        print("demotion evidence:", demoted[0])
        assert demoted[0].golden_version == v["better"]
        assert read_routing(running.settings).golden == v["golden"], "rolled back to the previous golden"
        assert not [
            d for d in decisions(running) if d.challenger_version == v["worse"] and d.action == "promote"
        ]

    # The metadata store recorded the decisions with their evidence, rolling model quality and label delays.
    store = MetadataStore(deployment.settings.resolved_metadata_url)
    recorded = {(d.action, d.golden_version) for d in store.decisions(1_000)}
    assert {("promote", v["golden"]), ("demote", v["better"])} <= recorded
    metrics = store.model_metrics(v["better"])
    assert (
        metrics
        and sum(m.n for m in metrics) > MIN_SAMPLES
        and all(m.mean_loss is not None and m.mean_loss > 0 for m in metrics)
    )
    assert store.label_delays() and all(d.n > 0 for d in store.label_delays())
