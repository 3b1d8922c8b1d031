"""Round trips through the real Kafka broker started by ops/kafka/up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from rig.config import TOPIC_NAMES, RigSettings
from rig.wire.topics import ensure_topics
from tests.conftest import REPO

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
            received.append((message.key(), message.value()))
    finally:
        consumer.close()
    return received


def test_ensure_topics_creates_every_topic_once_with_a_compacted_control_topic(
    kafka_bootstrap: str, settings: RigSettings
) -> None:
    created = ensure_topics(settings)
    assert sorted(created) == sorted(settings.topic(name) for name in TOPIC_NAMES)
    assert ensure_topics(settings) == []

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topic("control"))
    config = admin.describe_configs([resource])[resource].result()
    assert config["cleanup.policy"].value == "compact"
    partitions = admin.list_topics(settings.topic("requests"), timeout=10).topics[settings.topic("requests")]
    assert len(partitions.partitions) == settings.topic_partitions


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


def start_echo_worker(bootstrap: str, **env: str) -> tuple[str, str, subprocess.Popen[bytes]]:
    """Two fresh 2-partition topics and `faust_echo_app` working between them: (source, sink, process)."""
    suffix = uuid.uuid4().hex[:8]
    source, sink = f"test.echo-in.{suffix}", f"test.echo-out.{suffix}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(source, 2, 1), NewTopic(sink, 2, 1)]).values():
        future.result()
    env = {
        **os.environ,
        "ECHO_IN": source,
        "ECHO_OUT": sink,
        "ECHO_APP_ID": f"echo-{suffix}",
        "RIG_KAFKA_BOOTSTRAP": bootstrap,
        "RIG_HOME": str(REPO / ".rig" / f"echo-{suffix}"),
        **env,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "tests.integration.faust_echo_app", "worker", "-l", "warn"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return source, sink, worker


def produce_hellos(bootstrap: str, topic: str, n: int = 50) -> list[tuple[bytes, bytes]]:
    producer = Producer({"bootstrap.servers": bootstrap})
    sent = [(f"k{i}".encode(), f"hello {i}".encode()) for i in range(n)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0
    return sent


def stop(worker: subprocess.Popen[bytes]) -> str:
    worker.terminate()
    return worker.communicate(timeout=30)[0].decode(errors="replace")


def test_minimal_faust_agent_consumes_one_topic_and_sends_to_another(kafka_bootstrap: str) -> None:
    source, sink, worker = start_echo_worker(kafka_bootstrap)
    try:
        sent = produce_hellos(kafka_bootstrap, source)
        received = consume(kafka_bootstrap, sink, len(sent), timeout_s=90)
    finally:
        output = stop(worker)

    assert sorted(received) == sorted((key, value.upper()) for key, value in sent), output[-2000:]


def test_the_partition_watchdog_reads_a_silent_partition_again(kafka_bootstrap: str, tmp_path) -> None:
    marker = tmp_path / "silenced"
    source, sink, worker = start_echo_worker(
        kafka_bootstrap, ECHO_SILENCE_MARKER=str(marker), RIG_PARTITION_WATCHDOG_S="1"
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never went silent"
            time.sleep(0.2)
        sent = produce_hellos(kafka_bootstrap, source)
        received = consume(kafka_bootstrap, sink, len(sent), timeout_s=60)
    finally:
        output = stop(worker)

    assert sorted(received) == sorted((key, value.upper()) for key, value in sent), output[-2000:]
    assert "partition stuck, reading it again from offset 0 topic=" + source in output
