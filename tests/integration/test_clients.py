"""Sending records from the client tools (`rig produce`, `rig outcomes`): every record acknowledged, or
an error that says how many were not."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from rig.cli import clients
from rig.cli.clients import produce_outcomes
from rig.config import RigSettings
from rig.errors import NotAcknowledged
from rig.wire.records import Outcome

pytestmark = pytest.mark.integration


def outcomes(n: int) -> list[Outcome]:
    return [
        Outcome(request_id=f"r-{i}", entity_id=f"e-{i}", label=i % 2, event_time=1_000 + i) for i in range(n)
    ]


def test_outcomes_sent_to_a_topic_are_all_acknowledged(kafka_bootstrap: str, settings: RigSettings) -> None:
    topic = settings.topic("outcomes")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result()

    assert produce_outcomes(settings, outcomes(5)) == 5


def test_outcomes_the_broker_never_acknowledges_raise_with_how_many(
    kafka_bootstrap: str, settings: RigSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker creates no topic on a produce (ops/kafka/up): these records wait for a topic that
    # never comes, and the send must not report success when its wait ends.
    monkeypatch.setattr(clients, "FLUSH_TIMEOUT_S", 1)

    with pytest.raises(NotAcknowledged, match=r"3 of 3 record\(s\) for .*outcomes were not acknowledged"):
        produce_outcomes(settings, outcomes(3))
