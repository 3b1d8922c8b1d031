"""The join restores a partition's state from a changelog written in Kafka transactions (exactly-once
on): committed records only, and the restore ends although commit markers, never handed to a reader,
close the partition (or a killed worker's transaction is still open)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import msgspec
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from rig.config import RigSettings
from rig.feedback.join import Entry
from streams.join import Join

pytestmark = pytest.mark.integration

RESTORE_BOUND_S = 30


def entry(at_ms: int) -> Entry:
    return {"state": "outcome_waiting", "at_ms": at_ms, "prediction": None, "outcome": [1, at_ms]}


@pytest.fixture
def join(settings: RigSettings, kafka_bootstrap: str) -> Iterator[Join]:
    join = Join(settings.model_copy(update={"topic_partitions": 1, "kafka_bootstrap": kafka_bootstrap}))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(join.changelog, 1, 1)])[join.changelog].result()
    yield join
    for state in join.held.values():
        state.store.close()


def transaction(producer: Producer, topic: str, records: dict[str, Entry | None], commit: bool) -> None:
    producer.begin_transaction()
    for request_id, value in records.items():
        body = None if value is None else msgspec.msgpack.encode(value)
        producer.produce(topic, body, request_id.encode(), 0)
    if commit:
        producer.commit_transaction(30)
    else:
        assert producer.flush(30) == 0  # written, never committed: a worker killed mid-transaction


def restore(join: Join) -> None:
    worker = threading.Thread(target=join.assigned, args=({(join.topics["prediction"], 0)},), daemon=True)
    worker.start()
    worker.join(RESTORE_BOUND_S)
    assert not worker.is_alive(), f"the restore did not end within {RESTORE_BOUND_S} s"


@pytest.mark.parametrize("killed_mid_transaction", [False, True])
def test_a_transactional_changelog_is_restored_to_its_committed_records(
    join: Join, kafka_bootstrap: str, killed_mid_transaction: bool
) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": join.changelog})
    producer.init_transactions(30)
    transaction(producer, join.changelog, {"r-1": entry(1), "r-2": entry(2)}, commit=True)
    transaction(producer, join.changelog, {"r-1": None, "r-3": entry(3)}, commit=True)
    if killed_mid_transaction:
        transaction(producer, join.changelog, {"r-2": None, "r-4": entry(4)}, commit=False)

    restore(join)

    store = join.held[0].store
    assert store.get_many(["r-1", "r-2", "r-3", "r-4"]) == [None, entry(2), entry(3), None]
