"""The rig's Kafka clients on a cluster that takes only TLS with SASL/PLAIN: a broker of the test's own
with certificates made in the test. Every client config comes from the settings' builders; Faust's
own clients (aiokafka) get the same TLS and SASL user from `streams.app.broker_credentials`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from rig.config import RigSettings
from rig.wire.topics import ensure_topics
from streams.app import make_app
from tests.support.secured_kafka import USERS, SecuredKafka, make_certificates

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    folder = tmp_path_factory.mktemp("secured-kafka")
    kafka = SecuredKafka(folder / "broker", make_certificates(folder / "certificates"))
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def secured_settings(broker: SecuredKafka, home: Path, **changes: object) -> RigSettings:
    """The rig's user on the SASL_SSL listener, trusting the test's CA; `changes` override fields."""
    fields: dict[str, object] = {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_ssl_ca_location": broker.certificates.ca,
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "rig",
        "kafka_sasl_password": USERS["rig"],
        "topic_prefix": f"tls.{uuid.uuid4().hex[:8]}.",
        "home": home,
    }
    return RigSettings(**{**fields, **changes})  # type: ignore[arg-type]


def consume_one(settings: RigSettings, topic: str, timeout_s: float = 30) -> tuple[bytes, bytes]:
    """The first record of `topic`, read by a consumer built from `settings.kafka_client_config()`."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"tls-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                # Produced with a key and a value: neither is None.
                return cast(bytes, message.key()), cast(bytes, message.value())
    finally:
        consumer.close()
    raise AssertionError(f"nothing read from {topic} within {timeout_s} s")


def test_topics_and_a_produce_consume_round_trip_work_over_sasl_ssl(
    broker: SecuredKafka, tmp_path: Path
) -> None:
    settings = secured_settings(broker, tmp_path)
    topic = settings.topic("requests")

    assert ensure_topics(settings, ["requests"]) == [topic]
    producer = Producer(settings.kafka_producer_config())
    errors: list[object] = []
    producer.produce(topic, b"over TLS", b"entity-1", on_delivery=lambda error, _m: errors.append(error))

    assert producer.flush(30) == 0
    assert errors == [None]
    assert consume_one(settings, topic) == (b"entity-1", b"over TLS")


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [
        ("ca", "certificate verify failed"),
        ("password", "Authentication failed: Invalid username or password"),
    ],
)
def test_a_wrong_ca_or_password_fails_within_the_timeout_for_that_reason(
    broker: SecuredKafka, tmp_path: Path, capfd: pytest.CaptureFixture[str], wrong: str, reason: str
) -> None:
    # Either case's fields: their values differ in type (a path, a string).
    changes = cast(
        dict[str, object],
        {
            "ca": {"kafka_ssl_ca_location": broker.certificates.other_ca},
            "password": {"kafka_sasl_password": "not-the-password"},
        }[wrong],
    )
    settings = secured_settings(broker, tmp_path, **changes)
    started = time.monotonic()

    with pytest.raises(KafkaException):
        ensure_topics(settings, ["requests"], timeout_s=10)
    assert time.monotonic() - started < 30
    # The exception says only "broker transport failure"; librdkafka logs why (to stderr).
    assert reason in capfd.readouterr().err


async def faust_produce(settings: RigSettings, topic: str) -> None:
    """Send one record with an aiokafka producer set up as Faust sets up its own, from the
    credentials `make_app` gives Faust."""
    from aiokafka import AIOKafkaProducer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    app = make_app(settings, faust_kafka=True, web_enabled=False)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000, **auth)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"from faust", key=b"entity-2")
    finally:
        await producer.stop()


def test_fausts_own_kafka_clients_use_tls_with_the_configured_ca_and_sasl_user(
    broker: SecuredKafka, tmp_path: Path
) -> None:
    settings = secured_settings(broker, tmp_path)
    topic = settings.topic("requests")
    ensure_topics(settings, ["requests"])

    asyncio.run(asyncio.wait_for(faust_produce(settings, topic), timeout=60))

    assert consume_one(settings, topic) == (b"entity-2", b"from faust")


def test_fausts_own_kafka_clients_refuse_a_broker_the_configured_ca_did_not_sign(
    broker: SecuredKafka, tmp_path: Path
) -> None:
    from aiokafka.errors import KafkaConnectionError

    settings = secured_settings(broker, tmp_path, kafka_ssl_ca_location=broker.certificates.other_ca)

    with pytest.raises(KafkaConnectionError):
        asyncio.run(asyncio.wait_for(faust_produce(settings, settings.topic("requests")), timeout=60))
