"""BatchSource: what prepares newly assigned partitions is waited for while a dependency it needs is away."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from rig.config import KafkaConfig
from rig.errors import MetadataUnavailable
from streams.plane import health as plane_health
from streams.plane.health import Health
from streams.plane.ledger import OffsetLedger
from streams.plane.ledger import TopicPartition as TP
from streams.plane.source import DEPENDENCY, BatchSource, SourceSettings, SourceStopped
from tests.support.ports import free_port

JOINED: TP = ("rig.joined", 0)


def source_with(health: Health) -> BatchSource:
    """A source that is not started: `_when_available` is called as its assignment callback would."""
    settings = SourceSettings(group_id="g", topics=(JOINED[0],))
    return BatchSource({}, settings, OffsetLedger(), health, lambda batch: None)


def test_partitions_start_where_a_saved_state_says_once_the_store_holding_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plane_health, "FIRST_RETRY_S", 0.0)
    health = Health(needs_partitions=False)
    calls: list[bool] = []

    def start_offsets(partitions: set[TP]) -> dict[TP, int]:
        calls.append(health.readiness().ready)
        if len(calls) < 3:
            raise MetadataUnavailable("metadata store refused")
        return {JOINED: 200}

    assert source_with(health)._when_available(start_offsets, {JOINED}) == {JOINED: 200}
    assert calls == [True, False, False], "readiness says what is waited for meanwhile"
    assert health.readiness().ready and not health.waits_for(MetadataUnavailable.dependency)


def test_a_source_stopped_while_waiting_reads_nothing_and_leaves_no_wait_behind() -> None:
    health = Health(needs_partitions=False)

    def start_offsets(partitions: set[TP]) -> dict[TP, int]:
        raise MetadataUnavailable("metadata store refused")

    waiting = source_with(health)
    waiting._stop.set()

    with pytest.raises(SourceStopped, match="the metadata store"):
        waiting._when_available(start_offsets, {JOINED})
    assert not health.waits_for(MetadataUnavailable.dependency)


def test_a_broker_that_refuses_connections_is_a_wait_readiness_names() -> None:
    """librdkafka reports brokers down only to an error callback: without one, a broker away for longer
    than `stall_s` looked like a stall with nothing to wait for, and the worker exited."""
    health = Health(needs_partitions=False)
    settings = SourceSettings(group_id="g", topics=(JOINED[0],))
    away: KafkaConfig = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}
    source = BatchSource(away, settings, OffsetLedger(), health, lambda batch: None).start()
    try:
        deadline = time.monotonic() + 10
        while not health.waits_for(DEPENDENCY) and time.monotonic() < deadline:
            time.sleep(0.05)
        readiness = health.readiness()
    finally:
        source.stop(timeout_s=10)

    assert not readiness.ready and any(DEPENDENCY in reason for reason in readiness.reasons)
    assert source.crashed is None, "a refused connection is waited for, never the end of the source"


def test_lost_partitions_are_let_go_as_unfinished_even_without_open_batches() -> None:
    """Another member may already hold a lost partition and have written its state (the join's
    changelog): a store kept for its return would match the end read now, and miss what it wrote."""
    let_go: list[tuple[set[TP], bool]] = []
    settings = SourceSettings(group_id="g", topics=(JOINED[0],))
    source = BatchSource(
        {},
        settings,
        OffsetLedger(),
        Health(needs_partitions=False),
        lambda batch: None,
        on_revoked=lambda tps, finished: let_go.append((tps, finished)),
    )

    source._on_lost(Consumer({"group.id": "g"}), [TopicPartition(*JOINED)])

    assert let_go == [({JOINED}, False)]
