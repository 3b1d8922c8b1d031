"""Outcome joins on the real broker: every kind of outcome counted right, state survives a restart."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from rig.cli.clients import produce_requests
from rig.wire.codec import Codec
from rig.wire.records import JoinedOutcome, Outcome, Prediction, Request
from sim.deploy import start_worker
from sim.settings import WorldSettings
from tests.e2e.conftest import Deployment, consume, deploy_with_shadow, eventually, get_json

pytestmark = pytest.mark.e2e
RETENTION_S = 45
WEB_PORT = 16066


def requests_for(deployment: Deployment, ids: list[str]) -> list[Request]:
    entities = deployment.world.entity_ids
    return [
        Request(request_id=rid, entity_id=entities[i % len(entities)], event_time=1, features={}, context={})
        for i, rid in enumerate(ids)
    ]


def send_outcomes(deployment: Deployment, requests: list[Request], label: int = 1) -> None:
    codec = Codec(Outcome)
    producer = Producer(deployment.settings.kafka_producer_config())
    for r in requests:
        outcome = Outcome(request_id=r.request_id, entity_id=r.entity_id, label=label, event_time=2)
        producer.produce(
            deployment.settings.topic("outcomes"), key=r.entity_id.encode(), value=codec.encode(outcome)
        )
    assert producer.flush(30) == 0


def print_problems(*logs: Path) -> None:
    """Each worker log's warnings and errors: pytest shows them when the test fails."""
    for log in logs:
        lines = [
            line for line in log.read_text(errors="replace").splitlines() if "WARN" in line or "ERROR" in line
        ]
        print(f"----- {log.name}: {len(lines)} warnings/errors", *lines[-40:], sep="\n")


def join_counts() -> Counter[str]:
    return Counter(get_json(f"http://127.0.0.1:{WEB_PORT}/join/counts/"))


def test_outcomes_join_once_each_kind_is_counted_and_a_restart_loses_no_join_state(tmp_path) -> None:
    deployment = deploy_with_shadow(
        tmp_path, "better", WorldSettings(seed=31, entities=500, days=3), rounds=20
    )
    settings = deployment.settings
    # A stalled partition gets Faust's diagnosis in the worker log well within the waits below.
    env = {
        "RIG_JOIN_RETENTION_S": str(RETENTION_S),
        "RIG_JOIN_SWEEP_INTERVAL_S": "2",
        "RIG_STALL_ALERT_S": "30",
    }
    joined_topic = settings.topic("joined")
    requests = requests_for(deployment, [f"r-{uuid.uuid4().hex}" for _ in range(200)])

    first = start_worker(settings, settings.home / "join-1.log", log_level="INFO", env=env)
    try:
        assert produce_requests(settings, requests) == 200
        assert (
            len(consume(settings, settings.topic("predictions"), Prediction, 200, processes=[first])) == 200
        )
        predicted_at = time.monotonic()
        send_outcomes(deployment, requests[:100])
        rows = consume(settings, joined_topic, JoinedOutcome, 200, processes=[first])
        assert len(rows) == 200, "100 outcomes x (golden + one shadow)"
    finally:
        first.terminate()
        first.wait(timeout=60)
        print_problems(settings.home / "join-1.log")

    # While no worker runs: outcomes for requests predicted before the restart, on time, and new
    # requests, after a downtime longer than retention. The second worker starts over this backlog,
    # must process all of it, and must not expire the old predictions on the time of the new ones.
    send_outcomes(deployment, requests[100:150])
    time.sleep(max(0.0, predicted_at + RETENTION_S + 5 - time.monotonic()))
    backlog = requests_for(deployment, [f"backlog-{uuid.uuid4().hex}" for _ in range(100)])
    assert produce_requests(settings, backlog) == 100
    second = start_worker(
        settings, settings.home / "join-2.log", log_level="INFO", web_port=WEB_PORT, env=env
    )
    try:
        rows = consume(settings, joined_topic, JoinedOutcome, 300, timeout_s=180, processes=[second])
        assert len(rows) == 300, "outcomes sent during the restart joined with predictions made before it"
        answered = consume(
            settings,
            settings.topic("predictions"),
            Prediction,
            100,
            where=lambda p: p.request_id.startswith("backlog-"),
            processes=[second],
        )
        assert {p.request_id for p in answered} == {r.request_id for r in backlog}, "backlog answered"

        send_outcomes(deployment, requests_for(deployment, [f"unknown-{i}" for i in range(5)]))  # orphans
        early = requests_for(deployment, [f"early-{uuid.uuid4().hex}" for _ in range(20)])
        send_outcomes(deployment, early)  # outcomes before their requests exist
        time.sleep(2)
        assert produce_requests(settings, early) == 20
        eventually(lambda: join_counts()["out_of_order"] >= 20, 60, "the early outcomes to join")
        send_outcomes(deployment, early[:10])  # duplicates

        eventually(
            lambda: join_counts()["expired_unjoined"] >= 150,
            RETENTION_S + 60,
            "unjoined predictions to expire",
        )
        send_outcomes(deployment, backlog[:10])  # late: beyond retention
        eventually(
            lambda: join_counts()["late"] >= 10 and join_counts()["orphans"] >= 5,
            60,
            "late and orphan counts",
        )
        rows = consume(settings, joined_topic, JoinedOutcome, 341, timeout_s=15)
        counts = join_counts()
    finally:
        second.terminate()
        second.wait(timeout=60)
        print_problems(settings.home / "join-2.log")

    print("join counts after the restart:", dict(counts))
    per_request = Counter(row.request_id for row in rows)
    assert len(rows) == 340 and set(per_request.values()) == {2}, "170 requests joined, each exactly once"
    assert {row.role for row in rows} == {"golden", "shadow"}
    assert counts["joined"] == 70, counts  # 50 joined after the restart + 20 that arrived out of order
    assert counts["out_of_order"] == 20, counts
    # At least once: an outcome read again after a redelivery also counts as a duplicate.
    assert counts["duplicate_outcomes"] >= 10, counts
    assert counts["orphans"] == 5, counts
    assert counts["expired_unjoined"] == 150, counts  # 50 before the restart, the 100 of the backlog
    assert counts["late"] == 10, counts
