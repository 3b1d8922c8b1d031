"""The whole streaming path on the real broker, Redis and Feast, with two worker processes."""

from __future__ import annotations

import collections
import json
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from rig.cli.clients import produce_requests
from rig.routing.table import kill_experiment_event, set_golden_event, start_experiment_event
from rig.wire.codec import Codec
from rig.wire.records import DeadLetter, Decision, Prediction, Request
from sim.settings import WorldSettings
from sim.traffic import synthetic_requests
from tests.conftest import REPO
from tests.e2e.conftest import (
    Deployment,
    consume,
    deploy,
    eventually,
    offline_scores,
    route,
    worker_group_members,
    workers,
)

pytestmark = pytest.mark.e2e
AB_SHARE = 0.3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    deployed = deploy(
        tmp_path_factory.mktemp("e2e"),
        {"golden": "golden", "better": "better", "worse": "worse", "twin": "golden"},
        world=WorldSettings(seed=21, entities=5_000, days=4),
        missing_entity_policy="dlq",
    )
    v = deployed.versions
    route(
        deployed,
        set_golden_event(v["golden"], actor="test"),
        start_experiment_event("better", v["better"], "shadow", actor="test"),
        start_experiment_event("worse", v["worse"], "shadow", actor="test"),
        start_experiment_event("twin", v["twin"], "ab", actor="test", traffic_share=AB_SHARE),
    )
    return deployed


@pytest.fixture(scope="module")
def running(deployment: Deployment) -> Iterator[Deployment]:
    with workers(deployment, count=2) as processes:
        # Traffic starts once both workers share the partitions: a worker joining mid-stream makes
        # Faust redo the work since its last commit (at least once), and this test counts exactly.
        eventually(
            lambda: [len(m) > 0 for m in worker_group_members(deployment.settings)] == [True, True],
            timeout_s=180,
            what="both workers to hold partitions",
        )
        yield replace(deployment, processes=tuple(processes))


def test_ten_thousand_requests_give_exactly_ten_thousand_predictions(running: Deployment) -> None:
    settings, versions = running.settings, running.versions
    requests = list(synthetic_requests(running.world_settings, 10_000, seed=5))
    assert produce_requests(settings, requests) == 10_000

    predictions = consume(
        settings,
        settings.topic("predictions"),
        Prediction,
        10_000,
        timeout_s=240,
        processes=running.processes,
    )
    extra = consume(settings, settings.topic("predictions"), Prediction, 10_001, timeout_s=5)

    assert len(predictions) == 10_000 and len(extra) == 10_000, "each request answered exactly once"
    assert {p.request_id for p in predictions} == {r.request_id for r in requests}

    for p in predictions:
        assert p.golden.model_version == versions["golden"]
        shadows = {e.experiment: e for e in p.experiments if e.mode == "shadow"}
        assert set(shadows) == {"better", "worse"}, p
        assert all(0.0 <= e.score <= 1.0 for e in p.experiments)

    sample = predictions[:: len(predictions) // 200]
    expected = offline_scores(running, versions["golden"], [p.entity_id for p in sample])
    np.testing.assert_allclose([p.golden.score for p in sample], expected, atol=1e-6, rtol=0)

    answered_by: dict[str, set[str]] = collections.defaultdict(set)
    for p in predictions:
        answered_by[p.entity_id].add(p.answered_by)
    assert all(len(models) == 1 for models in answered_by.values()), "A/B assignment is sticky per entity"
    ab_share = sum(versions["twin"] in models for models in answered_by.values()) / len(answered_by)
    print(f"A/B share over {len(answered_by)} entities: {ab_share:.4f} (configured {AB_SHARE})")
    assert abs(ab_share - AB_SHARE) <= 0.02
    for p in predictions:
        expected_score = p.golden.score
        if p.answered_by == versions["twin"]:
            expected_score = next(e.score for e in p.experiments if e.experiment == "twin")
        assert p.score == expected_score


def test_bad_input_goes_to_the_dead_letter_topic_and_loses_no_valid_request(running: Deployment) -> None:
    from confluent_kafka import Producer

    settings = running.settings
    request_codec, decision_codec = Codec(Request), Codec(Decision)
    known = running.world.entity_ids[0]
    key = known.encode()  # one key: one partition, so bad and good messages interleave in order

    def valid() -> tuple[str, bytes]:
        request_id = f"ok-{uuid.uuid4().hex}"
        record = Request(request_id=request_id, entity_id=known, event_time=1, features={}, context={})
        return request_id, request_codec.encode(record)

    def request(request_id: str, entity: str, features: dict[str, float]) -> bytes:
        record = Request(request_id=request_id, entity_id=entity, event_time=1, features=features, context={})
        return request_codec.encode(record)

    decision = Decision(
        decision_id="d",
        decided_at=1,
        action="keep",
        mode="suggest",
        golden_version="g",
        challenger_version=None,
        metric="log_loss",
        n=1,
        estimate=0.0,
        ci_low=0.0,
        ci_high=0.0,
        p_value=None,
        e_value=None,
        reason="",
    )
    bad = {
        "malformed": b"\xff\xfenot avro at all",
        "wrong-schema": decision_codec.encode(decision),
        "nan": request("bad-nan", known, {"credit_utilization": math.nan}),
        "inf": request("bad-inf", known, {"txn_amount_mean_7d": math.inf}),
        "unknown-entity": request("bad-unknown", "ent-does-not-exist", {}),
        "oversized": request("bad-big", known, {f"x{i}": 1.0 for i in range(12_000)}),
    }
    good: list[str] = []
    producer = Producer({**settings.kafka_client_config(), "message.max.bytes": 1_000_000})
    for payload in bad.values():
        request_id, value = valid()
        good.append(request_id)
        producer.produce(settings.topic("requests"), key=key, value=value)
        producer.produce(settings.topic("requests"), key=key, value=payload)
    assert producer.flush(30) == 0

    # A plain JSON request from an outside client, kcat.
    json_id = f"ok-json-{uuid.uuid4().hex}"
    line = json.dumps({"request_id": json_id, "entity_id": known, "event_time": int(time.time() * 1000)})
    subprocess.run(
        ["kcat", "-P", "-b", settings.kafka_bootstrap, "-t", settings.topic("requests"), "-k", known],
        input=line.encode(),
        check=True,
        timeout=30,
    )
    good.append(json_id)

    answered = consume(
        settings,
        settings.topic("predictions"),
        Prediction,
        len(good),
        where=lambda p: p.request_id in good,
    )
    dead = consume(settings, settings.topic("dlq"), DeadLetter, len(bad), timeout_s=60)

    assert sorted(p.request_id for p in answered) == sorted(good)
    by_type = collections.Counter(letter.error_type for letter in dead)
    print("dead letters:", [(d.error_type, d.reason[:80]) for d in dead])
    assert len(dead) == len(bad)
    assert by_type == {
        "malformed": 1,
        "unknown_schema": 1,
        "invalid_value": 2,
        "unknown_entity": 1,
        "oversized": 1,
    }
    originals = {letter.original for letter in dead}
    assert set(bad.values()) == originals, "every dead letter carries the original bytes"
    assert all(letter.reason and letter.source_topic == settings.topic("requests") for letter in dead)


def test_a_routing_change_reaches_every_running_worker_within_seconds(running: Deployment) -> None:
    from rig.routing.control import read_routing

    settings = running.settings
    table = read_routing(settings)
    worse = table.experiment("worse")
    assert worse is not None, "the deployment runs the experiment"
    route(running, kill_experiment_event(worse, actor="test", reason="kill switch test"))
    time.sleep(3)  # "within seconds": the workers follow the control topic continuously

    requests = list(synthetic_requests(running.world_settings, 2_000, seed=77))
    ids = {r.request_id for r in requests}
    assert produce_requests(settings, requests) == 2_000
    predictions = consume(
        settings, settings.topic("predictions"), Prediction, 2_000, where=lambda p: p.request_id in ids
    )

    assert len(predictions) == 2_000
    members = worker_group_members(settings)
    assert len(members) == 2, "both worker processes share the requests topic's partitions"
    assert sorted(p for member in members for p in member) == list(range(settings.topic_partitions))
    assert all("worse" not in {e.experiment for e in p.experiments} for p in predictions)
    assert all("better" in {e.experiment for e in p.experiments} for p in predictions)


def test_batch_prediction_equals_online_prediction_for_the_same_entity_and_time(
    running: Deployment, tmp_path
) -> None:
    import pandas as pd

    from rig.models.batch import score_column
    from sim.deploy import settings_env

    settings, versions = running.settings, running.versions
    online = consume(settings, settings.topic("predictions"), Prediction, 300)
    entities = sorted({p.entity_id for p in online})[:100]
    online_golden = {p.entity_id: p.golden.score for p in online}
    # The online store holds each entity's latest snapshot: the one as of the world's end.
    table = pd.DataFrame({"entity_id": entities, "event_timestamp": pd.Timestamp(running.world.end)})
    table.to_parquet(tmp_path / "entities.parquet")

    subprocess.run(
        [
            sys.executable,
            "-m",
            "rig.cli.app",
            "batch",
            str(tmp_path / "entities.parquet"),
            str(tmp_path / "out.parquet"),
        ],
        env=settings_env(settings),
        check=True,
        timeout=300,
        cwd=REPO,
    )

    batch = pd.read_parquet(tmp_path / "out.parquet")
    assert list(batch["entity_id"]) == entities
    assert batch["entity_found"].all()
    np.testing.assert_allclose(
        batch[score_column(versions["golden"])].to_numpy(),
        [online_golden[e] for e in entities],
        atol=1e-6,
        rtol=0,
    )
