"""Exactly once: a worker killed mid-transaction hides newer outputs from read_committed readers only
until the broker aborts its transaction, which `TransactionalSink`'s timeout bounds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.plane.health import Health
from streams.plane.ledger import OffsetLedger
from streams.plane.sink import Outgoing
from streams.plane.transactions import TransactionalSink
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

TIMEOUT_S = 2.0
CLEANUP_S = 10.0
"""The broker's `transaction.abort.timed.out.transaction.cleanup.interval.ms` (Kafka's default, which
ops/kafka/up keeps): how often it looks for transactions past their timeout."""


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    name = f"test.transactions.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result()
    yield name
    admin.delete_topics([name])[name].result()


def read_committed(kafka_bootstrap: str, topic: str, until: bytes, bound_s: float) -> list[bytes]:
    """Values a read_committed reader sees from the start of the partition, until `until` or the bound."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[bytes] = []
    deadline = time.monotonic() + bound_s
    try:
        while until not in seen and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                seen.append(cast(bytes, message.value()))  # produced with a value
    finally:
        consumer.close()
    return seen


def test_a_killed_workers_open_transaction_hides_newer_outputs_only_until_its_timeout(
    kafka_bootstrap: str, topic: str
) -> None:
    killed = TransactionalSink(
        {"bootstrap.servers": kafka_bootstrap}, "test", OffsetLedger(), Health(), lambda: None, TIMEOUT_S
    ).start()
    # The sink's producer as a worker killed mid-batch leaves it: a transaction begun and written,
    # never ended, and nobody left to abort it.
    producer = killed._producer
    producer.begin_transaction()
    producer.produce(topic, b"never committed", partition=0)
    assert producer.flush(30) == 0
    opened = time.monotonic()

    other = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"test-{uuid.uuid4().hex}"})
    other.init_transactions(30)
    other.begin_transaction()
    other.produce(topic, b"after", partition=0)
    other.commit_transaction(30)

    bound_s = TIMEOUT_S + CLEANUP_S + 10
    seen = read_committed(kafka_bootstrap, topic, b"after", bound_s)
    visible_after_s = time.monotonic() - opened
    print(f"the newer output became visible {visible_after_s:.1f} s after the open transaction began")
    assert seen == [b"after"], f"within {bound_s} s a read_committed reader saw {seen}"
    # Without the sink's timeout (librdkafka's default, 60 s) it would have stayed hidden past the bound.
    assert visible_after_s >= TIMEOUT_S


def test_a_transactional_call_timed_out_while_the_cluster_answers_is_a_stuck_producer(
    kafka_bootstrap: str, topic: str
) -> None:
    """Told apart from Kafka being away: a stuck producer (confluentinc/librdkafka#5456, #5511) is
    not waited for, or its stalled worker would never exit for a restart."""

    def sink(bootstrap: str) -> TransactionalSink:
        return TransactionalSink(
            {"bootstrap.servers": bootstrap}, "test", OffsetLedger(), Health(), lambda: None, TIMEOUT_S
        )

    timed_out = KafkaError(KafkaError._TIMED_OUT)
    batch = [Outgoing(topic, None, b"a prediction")]
    assert sink(kafka_bootstrap)._stuck(timed_out, batch), "the cluster answers: the producer is stuck"
    assert not sink(kafka_bootstrap)._stuck(KafkaError(KafkaError._MSG_TIMED_OUT), batch), (
        "only a transactional call's own timeout"
    )
    assert not sink(f"127.0.0.1:{free_port()}")._stuck(timed_out, batch), "nobody answers: Kafka is away"
