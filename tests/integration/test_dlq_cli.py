"""`rig dlq show` and `rig dlq replay` against the real Kafka broker, on dead letters made by the
real intake (`rig.wire.intake.take_in`) from bad request messages."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from typer.testing import CliRunner

from rig.cli.app import app
from rig.config import RigSettings
from rig.wire.codec import Codec, Rejected
from rig.wire.intake import Source, dead_letter, take_in
from rig.wire.records import DeadLetter, Outcome, Request
from rig.wire.topics import ensure_topics
from tests.integration.test_kafka import consume

pytestmark = pytest.mark.integration

GOOD = b'{"request_id": "r-good", "entity_id": "ent-9", "event_time": 1735689600000}'
# (key, message) as sent to the requests topic; all but GOOD fail the intake.
SENT = [
    (b"ent-1", b'{"request_id": "r-1", "entity_id": '),  # cut short: invalid JSON
    (b"ent-2", GOOD),
    (b"ent-3", b'{"request_id": "r-3", "entity_id": "ent-3", "event_time": 1, "features": {"x": NaN}}'),
    (b"ent-4", b"\x07not a request"),  # unknown message format
    (b"ent-5", b'{"request_id": "r-5",'),  # invalid JSON
    (None, b'{"request_id": "r-6", "entity_id": "ent-6", "event_time": "later"}'),  # invalid record
]
INVALID_JSON = [SENT[0], SENT[4]]


@pytest.fixture
def dead_letters(kafka_bootstrap: str, settings: RigSettings) -> list[DeadLetter]:
    """The rig's topics, and the dead letters the intake made of SENT (as if read at offsets 100...
    of partition 1 of the requests topic) on the dlq topic, the first one twice (as a worker that
    crashed before its commit writes it again), and a dead letter of the outcomes topic."""
    ensure_topics(settings)
    requests = settings.topic("requests")
    sources = [Source(requests, 1, 100 + i, key, value) for i, (key, value) in enumerate(SENT)]
    batch = take_in(Codec(Request, allow_json=True), sources)
    assert [r.request_id for r in batch.requests] == ["r-good"]
    outcome = Source(settings.topic("outcomes"), 0, 7, b"ent-1", b"{not an outcome")
    rejected = Codec(Outcome, allow_json=True).decode(outcome.value)
    assert isinstance(rejected, Rejected)  # as the join dead-letters it
    letters = [
        batch.dead_letters[0],
        *batch.dead_letters,
        dead_letter(outcome, rejected.reason, rejected.error_type),
    ]
    codec = Codec(DeadLetter, registry_url=settings.schema_registry_url)
    producer = Producer(settings.kafka_producer_config())
    for letter in letters:
        producer.produce(settings.topic("dlq"), key=letter.key, value=codec.encode(letter))
    assert producer.flush(30) == 0
    return letters


def rig(settings: RigSettings, *args: str) -> tuple[int, str]:
    """Run `rig ARGS` with this test's settings (RIG_*); its exit code and what it printed."""
    env = {"RIG_TOPIC_PREFIX": settings.topic_prefix, "RIG_HOME": str(settings.home)}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def messages_on(bootstrap: str, topic: str) -> int:
    """How many messages the topic holds (the sum of its partitions' high watermarks)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        )
    finally:
        consumer.close()


def test_show_counts_the_dead_letters_by_error_type_and_reason_with_the_latest_examples(
    dead_letters: list[DeadLetter], settings: RigSettings
) -> None:
    code, text = rig(settings, "dlq", "show", "--limit", "2")
    assert code == 0, text
    assert f"{settings.topic('dlq')}: 7 of 7 record(s) selected" in text
    assert "        5  malformed" in text and "        1  invalid_value" in text
    assert "        1  invalid_record" in text
    assert text.count("reason: ") == 2

    code, document = rig(settings, "dlq", "show", "--json", "--reason", "invalid json", "--limit", "10")
    assert code == 0, document
    summary = json.loads(document)
    assert summary["read"] == 7 and summary["selected"] == 4  # one of them twice, one of the outcomes
    assert sum(summary["by_reason"].values()) == 4 and summary["by_error_type"] == {"malformed": 4}
    sources = {(e["source_topic"], e["partition"], e["offset"]) for e in summary["latest"]}
    requests = settings.topic("requests")
    assert sources == {(requests, 1, 100), (requests, 1, 104), (settings.topic("outcomes"), 0, 7)}
    assert {e["original_preview"] for e in summary["latest"]} >= {'{"request_id": "r-1", "entity_id": '}


def test_replay_by_reason_puts_back_exactly_the_chosen_originals_with_their_keys(
    dead_letters: list[DeadLetter], settings: RigSettings, kafka_bootstrap: str
) -> None:
    code, text = rig(settings, "dlq", "replay", "--reason", "invalid JSON")

    assert code == 0, text
    assert f"replayed 2 dead letter(s) to {settings.topic('requests')}" in text
    assert "left out: 1 from other topics, 1 repeated" in text
    requests = settings.topic("requests")
    assert messages_on(kafka_bootstrap, requests) == 2
    assert sorted(consume(kafka_bootstrap, requests, 2)) == sorted(INVALID_JSON)


def test_replay_to_another_topic_by_request_id_and_offset(
    dead_letters: list[DeadLetter], settings: RigSettings, kafka_bootstrap: str
) -> None:
    target = f"{settings.topic_prefix}fixed"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(target, 2, 1)])[target].result()

    code, text = rig(settings, "dlq", "replay", "--request-id", "r-3", "--offset", "1:105", "--to", target)

    assert code == 0, text  # r-3 is at offset 102: the two criteria must both hold, so nothing matches
    assert "replayed 0 dead letter(s)" in text
    code, text = rig(
        settings, "dlq", "replay", "--error-type", "invalid_value", "--offset", "1:100-103", "--to", target
    )
    assert code == 0 and "replayed 1 dead letter(s)" in text, text
    assert consume(kafka_bootstrap, target, 1) == [SENT[2]]
    assert (
        messages_on(kafka_bootstrap, target) == 1
        and messages_on(kafka_bootstrap, settings.topic("requests")) == 0
    )


def test_a_dry_run_lists_the_chosen_letters_and_produces_nothing(
    dead_letters: list[DeadLetter], settings: RigSettings, kafka_bootstrap: str
) -> None:
    code, text = rig(settings, "dlq", "replay", "--all", "--dry-run")

    assert code == 0, text
    assert "dry run: would replay 5 dead letter(s)" in text
    assert f"{settings.topic('requests')}[1]@103 malformed" in text
    assert messages_on(kafka_bootstrap, settings.topic("requests")) == 0


def test_replay_without_a_choice_or_to_a_missing_topic_is_refused(
    dead_letters: list[DeadLetter], settings: RigSettings, kafka_bootstrap: str
) -> None:
    code, _ = rig(settings, "dlq", "replay")
    assert code == 2

    code, text = rig(settings, "dlq", "replay", "--all", "--to", f"{settings.topic_prefix}absent")
    assert code == 1 and "no topic" in text
    assert messages_on(kafka_bootstrap, settings.topic("requests")) == 0


def test_show_without_a_dlq_topic_says_so(kafka_bootstrap: str, settings: RigSettings) -> None:
    code, text = rig(settings, "dlq", "show")

    assert code == 1 and f"no topic {settings.topic('dlq')}" in text
