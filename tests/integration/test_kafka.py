"""Round trips through the real Kafka broker started by ops/kafka/up."""

from __future__ import annotations

import time
import uuid
from typing import cast

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from rig.config import TOPIC_NAMES, RigSettings
from rig.routing.control import forget_goldens, publish_control, read_routing
from rig.routing.table import set_golden_event
from rig.wire.topics import MisconfiguredTopic, ensure_topics

pytestmark = pytest.mark.integration


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[tuple[bytes, bytes]]:
    """Read `expected` messages from the start of `topic` (or whatever came before the timeout)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(received) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            # Produced with a key and a value: neither is None.
            received.append((cast(bytes, message.key()), cast(bytes, message.value())))
    finally:
        consumer.close()
    return received


def test_ensure_topics_creates_every_topic_once_with_compacted_control_and_changelog_topics(
    kafka_bootstrap: str, settings: RigSettings
) -> None:
    created = ensure_topics(settings)
    assert sorted(created) == sorted(settings.topic(name) for name in TOPIC_NAMES)
    assert ensure_topics(settings) == []

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topic("control"))
    config = admin.describe_configs([resource])[resource].result()
    assert config["cleanup.policy"].value == "compact"
    changelog = ConfigResource(ConfigResource.Type.TOPIC, settings.topic("join-changelog"))
    config = admin.describe_configs([changelog])[changelog].result()
    assert (config["cleanup.policy"].value, config["segment.ms"].value) == ("compact", str(3600 * 1000))
    partitions = admin.list_topics(settings.topic("requests"), timeout=10).topics[settings.topic("requests")]
    assert len(partitions.partitions) == settings.topic_partitions


def create_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    """Create `topic` with the broker's default configuration, and wait until metadata shows it."""
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()
    deadline = time.monotonic() + 30
    while len(admin.list_topics(topic, timeout=10).topics[topic].partitions) != partitions:
        assert time.monotonic() < deadline, f"{topic} not shown with {partitions} partitions"
        time.sleep(0.1)


def test_an_auto_created_control_topic_is_refused_with_the_commands_that_fix_it(
    kafka_bootstrap: str, settings: RigSettings
) -> None:
    """What a producer auto-creates: the broker's default partitions, cleanup.policy=delete."""
    control = settings.topic("control")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    create_topic(admin, control, 4)

    with pytest.raises(MisconfiguredTopic) as refused:
        ensure_topics(settings)

    message = str(refused.value)
    assert f"topic {control} has 4 partitions, the rig needs 1" in message
    assert f"--delete --topic {control}" in message and "rig topics create" in message
    assert f"topic {control} has cleanup.policy=delete, the rig needs compact" in message
    assert f"--entity-name {control} --add-config cleanup.policy=compact" in message
    requests = settings.topic("requests")
    assert requests not in admin.list_topics(timeout=10).topics, "nothing is created while one is wrong"


def test_a_joined_topic_of_several_partitions_is_refused(kafka_bootstrap: str, settings: RigSettings) -> None:
    joined = settings.topic("joined")
    create_topic(AdminClient({"bootstrap.servers": kafka_bootstrap}), joined, 2)

    with pytest.raises(MisconfiguredTopic, match=f"topic {joined} has 2 partitions, the rig needs 1"):
        ensure_topics(settings)


def test_confluent_kafka_round_trip_keeps_every_message_and_per_key_order(kafka_bootstrap: str) -> None:
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # must outlive the future it returns
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = [(f"entity-{i % 7}".encode(), f"{i}".encode()) for i in range(500)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    received = consume(kafka_bootstrap, topic, len(sent))

    assert sorted(received) == sorted(sent)
    for key in {key for key, _ in sent}:
        values = [int(value) for k, value in received if k == key]
        assert values == sorted(values), f"order lost for key {key!r}"


def test_forgotten_goldens_leave_routing_with_no_golden_current_or_previous(settings: RigSettings) -> None:
    ensure_topics(settings)
    for version in ("risk.1", "risk.2"):
        publish_control(settings, set_golden_event(version, actor="test"))
    before = read_routing(settings)
    assert (before.golden, before.previous_golden) == ("risk.2", "risk.1")

    forget_goldens(settings, before.golden_history)

    after = read_routing(settings)
    assert (after.golden, after.previous_golden, after.golden_history) == (None, None, ())
